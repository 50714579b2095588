"""What the status-bar item shows, from the container's own facts and the GPU service's api/me.

Pure: no tornado, no network. The container's environment is read here and nowhere else
(:meth:`ContainerFacts.from_env`); the GPU service's answer arrives as parsed JSON or as the
reason there is none, and :func:`combine` never fails on it: the lab always gets a status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The names the hub's spawner uses (labhub.contract; hub/tests checks they agree). The
# workspace image does not carry the hub package, so they are spelt out once here.
GPU_STATUS_URL_ENV = "LABHUB_GPU_STATUS_URL"
GPU_MEMORY_LIMIT_ENV = "GPU_MEMORY_LIMIT_MB"
# What NVIDIA's container toolkit reads; "void" (the image's default) and "none" mean no device.
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
NO_DEVICES = frozenset({"", "void", "none"})


@dataclass(frozen=True)
class ContainerFacts:
    """What the container itself knows: its devices, its memory cap, where to ask for more."""

    devices: tuple[str, ...]
    memory_cap_mib: int | None
    status_url: str | None
    token: str | None
    server_name: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ContainerFacts:
        visible = environ.get(VISIBLE_DEVICES_ENV, "").strip()
        devices = () if visible in NO_DEVICES else tuple(d.strip() for d in visible.split(","))
        cap = environ.get(GPU_MEMORY_LIMIT_ENV, "").strip()
        return cls(
            devices=tuple(d for d in devices if d),
            memory_cap_mib=int(cap) if cap.isdigit() and int(cap) > 0 else None,
            status_url=environ.get(GPU_STATUS_URL_ENV, "").strip() or None,
            token=environ.get("JUPYTERHUB_API_TOKEN") or None,
            server_name=environ.get("JUPYTERHUB_SERVER_NAME", ""),
        )


def seconds_until(timestamp: Any, now: datetime) -> int | None:
    """Whole seconds from ``now`` to an ISO-8601 time (never negative); None if not a time."""
    if not isinstance(timestamp, str):
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # the contract's times are UTC with a zone; a naive one is not trusted
    return max(0, math.floor((moment - now).total_seconds()))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def home_text(home: Any) -> str | None:
    """api/me's "home" as the status line says it: "home 1.2 of 5 GB" (GB and MB of 2^30 and
    2^20 bytes, as DISK_QUOTA=5G means), "home 30 MB" without a limit; None without one."""
    if not isinstance(home, Mapping) or (used := _number(home.get("used_bytes"))) is None:
        return None
    limit = _number(home.get("limit_bytes"))
    unit, name = (2**30, "GB") if max(used, limit or 0) >= 2**30 else (2**20, "MB")

    def size(value: float) -> str:
        return f"{value / unit:.1f}".removesuffix(".0")

    return f"home {size(used)} of {size(limit)} {name}" if limit else f"home {size(used)} {name}"


def combine(
    facts: ContainerFacts, me: Mapping[str, Any] | None, problem: str | None, now: datetime
) -> dict[str, Any]:
    """The status the frontend shows (GPU or not, the home's disk usage with QUOTA_ROOT).
    ``me`` is api/me's JSON (None when there is none),
    ``problem`` why not (None when the service is simply absent or answered).

    The devices are the container's own (``NVIDIA_VISIBLE_DEVICES``); the service only adds
    what the container cannot know (model, profile, quota, stop times) for those devices.
    """
    entry: Mapping[str, Any] = {}
    if me is not None:
        servers = me.get("servers")
        found = servers.get(facts.server_name) if isinstance(servers, Mapping) else None
        entry = found if isinstance(found, Mapping) else {}
    described = {
        str(d.get("id")): d
        for d in entry.get("devices") or []
        if isinstance(d, Mapping) and "id" in d
    }
    devices = []
    for device_id in facts.devices:
        known = described.get(device_id, {})
        limit = _number(known.get("memory_limit_mib"))
        devices.append(
            {
                "id": device_id,
                "model": _text(known.get("model")),
                "shared": known.get("shared") is True or facts.memory_cap_mib is not None,
                "memory_limit_mib": int(limit) if limit else None,
            }
        )
    extensions = entry.get("extensions_left")
    if facts.status_url is None:
        service = "absent"
    elif problem is not None:
        service = f"unavailable: {problem}"
    else:
        service = "ok"
    return {
        "gpu": bool(devices),
        "devices": devices,
        "profile": _text(entry.get("profile")),
        "display_name": _text(entry.get("display_name")),
        "memory_cap_mib": facts.memory_cap_mib,
        "gpu_hours_left": _number(me.get("gpu_hours_left")) if me is not None else None,
        "idle_stop_in_s": seconds_until(entry.get("idle_stop_at"), now),
        "length_stop_in_s": seconds_until(entry.get("length_stop_at"), now),
        "extensions_left": extensions if isinstance(extensions, int) and extensions > 0 else 0,
        "warning": _text(entry.get("warning")),
        "home": home_text(me.get("home")) if me is not None else None,
        "service": service,
    }
