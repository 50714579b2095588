"""GPUs on a Swarm: the one allocator picks node and device, the service is pinned there.

`LabSwarmGpuSpawner` is `LabSwarmSpawner` with the GPU mixin (profiles, quotas, queue,
reservations, drain: all the allocator's, as on one host). What differs on a Swarm:

- The inventory names each device's node (`GPU_INVENTORY`, `"node"`: hostname or node ID);
  the allocator books `<id>@<node>` and gives one server devices on one node only.
- Before each try, the allocator is told where the server may run (its home node once it
  has one, see `labhub.swarmplacement`; any node for a first spawn) and which nodes take
  no task (down, drained, gone): their devices are not given. A GPU on another node than
  the home is never given: the spawn waits (GPU_QUEUE) while the home node's devices are
  busy, and is refused naming the node when that node has none of the kind asked for.
- Engine 20.10's service API has no device requests. The nodes run NVIDIA's runtime as
  their default (`default-runtime: nvidia`), which gives a container the devices its
  `NVIDIA_VISIBLE_DEVICES` names: the service sets it to the booked devices' ids on that
  node (`void` for none, on every service), is pinned (`node.id==`) to the devices' node,
  and carries its booking as labels, which the Docker proxy checks against the GPU record
  (`labhub.dockerpolicy.service_gpu_claim`, `check_gpu_claim`) and a restarted hub reads
  back (`observed_services`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from tornado import web

from .contract import GPU_DEVICES_LABEL, OWNER_LABEL
from .gpu import devicerequests
from .gpu.allocator import GpuAllocator
from .gpu.inventory import Inventory, nodes_of, split_key
from .gpu.scheduler import Allocation
from .gpu.spawner import GpuSpawnerMixin
from .settings import Settings
from .swarmplacement import NodeNamesError, NoNodeForServer, SwarmNode, gpu_node_ids, nodes_from_api
from .swarmspawner import LabSwarmSpawner, swarm_spawner_config


def where_gpus_may_go(
    inventory: Inventory, ids: Mapping[str, str], nodes: Iterable[SwarmNode], home: str
) -> tuple[frozenset[str] | None, frozenset[str]]:
    """(inventory nodes the server may get devices on, inventory nodes that are down).

    With a home node (a Swarm node ID) only that node's devices; without, any node's.
    Down: not in the swarm, not ready, or not active.
    """
    usable = {node.id for node in nodes if node.usable}
    down = frozenset(name for name in nodes_of(inventory) if ids.get(name) not in usable)
    if not home:
        return None, down
    mine = frozenset(name for name, node_id in ids.items() if node_id == home)
    return mine or frozenset({home}), down


def closed_to_new_homes(
    inventory: Inventory, ids: Mapping[str, str], nodes: Iterable[SwarmNode]
) -> frozenset[str]:
    """Inventory nodes an admin is emptying (swarmplacement.RETIRING_LABEL): a first spawn
    gets no device there (it would make its home there), as if they were down."""
    retiring = {node.id for node in nodes if node.retiring}
    return frozenset(name for name in nodes_of(inventory) if ids.get(name) in retiring)


def observed_services(services: Iterable[Mapping[str, Any]], now: datetime) -> list[Allocation]:
    """The allocations the lab's services hold (their GPU labels), after a hub restart."""
    out = []
    for service in services:
        spec = service.get("Spec") or {}
        labels: Mapping[str, str] = spec.get("Labels") or {}
        devices = tuple(d for d in labels.get(GPU_DEVICES_LABEL, "").split(",") if d)
        if devices:
            name = str(spec.get("Name") or service.get("ID", ""))
            out.append(devicerequests.allocation_from_labels(labels, devices, name, now))
    return out


