"""When a GPU holder gives its devices back: pure policy, no I/O (property-tested).

Three rules, each switchable in ``.env`` (all in seconds):

- **utilisation-idle**: the holder's devices showed no utilisation (NVML, read with
  ``nvidia-smi`` by :func:`labhub.gpu.inventory.read_utilisation`) for
  ``GPU_UTILISATION_IDLE_TIMEOUT``. An open tab or a ``time.sleep`` loop keeps the hub's
  activity fresh but not the GPU busy. A MIG instance or a shared slice is read through
  its parent GPU (NVML has no per-process figure in nvidia-smi's query): it counts as busy
  whenever anyone uses that GPU.
- **session-length**: the holder has held its devices for ``GPU_SESSION_MAX`` plus the
  extensions it took (``GPU_SESSION_EXTENSION`` each, at most ``GPU_SESSION_EXTENSIONS``).
- **hub-idle**: the hub saw no activity for ``GPU_IDLE_TIMEOUT`` (the older rule).

Each rule warns ``GPU_UTILISATION_WARN`` before it stops. The culler
(:mod:`labhub.gpu.culler`) feeds the samples to an :class:`IdleClock` per holder, asks
:func:`decide`, and stops through the hub API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from labhub.gpu.inventory import Utilisation, device_key, split_key

Reason = Literal["utilisation-idle", "session-length", "hub-idle"]
NO_NVML = "no NVML (nvidia-smi) on this host"
RULE_OFF = "GPU_UTILISATION_IDLE_TIMEOUT is 0"


@dataclass(frozen=True)
class Rules:
    """The rules in force, from the settings; ``nvml`` is whether utilisation can be read."""

    idle_timeout_s: int
    warn_s: int
    session_max_s: int
    extension_s: int
    extensions: int
    hub_idle_timeout_s: int
    nvml: bool
    # Not the service's to apply (jupyter-server culls inside each server), shown beside.
    kernel_idle_timeout_s: int = 0
    kernel_cull_connected: bool = False

    @property
    def utilisation_rule_on(self) -> bool:
        return self.nvml and self.idle_timeout_s > 0

    def utilisation_rule(self) -> dict[str, Any]:
        """The rule as the student API and the admin page show it (contract-me.md)."""
        if not self.nvml:
            return {"enabled": False, "reason": NO_NVML}
        if not self.idle_timeout_s:
            return {"enabled": False, "reason": RULE_OFF}
        return {
            "enabled": True,
            "idle_minutes": minutes(self.idle_timeout_s),
            "warn_minutes": minutes(self.warn_s),
        }

    def length_stop_at(self, since: datetime, extensions_used: int) -> datetime | None:
        """When a session that started at ``since`` ends; None without a length limit."""
        if not self.session_max_s:
            return None
        return since + timedelta(seconds=self.session_max_s + extensions_used * self.extension_s)


# No rule in force (an application built without settings, e.g. in unit tests).
NO_RULES = Rules(
    idle_timeout_s=0, warn_s=0, session_max_s=0, extension_s=1, extensions=0,
    hub_idle_timeout_s=0, nvml=False,
)  # fmt: skip


def minutes(seconds: int) -> int | float:
    """Whole minutes where they are whole (30), else to two places (0.25)."""
    return seconds // 60 if seconds % 60 == 0 else round(seconds / 60, 2)


def devices_busy(device_ids: Iterable[str], utilisation: Mapping[str, Utilisation]) -> bool | None:
    """Whether any of the devices is in use now; None when no reading covers them.

    A MIG instance ``"0:1"`` is read through its parent GPU ``"0"``, a Swarm node's device
    (``"0:1@gpu-a"``) under its node's key (``"0@gpu-a"``, `labhub.gpu.readings`).
    """
    readings = [
        utilisation.get(device_key(device_id.split(":")[0], node))
        for device_id, node in map(split_key, device_ids)
    ]
    known = [r for r in readings if r is not None]
    if not known:
        return None
    return any(r.gpu_percent > 0 for r in known)


@dataclass
class IdleClock:
    """Since when a holder's devices have shown no utilisation, from the samples seen.

    Starts at the first idle sample (not at the allocation) and restarts at any busy one.
    A missing reading (nvidia-smi failed) counts as busy: no holder is stopped for want of
    data.
    """

    idle_since: datetime | None = None

    def observe(self, busy: bool | None, at: datetime) -> None:
        if busy is not False:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = at


@dataclass(frozen=True)
class Keep:
    """Nothing to do (or to say)."""


@dataclass(frozen=True)
class Warn:
    reason: Reason
    stop_at: datetime


@dataclass(frozen=True)
class Stop:
    reason: Reason


Decision = Keep | Warn | Stop


@dataclass(frozen=True)
class Deadlines:
    """When each rule would stop the holder; None where a rule does not apply."""

    idle_stop_at: datetime | None
    length_stop_at: datetime | None
    hub_idle_stop_at: datetime | None


def deadlines(
    rules: Rules,
    since: datetime,
    extensions_used: int,
    idle_since: datetime | None,
    last_activity: datetime | None,
) -> Deadlines:
    idle_stop_at = None
    if rules.utilisation_rule_on and idle_since is not None:
        idle_stop_at = idle_since + timedelta(seconds=rules.idle_timeout_s)
    hub_idle_stop_at = None
    if rules.hub_idle_timeout_s:
        hub_idle_stop_at = (last_activity or since) + timedelta(seconds=rules.hub_idle_timeout_s)
    return Deadlines(idle_stop_at, rules.length_stop_at(since, extensions_used), hub_idle_stop_at)


def decide(rules: Rules, due: Deadlines, now: datetime) -> Decision:
    """Stop when a deadline has passed, warn when one is within ``warn_s``, else keep.

    Of several, the earliest deadline gives the reason (the one the student was warned of).
    """
    candidates: tuple[tuple[datetime | None, Reason], ...] = (
        (due.length_stop_at, "session-length"),
        (due.idle_stop_at, "utilisation-idle"),
        (due.hub_idle_stop_at, "hub-idle"),
    )
    pending = [(at, reason) for at, reason in candidates if at is not None]
    if not pending:
        return Keep()
    at, reason = min(pending, key=lambda item: item[0])
    if now >= at:
        return Stop(reason)
    if (at - now).total_seconds() <= rules.warn_s:
        return Warn(reason, at)
    return Keep()


def warning_text(warning: Warn, idle_since: datetime | None, now: datetime) -> str:
    """What the student reads in JupyterLab and on the hub page."""
    at = warning.stop_at.strftime("%H:%M UTC")
    if warning.reason == "session-length":
        return f"GPU session limit: this server stops at {at} unless you extend it."
    if warning.reason == "hub-idle":
        return f"No activity: this server stops at {at} unless you use it."
    idle_for = int((now - (idle_since or now)).total_seconds() // 60)
    return f"No GPU use for {idle_for} min: this server stops at {at} unless it uses its GPU."
