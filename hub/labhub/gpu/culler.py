"""GPU idle culling: stop the servers of GPU holders idle for longer than GPU_IDLE_TIMEOUT.

The hub-wide idle culler keeps its longer timeout for everyone else. The admin service runs
:func:`cull_idle_gpu_holders` every ``GPU_CULL_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import quote

from labhub.gpu.hubclient import HubCall, server_path
from labhub.gpu.store import Store


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def cull_idle_gpu_holders(
    store: Store, hub: HubCall, timeout_s: float, now: datetime
) -> list[str]:
    """Stop every GPU holder idle for more than ``timeout_s`` seconds; return the holders.

    Idle is the hub's ``last_activity`` of the server (the start time if it never had any).
    A server still starting or stopping is left alone. The devices are released by the
    spawner's ``stop``, not here, so the record always follows the container.
    """
    culled = []
    allocations = await asyncio.to_thread(store.allocations)
    for allocation in allocations:
        if not allocation.device_ids:
            continue
        user, _, server = allocation.holder.partition("/")
        code, model = await hub("GET", f"users/{quote(user)}")
        if code != 200 or not isinstance(model, dict):
            continue
        info = (model.get("servers") or {}).get(server)
        if not info or info.get("pending") or not info.get("ready"):
            continue
        last = _parse_time(info.get("last_activity")) or _parse_time(info.get("started"))
        if last is None or (now - last).total_seconds() <= timeout_s:
            continue
        code, _ = await hub("DELETE", server_path(allocation.holder))
        if code in (202, 204):
            idle = int((now - last).total_seconds())
            await asyncio.to_thread(
                store.record, "gpu-idle-culler", "cull", now, holder=allocation.holder,
                devices=list(allocation.device_ids), idle_seconds=idle,
            )  # fmt: skip
            culled.append(allocation.holder)
    return culled
