"""GPU reclaiming in the admin service: the rules of :mod:`labhub.gpu.reclaim`, applied.

Every ``GPU_CULL_EVERY`` seconds :meth:`Reclaimer.run` reads utilisation once
(``read_utilisation``: `labhub.gpu.readings`, on each GPU's node), asks the hub for each GPU
holder's server, records a ``warn`` once per coming stop, and stops the servers whose time is up
through the hub REST API (the container goes, the user's volume stays). The spawner's
``stop`` frees the devices, so the record always follows the container. Every stop is a
``cull`` in the audit log with its ``reason``: ``utilisation-idle``, ``session-length`` or
``hub-idle``. :meth:`Reclaimer.status` is what a student's ``api/me`` shows of a holder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from labhub.gpu import reclaim
from labhub.gpu.hubclient import HubCall, server_path
from labhub.gpu.inventory import Utilisation
from labhub.gpu.reclaim import Deadlines, IdleClock, Rules, Stop, Warn
from labhub.gpu.scheduler import Allocation
from labhub.gpu.store import Store

ACTOR = "gpu-reclaimer"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


@dataclass
class Reclaimer:
    """The culler and what it remembers between rounds: each allocation's idle clock,
    the hub's last activity it saw, and the warnings already written to the audit log."""

    store: Store
    hub: HubCall
    rules: Rules
    read_utilisation: Callable[[], Awaitable[dict[str, Utilisation]]]
    clocks: dict[tuple[str, datetime], IdleClock] = field(default_factory=dict)
    last_activity: dict[str, datetime] = field(default_factory=dict)
    warned: set[tuple[str, str, datetime]] = field(default_factory=set)

    async def run(self, now: datetime) -> list[tuple[str, str]]:
        """One round; returns the (holder, reason) of every server it stopped."""
        allocations = [a for a in await asyncio.to_thread(self.store.allocations) if a.device_ids]
        used = await asyncio.to_thread(self.store.extensions_used)
        utilisation: dict[str, Utilisation] = {}
        if self.rules.utilisation_rule_on:
            utilisation = await self.read_utilisation()
        # Forget holders gone since the last round (stopped, or a new allocation).
        live = {(a.holder, a.since) for a in allocations}
        self.clocks = {key: clock for key, clock in self.clocks.items() if key in live}
        holders = {a.holder for a in allocations}
        self.warned = {w for w in self.warned if w[0] in holders}
        self.last_activity = {h: t for h, t in self.last_activity.items() if h in holders}
        stopped: list[tuple[str, str]] = []
        for allocation in allocations:
            info = await self._server(allocation.holder)
            if not info or info.get("pending") or not info.get("ready"):
                continue  # starting or stopping: nothing to judge yet
            clock = self.clocks.setdefault((allocation.holder, allocation.since), IdleClock())
            clock.observe(reclaim.devices_busy(allocation.device_ids, utilisation), now)
            last = _parse_time(info.get("last_activity")) or _parse_time(info.get("started"))
            if last is not None:
                self.last_activity[allocation.holder] = last
            due = self._deadlines(allocation, used.get(allocation.holder, 0))
            decision = reclaim.decide(self.rules, due, now)
            if isinstance(decision, Warn):
                await self._warn(allocation, decision, now)
            elif isinstance(decision, Stop) and await self._stop(allocation, decision, now):
                stopped.append((allocation.holder, decision.reason))
        return stopped

    def _deadlines(self, allocation: Allocation, extensions_used: int) -> Deadlines:
        clock = self.clocks.get((allocation.holder, allocation.since), IdleClock())
        return reclaim.deadlines(
            self.rules, allocation.since, extensions_used, clock.idle_since,
            self.last_activity.get(allocation.holder),
        )  # fmt: skip

    async def _server(self, holder: str) -> dict[str, Any] | None:
        user, _, server = holder.partition("/")
        code, model = await self.hub("GET", f"users/{quote(user)}")
        if code != 200 or not isinstance(model, dict):
            return None
        info = (model.get("servers") or {}).get(server)
        return info if isinstance(info, dict) else None

    async def _warn(self, allocation: Allocation, warning: Warn, now: datetime) -> None:
        key = (allocation.holder, warning.reason, warning.stop_at)
        if key in self.warned:
            return
        self.warned.add(key)
        await asyncio.to_thread(
            self.store.record, ACTOR, "warn", now, holder=allocation.holder,
            reason=warning.reason, stop_at=_iso(warning.stop_at),
        )  # fmt: skip

    async def _stop(self, allocation: Allocation, stop: Stop, now: datetime) -> bool:
        code, _ = await self.hub("DELETE", server_path(allocation.holder))
        if code not in (202, 204):
            return False
        clock = self.clocks.get((allocation.holder, allocation.since), IdleClock())
        # Since when the condition that stops it has held.
        started = {
            "utilisation-idle": clock.idle_since,
            "hub-idle": self.last_activity.get(allocation.holder),
            "session-length": allocation.since,
        }[stop.reason] or allocation.since
        await asyncio.to_thread(
            self.store.record, ACTOR, "cull", now, holder=allocation.holder,
            devices=list(allocation.device_ids), reason=stop.reason, since=_iso(started),
            seconds=int((now - started).total_seconds()),
        )  # fmt: skip
        return True

    def status(self, allocation: Allocation, extensions_used: int, now: datetime) -> dict[str, Any]:
        """One holder as its student sees it (``api/me``, docs/gpus.md)."""
        clock = self.clocks.get((allocation.holder, allocation.since), IdleClock())
        due = self._deadlines(allocation, extensions_used)
        decision = reclaim.decide(self.rules, due, now)
        warning = None
        if isinstance(decision, Warn | Stop):
            shown = decision if isinstance(decision, Warn) else Warn(decision.reason, now)
            warning = reclaim.warning_text(shown, clock.idle_since, now)
        left = self.rules.extensions - extensions_used if self.rules.session_max_s else 0
        return {
            "idle_since": _iso(clock.idle_since) if self.rules.utilisation_rule_on else None,
            "idle_stop_at": _iso(due.idle_stop_at),
            "length_stop_at": _iso(due.length_stop_at),
            "extensions_left": max(left, 0),
            "warning": warning,
        }