class LabSwarmGpuSpawner(GpuSpawnerMixin, LabSwarmSpawner):
    """LabSwarmSpawner whose GPU servers run on the node of the devices the allocator booked."""

    _gpu_node_id = ""
    """The Swarm node ID of this server's booked devices ('' without devices)."""

    async def _node_ids(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        listing: list[dict[str, Any]] = await self.docker("nodes")
        try:
            return listing, gpu_node_ids(nodes_of(self._allocator.inventory), listing)
        except NodeNamesError as error:
            raise web.HTTPError(503, f"{self.user.name}'s server cannot start: {error}") from None

    async def gpu_placement(self) -> tuple[frozenset[str] | None, frozenset[str]]:
        listing, ids = await self._node_ids()
        nodes, inventory = nodes_from_api(listing), self._allocator.inventory
        await self.adopt_existing_home(nodes)
        allowed, down = where_gpus_may_go(inventory, ids, nodes, self.home_node)
        await self._record_nodes_down(down)
        if self.home_node:
            return allowed, down  # a home on a retiring node keeps its GPUs until moved
        return allowed, down | closed_to_new_homes(inventory, ids, nodes)

    async def _record_nodes_down(self, down: frozenset[str]) -> None:
        """For the admin page (labhub.gpu.api): which GPU nodes are down, as seen now."""
        store, now = self._allocator.store, self._allocator.clock()
        await asyncio.to_thread(store.record_nodes_down, down, now)

    async def gpu_observed(self) -> list[Allocation]:
        services = await self.docker("services", filters={"label": OWNER_LABEL})
        return observed_services(services, self._allocator.clock())

    def placement_node(self, nodes: list[SwarmNode], services: list[dict[str, Any]]) -> str:
        """The devices' node for a GPU server (the home node, if it has one), else
        swarmplacement's choice."""
        allocation = self._gpu_allocation
        if allocation is None or not allocation.device_ids:
            return super().placement_node(nodes, services)
        node_id = self._gpu_node_id
        found = next((node for node in nodes if node.id == node_id), None)
        if found is None or not found.usable or (self.home_node and node_id != self.home_node):
            raise NoNodeForServer(
                f"its GPUs ({', '.join(allocation.device_ids)}) are on node {node_id}, which "
                "is not its home or no longer takes tasks: start it again"
            )
        return node_id

    async def gpu_assign(self) -> Allocation:
        """Book devices, then remember the Swarm node ID they are on (for the pin)."""
        allocation = await super().gpu_assign()
        self._gpu_node_id = ""
        if allocation.device_ids:
            _, ids = await self._node_ids()
            self._gpu_node_id = ids.get(split_key(allocation.device_ids[0])[1], "")
        return allocation

    async def poll(self) -> Any:
        """Also stopped, for the hub, when its GPUs' node is down or has left the swarm: the
        service would wait there forever ("pending"), holding its devices. The hub then runs
        the post-stop hook, which releases them and removes the service (a node that comes
        back then stops the old task)."""
        status = await super().poll()
        allocation = self._gpu_allocation
        if status is not None or allocation is None or not allocation.device_ids:
            return status
        listing, ids = await self._node_ids()
        nodes = nodes_from_api(listing)
        _, down = where_gpus_may_go(self._allocator.inventory, ids, nodes, "")
        await self._record_nodes_down(down)
        home = next((node for node in nodes if node.id == self.home_node), None)
        if home is None or not home.ready:
            where = "has left the swarm" if home is None else "is down"
            self.log.warning(
                "%s's GPUs (%s) are on node %s, which %s: server counted as stopped",
                self.user.name, ", ".join(allocation.device_ids), self.home_node, where,
            )  # fmt: skip
            return f"node {self.home_node} {where}"
        return None

    def service_gpu_labels(self) -> dict[str, str]:
        allocation = self._gpu_allocation
        if allocation is None or not allocation.device_ids:
            return {}
        return {
            **devicerequests.labels(allocation),
            GPU_DEVICES_LABEL: ",".join(allocation.device_ids),
        }


def swarm_gpu_spawner_config(settings: Settings, gpu_allocator: GpuAllocator) -> dict[str, Any]:
    """The LabSwarmGpuSpawner traitlets: the Swarm spawner's, and the process's allocator
    (``labhub.gpu.allocator.load_allocator(settings)``), as ``spawner_config`` on one host."""
    return {
        **swarm_spawner_config(settings),
        "remove": True,
        "start_timeout": 180 + (settings.gpu_queue_timeout if settings.gpu_queue else 0),
        "gpu_allocator": gpu_allocator,
    }
