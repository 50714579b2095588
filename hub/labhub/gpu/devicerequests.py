"""Thin Docker adapter: an Allocation <-> a container's device requests, env and labels.

Forward (at spawn): :func:`host_config` goes into DockerSpawner's ``extra_host_config``
(``device_requests``, i.e. ``docker run --gpus device=...``), :func:`environment` into
``environment`` and :func:`labels` into ``extra_create_kwargs["labels"]``.

Backward (after a hub restart): :func:`allocation_from_inspect` reads an allocation back from
``docker inspect`` data. The devices come from ``HostConfig.DeviceRequests`` (what the
container really has), the holder from the labels. A container with device requests but no
labels still counts as holding its devices (holder ``container:<name>``) so nothing is
double-booked; an admin removes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import docker
from labhub.contract import GPU_HOLDER_LABEL, GPU_MEMORY_LIMIT_ENV, VISIBLE_DEVICES_ENV
from labhub.gpu.inventory import split_key
from labhub.gpu.scheduler import Allocation

LABEL_PREFIX = "labhub.gpu."
LABEL_HOLDER = GPU_HOLDER_LABEL
LABEL_USER = LABEL_PREFIX + "user"
LABEL_GROUPS = LABEL_PREFIX + "groups"
LABEL_SHARED = LABEL_PREFIX + "shared"
LABEL_MEMORY_CAP = LABEL_PREFIX + "memory_cap_mib"
LABEL_WEIGHT = LABEL_PREFIX + "weight"
LABEL_SINCE = LABEL_PREFIX + "since"
NVIDIA_DRIVER = "nvidia"


def host_config(allocation: Allocation) -> dict[str, Any]:
    """``extra_host_config`` fragment: exactly the allocated devices, or none at all."""
    if not allocation.device_ids:
        return {"device_requests": []}
    request = docker.types.DeviceRequest(
        driver=NVIDIA_DRIVER, device_ids=list(allocation.device_ids), capabilities=[["gpu"]]
    )
    return {"device_requests": [request]}


def environment(allocation: Allocation) -> dict[str, str]:
    """Env for the workspace: visible devices (``void`` = none) and the slice's memory cap.

    ``void`` also matters for CUDA base images, which set ``NVIDIA_VISIBLE_DEVICES=all``:
    on a host where ``nvidia`` is (wrongly) the default runtime they would see every GPU.
    The workspace gives TensorFlow ``GPU_MEMORY_LIMIT_MB`` (MiB) as a logical device limit.
    """
    local = [split_key(key)[0] for key in allocation.device_ids]  # "0@gpu-a" -> "0" on gpu-a
    env = {VISIBLE_DEVICES_ENV: ",".join(local) or "void"}
    if allocation.shared and allocation.memory_cap_mib is not None:
        env[GPU_MEMORY_LIMIT_ENV] = str(allocation.memory_cap_mib)
    return env


def labels(allocation: Allocation) -> dict[str, str]:
    """Container labels that let :func:`allocation_from_inspect` rebuild the allocation."""
    if not allocation.device_ids:
        return {}
    out = {
        LABEL_HOLDER: allocation.holder,
        LABEL_USER: allocation.user,
        LABEL_GROUPS: ",".join(sorted(allocation.groups)),
        LABEL_SHARED: "true" if allocation.shared else "false",
        LABEL_WEIGHT: repr(allocation.weight),
        LABEL_SINCE: allocation.since.isoformat(),
    }
    if allocation.memory_cap_mib is not None:
        out[LABEL_MEMORY_CAP] = str(allocation.memory_cap_mib)
    return out


def allocation_from_inspect(inspect: Mapping[str, Any], now: datetime) -> Allocation | None:
    """The allocation a container holds, from ``docker inspect`` data; None if no GPU.

    ``now`` stands in for the start time when the ``since`` label is missing.
    """
    requests = (inspect.get("HostConfig") or {}).get("DeviceRequests") or []
    device_ids = tuple(
        device_id
        for request in requests
        if request.get("Driver") in (NVIDIA_DRIVER, "")
        for device_id in (request.get("DeviceIDs") or [])
    )
    if not device_ids:
        return None
    found: Mapping[str, str] = (inspect.get("Config") or {}).get("Labels") or {}
    name = str(inspect.get("Name", "")).lstrip("/") or str(inspect.get("Id", ""))[:12]
    return allocation_from_labels(found, device_ids, name, now)


def allocation_from_labels(
    found: Mapping[str, str], device_ids: tuple[str, ...], name: str, now: datetime
) -> Allocation:
    """The allocation of a container or Swarm service called ``name`` holding ``device_ids``,
    from its :func:`labels` (holder ``container:<name>`` when they are missing)."""
    holder = found.get(LABEL_HOLDER) or f"container:{name}"
    cap = found.get(LABEL_MEMORY_CAP)
    groups = found.get(LABEL_GROUPS, "")
    return Allocation(
        holder=holder,
        user=found.get(LABEL_USER, holder),
        groups=frozenset(g for g in groups.split(",") if g),
        device_ids=device_ids,
        shared=found.get(LABEL_SHARED) == "true",
        memory_cap_mib=int(cap) if cap else None,
        weight=float(found.get(LABEL_WEIGHT, len(device_ids))),
        since=datetime.fromisoformat(found[LABEL_SINCE]) if LABEL_SINCE in found else now,
    )


def observed_allocations(
    client: docker.APIClient, now: datetime, name_prefix: str = ""
) -> list[Allocation]:
    """Allocations of every container that exists (running or not) and has GPU requests.

    A stopped container is counted too: DockerSpawner may restart it as it is, with its
    device requests. ``name_prefix`` (the spawner's ``{prefix}-``) keeps to this hub's
    containers when several stacks share one engine. Blocking: run it in an executor.
    """
    out = []
    for summary in client.containers(all=True):
        names = [n.lstrip("/") for n in summary.get("Names") or []]
        if name_prefix and not any(n.startswith(name_prefix) for n in names):
            continue
        allocation = allocation_from_inspect(client.inspect_container(summary["Id"]), now)
        if allocation is not None:
            out.append(allocation)
    return out
