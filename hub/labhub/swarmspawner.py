"""The lab's SwarmSpawner: each user's server a Swarm service, pinned to their home's node.

Same limits and hardening as LabSpawner's containers (`service_spec`), in the Swarm
service API's own terms: the unprivileged user, every capability dropped, memory, CPU
and process limits, /dev/shm as a sized tmpfs, the owner label, the user's named volume.
The service joins only its user's own overlay network (`user_network_name`), attachable
and internal, with a `dnsrr` endpoint (no routing mesh, no published port). The spawner
makes that network on the user's first spawn and connects the frontends (the hub's and
CHP's containers, `frontend_containers`) to it, and again at each poll of a running
server (a frontend container that `make up` recreated is on no user's network): they
reach the server at its task's address on that network (`get_ip_and_port`), and the
server reaches nothing else: no other user's server, no node, no LAN or internet, except
through the egress proxy (one of the frontends, `egress_proxy`; labhub.egress). A
deleted user's network goes with them (`delete_forever`).

Placement is `labhub.swarmplacement`'s: the first spawn picks a node, which is recorded
in the spawner's state (the hub's database) and kept across stops, so every later spawn
lands where the user's files are. With HOME_NFS the home is a folder of one NFS export
(`labhub.contract.nfs_home_options`), mounted by whichever node runs the server: no home
node, every spawn goes to the least busy node, and a node that cannot mount the export
ends the spawn at once, naming the server and the path.

With REGISTRY, the image is that registry's digest reference only (`make push` records
it; labhub.registry), and a node that cannot get it ends the spawn at once, saying so.

Every server of a user (named servers too) runs on the user's one home node, with the
one home volume: the node recorded for any of the user's servers, or, for first spawns
of two servers at once, the node the other's service was just pinned to. DATASETS are
read-only mounts of the same host folder (or named volume) on every node; a node that
lacks one ends the spawn at once, naming the node and the folder.

With QUOTA_ROOT each home is a btrfs subvolume under QUOTA_ROOT on its node, made with
the user's limit by that node's diskquota service (asked through the node's Docker
proxy, `labhub.homemove.prepare_quota_home`) before the service is created, and the
volume is the `local` driver's bind onto it (`labhub.contract.quota_home_options`), the
only options the proxy then allows.

GPUs are the subclass `labhub.swarmgpu.LabSwarmGpuSpawner`'s. The service API of
Engine 20.10 (API 1.41) has no `no-new-privileges`: the nodes' engines run with
`--no-new-privileges`, which applies it to every container, tasks included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from docker.errors import APIError, NotFound
from docker.types import (
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    TaskTemplate,
)
from docker.utils import parse_bytes
from dockerspawner import SwarmSpawner
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Float, List, Unicode

from .contract import (
    CONTAINER_USER,
    OWNER_LABEL,
    SERVER_LABEL,
    chp_host_names,
    nfs_home_options,
    swarm_home_options,
    user_network_name,
    volume_name_for,
)
from .datasets import binds_for, mount_type
from .diskquota import DiskQuotaError
from .egress import proxy_environment
from .registry import check_pinned
from .settings import Settings
from .spawner import LabServerMixin, server_config
from .swarmplacement import (
    NoNodeForServer,
    SwarmNode,
    existing_home,
    node_for,
    nodes_from_api,
    pin_constraint,
    servers_per_node,
    users_node,
)

# The spawner's state key of the home node (kept by the hub in its database).
HOME_NODE_STATE = "home_node"
# What a node's engine says of a task whose bind source is not there (Engine 20.10).
_MISSING_BIND = "bind source path does not exist:"
# ... and of a task whose volume the local driver could not mount (HOME_NFS).
_FAILED_MOUNT = "failed to mount local volume"


@dataclass(frozen=True)
class ServerService:
    """Everything one user's service is made of; `service_spec` turns it into the API's."""

    name: str
    user: str
    image: str
    args: list[str]
    env: dict[str, str]
    volume: str
    home_dir: str
    network: str
    node: str
    mem_limit: int
    nano_cpus: int
    pids_limit: int
    shm_size: int
    gpu_labels: Mapping[str, str] = field(default_factory=dict)
    """The GPU booking on the service (labhub.swarmgpu), which the Docker proxy checks."""
    datasets: Mapping[str, str] = field(default_factory=dict)
    """The user's datasets, source -> target (`labhub.datasets.binds_for`): read-only."""
    home_options: Mapping[str, str] = field(default_factory=dict)
    """The home volume's `local` driver options (`labhub.contract.swarm_home_options`: the
    NFS folder with HOME_NFS, the bind onto its subvolume with QUOTA_ROOT); empty: a plain
    volume on the node."""
    server: str = ""
    """The server's name, "" for the user's default server: labelled on its task's
    container, as LabSpawner labels its container, for the per-user metrics."""
    hosts: Mapping[str, str] = field(default_factory=dict)
    """Host name -> address in the server's /etc/hosts: configurable-http-proxy's names
    (`LabSwarmSpawner.chp_host_names`) at its address on the user's network."""


def service_spec(server: ServerService) -> dict[str, Any]:
    """docker-py `create_service` arguments for a lab server, hardened as LabSpawner's."""
    labels = {OWNER_LABEL: server.user}
    container = ContainerSpec(
        image=server.image,
        args=server.args,
        env=server.env,
        user=CONTAINER_USER,
        labels={**labels, SERVER_LABEL: server.server},
        mounts=[
            # A named volume on the node: the local driver with no options, or exactly the
            # NFS or disk-quota home's options the Docker proxy allows (no other host path).
            Mount(
                target=server.home_dir,
                source=server.volume,
                type="volume",
                driver_config=(
                    DriverConfig("local", dict(server.home_options))
                    if server.home_options
                    else None
                ),
            ),
            Mount(target="/dev/shm", source=None, type="tmpfs", tmpfs_size=server.shm_size),
            *dataset_mounts(server.datasets),
        ],
        cap_drop=["ALL"],
        init=False,  # tini is the image's entry point
        hosts=dict(server.hosts) or None,
    )
    resources = Resources(mem_limit=server.mem_limit, cpu_limit=server.nano_cpus)
    resources["Limits"]["Pids"] = server.pids_limit  # API 1.41; docker-py has no argument
    task = TaskTemplate(
        container_spec=container,
        resources=resources,
        placement=Placement(constraints=[pin_constraint(server.node)]),
        networks=[server.network],
    )
    return {
        "name": server.name,
        "labels": {**labels, **server.gpu_labels},
        "task_template": task,
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


def dataset_mounts(datasets: Mapping[str, str]) -> list[Mount]:
    """Each dataset read-only: a host folder (the same path on every node) as a bind, a
    named volume as a volume (the proxy allows exactly `labhub.datasets.Dataset.bind`)."""
    return [
        Mount(
            target=target,
            source=source,
            type=mount_type(source),
            read_only=True,
        )
        for source, target in datasets.items()
    ]


_placement_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def placement_lock() -> asyncio.Lock:
    """The lock that makes first spawns choose their nodes one after the other: one per
    event loop (the hub has one; an asyncio lock cannot be shared between loops)."""
    return _placement_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


class LabSwarmSpawner(LabServerMixin, SwarmSpawner):  # type: ignore[misc]
    """SwarmSpawner with LabSpawner's limits and hardening, pinned to the user's home node."""

    # DockerSpawner's trait, the service's ID ("" once removed), typed for the checker only.
    object_id: str

    home_node = Unicode(
        "",
        help="The Swarm node ID holding this user's home volume: chosen at the first spawn "
        "(labhub.swarmplacement), then kept in the spawner's state across stops.",
    )
    registry = Unicode(
        "",
        config=True,
        help="REGISTRY: the nodes pull the image from there, so it must be that registry's "
        "digest reference (labhub.registry); empty: the image is on the nodes already.",
    )
    node_proxy_service = Unicode(
        "",
        config=True,
        help="NODE_PROXY_SERVICE: the nodes' Docker proxies' service (make up deploys it). "
        "A first spawn asks every node through it whether the user's home volume is there "
        "already (a home from before Swarm mode): that node becomes the home. Empty, or "
        "with home_nfs: not asked.",
    )
    home_nfs = Unicode(
        "",
        config=True,
        help="HOME_NFS: <server>:/export holding every user's home, the folder "
        "<export>/<home volume name>, mounted with the local driver's NFS options "
        "(labhub.contract.nfs_home_options) on the node that runs the server; no home node. "
        "Empty: the home is a plain volume on the node of the user's first spawn.",
    )
    task_timeout = Float(
        30.0,
        config=True,
        help="Seconds to wait for a new service's task to appear (the manager makes it "
        "within a second; the task then starts under start_timeout).",
    )
    frontend_containers = List(
        Unicode(),
        config=True,
        help="Names of the containers on the manager that must reach users' servers (the "
        "hub's, and configurable-http-proxy's when it runs apart), e.g. "
        "['labhub-hub', 'labhub-proxy-chp']. Each user's server is on a network of its "
        "own; the spawner connects these, and only these, to it. The Docker proxy must be "
        "given the same list (FRONTEND_CONTAINERS).",
    )

    chp_container = Unicode(
        "",
        config=True,
        help="configurable-http-proxy's container name, one of frontend_containers: a user's "
        "server resolves chp_host_names to its address on the user's network.",
    )

    chp_host_names = List(
        Unicode(),
        config=True,
        help="Host names a user's server reaches configurable-http-proxy by, besides its "
        "container name: with SUBDOMAINS the GPU service's own host "
        "(labhub.contract.gpu_service_host), which the proxy routes by. Each goes into the "
        "server's /etc/hosts with the proxy's address on the user's network; the Docker "
        "proxy allows no other name (from the same DOMAIN and SUBDOMAINS).",
    )

    egress_proxy = Unicode(
        "",
        config=True,
        help="The egress proxy's container name (compose/swarm.yml; labhub.egress): users' "
        "servers get HTTP_PROXY/HTTPS_PROXY pointing at it, their only way out. It must be "
        "one of frontend_containers, so that it joins each user's network. Empty: no way out.",
    )

    def get_env(self) -> dict[str, str]:
        """The server's environment, with the egress proxy's variables when there is one
        (the other frontends are reached directly, on the user's network)."""
        env: dict[str, str] = super().get_env()
        if self.egress_proxy:
            direct = [c for c in self.frontend_containers if c != self.egress_proxy]
            env.update(proxy_environment(self.egress_proxy, [*direct, *self.chp_host_names]))
        return env

    async def create_object(self) -> dict[str, Any]:
        """Choose the node, create the service pinned there, wait for its task."""
        if self.mem_limit is None or self.cpu_limit is None:
            raise web.HTTPError(500, "LabSwarmSpawner needs mem_limit and cpu_limit (settings)")
        if self.home_nfs:
            self.home_node = ""  # shared storage: any node will do, none is recorded
        else:
            self.reload_home_node()
        hosts = self.chp_hosts(await self.join_user_network())
        nodes = nodes_from_api(await self.docker("nodes"))
        await self.adopt_existing_home(nodes)
        args = await self.get_command()
        volume = self.volume_name
        # From the count of servers per node until this service is counted too: concurrent
        # first spawns would otherwise all read the same counts and pick the same node.
        async with placement_lock():
            services = await self.docker("services", filters={"label": OWNER_LABEL})
            if not self.home_nfs:
                self.home_node = self.home_node or users_node(services, self.user.name) or ""
            try:
                node = self.placement_node(nodes, services)
            except NoNodeForServer as error:
                raise web.HTTPError(
                    503, f"{self.user.name}'s server cannot start: {error}"
                ) from None
            if self.disk_quotas.root:
                await self.prepare_quota_home(node, volume)
            spec = service_spec(
                ServerService(
                    name=self.service_name,
                    user=self.user.name,
                    image=self.service_image(),
                    args=args,
                    env=self.get_env(),
                    volume=volume,
                    home_dir=self.home_dir,
                    network=self.user_network,
                    node=node,
                    mem_limit=int(self.mem_limit),
                    nano_cpus=int(self.cpu_limit * 1e9),
                    pids_limit=self.pids_limit,
                    shm_size=parse_bytes(self.shm_size),
                    gpu_labels=self.service_gpu_labels(),
                    datasets=binds_for(self.datasets, [g.name for g in self.user.groups]),
                    home_options=swarm_home_options(self.home_nfs, self.disk_quotas.root, volume),
                    server=self.name,
                    hosts=hosts,
                )
            )
            service: dict[str, Any] = await self.docker("create_service", **spec)
        if not self.home_nfs:
            self.home_node = node
        deadline = time.monotonic() + self.task_timeout
        while not await self.docker("tasks", filters={"service": self.service_name}):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"service {self.service_name} has no task after {self.task_timeout} s"
                )
            await asyncio.sleep(0.2)
        return service

    def service_image(self) -> str:
        """The image the service runs: with a registry, only its digest reference, so every
        node runs the bytes `make push` recorded, whatever a tag points to later."""
        if not self.registry:
            return str(self.image)
        try:
            return check_pinned(self.registry, self.image)
        except ValueError as error:
            raise web.HTTPError(500, f"{self.user.name}'s server cannot start: {error}") from None

    async def start_object(self) -> None:
        """SwarmSpawner's wait for a running task, except that a node which could not get
        the image, lacks a dataset's folder or cannot mount the NFS home ends the spawn at
        once, naming what is missing, and the service is removed: the Swarm would otherwise
        retry the task until start_timeout with no word why (or DockerSpawner would stop
        at a failed task with the engine's raw error, the service left)."""
        waiting = asyncio.ensure_future(super().start_object())
        try:
            while True:
                await asyncio.wait({waiting}, timeout=1)
                if waiting.done() and not waiting.cancelled() and not waiting.exception():
                    return
                # Still waiting, or DockerSpawner gave up on a failed task with the
                # engine's raw error: say why, if it is one we know.
                if problem := (
                    await self.image_pull_failure()
                    or await self.dataset_failure()
                    or await self.home_mount_failure()
                ):
                    if self.object_id:  # or the Swarm retries its task on, while stopped
                        await self.remove_object()
                        self.object_id = ""  # nothing left for the hub's stop to remove
                    raise web.HTTPError(503, f"{self.user.name}'s server cannot start: {problem}")
                if waiting.done():
                    waiting.result()
        finally:
            waiting.cancel()

    async def remove_object(self) -> None:
        """SwarmSpawner's removal, except when a failed start already removed the service:
        the stop the hub sends after that failure has nothing to remove (a second removal
        would fail at the engine, or at the proxy, which finds no owner label)."""
        if self.object_id:
            await super().remove_object()

    async def image_pull_failure(self) -> str:
        """Why a task of this service was rejected for want of its image, or ""."""
        tasks = await self.docker("tasks", filters={"service": self.service_name})
        for task in tasks:
            status = task.get("Status") or {}
            if status.get("State") == "rejected" and "No such image" in status.get("Err", ""):
                source = f"the registry {self.registry}" if self.registry else "its engine"
                return (
                    f"node {task.get('NodeID')} could not get the image {self.service_image()} "
                    f"from {source} ({status['Err']}): is the registry up, does the node "
                    "trust it, and does it want a login (REGISTRY_USERNAME)? "
                    f"(`docker service ps --no-trunc {self.service_name}` on the "
                    "manager shows every try)"
                )
        return ""

    async def dataset_failure(self) -> str:
        """Why a task of this service was rejected for want of a dataset's folder on its
        node, or "" (the Swarm would retry it until start_timeout, saying nothing)."""
        tasks = await self.docker("tasks", filters={"service": self.service_name})
        for task in tasks:
            status = task.get("Status") or {}
            error = status.get("Err", "")
            if status.get("State") == "rejected" and _MISSING_BIND in error:
                path = error.partition(_MISSING_BIND)[2].strip()
                return (
                    f"node {task.get('NodeID')} has no folder {path} for a dataset "
                    "(DATASETS): every node needs each dataset's folder at the same path; "
                    f"create or mount it there ({error})"
                )
        return ""

    async def home_mount_failure(self) -> str:
        """Why a task of this service failed to mount the NFS home (HOME_NFS), or "": the
        Swarm would retry it on and on, each try failing the same way."""
        if not self.home_nfs:
            return ""
        tasks = await self.docker("tasks", filters={"service": self.service_name})
        for task in tasks:
            status = task.get("Status") or {}
            error = status.get("Err", "")
            if status.get("State") in ("rejected", "failed") and _FAILED_MOUNT in error:
                device = nfs_home_options(self.home_nfs, self.volume_name)["device"]
                server = self.home_nfs.rpartition(":")[0]
                return (
                    f"node {task.get('NodeID')} cannot mount the home {server}:"
                    f"{device[1:]} (HOME_NFS): check that the node has an NFS client "
                    "(nfs-common), reaches the server, and that the server exports that "
                    f"folder to the node ({error})"
                )
        return ""

    async def prepare_quota_home(self, node: str, volume: str) -> None:
        """The home's subvolume and limit on `node`, before the service is pinned there;
        a 503 naming the problem if it cannot be made, never a home without its quota."""
        from .homemove import MoveRefused, prepare_quota_home

        limit = self.disk_quotas.limit_for(self.user.name, [g.name for g in self.user.groups])
        try:
            await asyncio.to_thread(
                prepare_quota_home, self.node_proxy_service, node, volume, limit,
                self.disk_quotas.root,
            )  # fmt: skip
        except (DiskQuotaError, MoveRefused) as error:
            raise web.HTTPError(503, f"{self.user.name}'s server cannot start: {error}") from None

    @property
    def volume_name(self) -> str:
        """The user's home volume (on HOME_NFS, also the folder's name in the export)."""
        return volume_name_for(self.user.name, self.network_name)

    def placement_node(self, nodes: list[SwarmNode], services: list[dict[str, Any]]) -> str:
        """The node this server runs on (raises NoNodeForServer): `swarmplacement`'s choice;
        the GPU spawner pins it to its devices' node instead."""
        return node_for(self.home_node or None, nodes, servers_per_node(services))

    def service_gpu_labels(self) -> dict[str, str]:
        """The GPU booking to put on the service: none here (labhub.swarmgpu adds it)."""
        return {}

    async def adopt_existing_home(self, nodes: list[SwarmNode]) -> None:
        """With no home node recorded, the node that already holds the user's home volume
        (a lab that moved from one host keeps its students' files), asked through the
        nodes' proxies; a 503 when the answer is unclear, never an empty home elsewhere."""
        if self.home_node or not self.node_proxy_service or self.home_nfs:
            return
        from .homemove import MoveRefused, volume_holders

        volume = volume_name_for(self.user.name, self.network_name)
        try:
            answered, holding = await asyncio.to_thread(
                volume_holders, self.node_proxy_service, volume
            )
            self.home_node = existing_home(nodes, answered, holding) or ""
        except (MoveRefused, NoNodeForServer) as error:
            raise web.HTTPError(503, f"{self.user.name}'s server cannot start: {error}") from None

    def reload_home_node(self) -> None:
        """The home node as the hub's database has it now: `labhub move-home` (an admin
        command, another process) changes it there while the server is stopped. Through
        the ORM object's own session (Spawner.db is deprecated). One home per user: the
        default server's record first (the one move-home switches), then this server's,
        then any other of the user's servers' (a named server spawned first)."""
        session = object_session(self.orm_spawner) if self.orm_spawner is not None else None
        if session is None:
            return
        rows = self.orm_spawner.user.orm_spawners
        for row in (rows.get(""), self.orm_spawner, *rows.values()):
            if row is None:
                continue
            session.refresh(row, ["state"])
            state = row.state or {}
            if HOME_NODE_STATE in state:
                self.home_node = state[HOME_NODE_STATE]
                return

    async def get_ip_and_port(self) -> tuple[str, int]:
        """The running task's address on the user's own network rather than the service's
        name: a frontend joined to many users' networks can still resolve the name to the
        task a restart replaced (on the test cluster the hub kept connecting to the old
        address after a stop and start)."""
        task = await self.get_task()
        for attachment in (task or {}).get("NetworksAttachments") or []:
            if (attachment.get("Network") or {}).get("Spec", {}).get("Name") == self.user_network:
                for address in attachment.get("Addresses") or []:
                    return str(address).partition("/")[0], int(self.port)
        ip, port = await super().get_ip_and_port()
        return str(ip), int(port)

    @property
    def user_network(self) -> str:
        """The user's own overlay network (`network_name` stays the lab's: the volume's and
        the services' names carry it)."""
        return user_network_name(self.user.name, self.network_name)

    async def join_user_network(self) -> dict[str, Any]:
        """Make the user's internal overlay network on their first spawn and connect the
        frontends to it; kept across stops, so a later spawn costs one inspect. The network
        as inspected with every frontend on it."""
        if not self.frontend_containers:
            raise web.HTTPError(
                500,
                "LabSwarmSpawner.frontend_containers is empty: name the hub's (and CHP's) "
                "containers, or no one could reach the users' servers",
            )
        network = await self._user_network_inspected()
        joined = {c.get("Name") for c in (network.get("Containers") or {}).values()}
        missing = [c for c in self.frontend_containers if c not in joined]
        for container in missing:
            await self.docker("connect_container_to_network", container, self.user_network)
        if missing and self.chp_host_names:  # their addresses, for chp_hosts
            return dict(await self.docker("inspect_network", self.user_network))
        return network

    async def poll(self) -> Any:
        """SwarmSpawner's answer; and while the server runs, its network has every frontend
        again. `make up` recreates the hub, CHP or the egress proxy when their settings or
        files change, and a new container is on no user's network: the hub polls each
        server when it starts and every `poll_interval`, so running servers are reached
        and get out again within that. A failure to rejoin is logged, never a stop."""
        status = await super().poll()
        if status is None:
            try:
                await self.join_user_network()
            except (APIError, OSError, web.HTTPError) as error:
                self.log.warning(
                    "the frontends could not rejoin %s's network %s: %s",
                    self.user.name, self.user_network, error,
                )  # fmt: skip
        return status

    def chp_hosts(self, network: dict[str, Any]) -> dict[str, str]:
        """The server's /etc/hosts entries: each of chp_host_names at configurable-http-proxy's
        address on the user's `network` (as inspected)."""
        if not self.chp_host_names:
            return {}
        for endpoint in (network.get("Containers") or {}).values():
            if endpoint.get("Name") == self.chp_container and endpoint.get("IPv4Address"):
                address = str(endpoint["IPv4Address"]).partition("/")[0]
                return {name: address for name in self.chp_host_names}
        raise web.HTTPError(
            500,
            f"configurable-http-proxy ({self.chp_container or 'chp_container is not set'}) "
            f"has no address on {self.user_network}, which its host names "
            f"({', '.join(self.chp_host_names)}) need",
        )

    async def _user_network_inspected(self) -> dict[str, Any]:
        try:
            return dict(await self.docker("inspect_network", self.user_network))
        except NotFound:
            pass
        try:
            await self.docker(
                "create_network", self.user_network, driver="overlay", internal=True,
                attachable=True, labels={OWNER_LABEL: self.user.name}, check_duplicate=True,
            )  # fmt: skip
        except APIError as error:
            if error.status_code != 409:  # another of the user's servers made it meanwhile
                raise
        return dict(await self.docker("inspect_network", self.user_network))

    async def delete_forever(self) -> None:
        """A deleted user's server leaves nothing on the Swarm but their home: the service
        (if still there), then the frontends' connections and the user's network (the
        engine removes a network only once its endpoints are gone). A named server's
        deletion removes its service only: the network is the user's."""
        with contextlib.suppress(NotFound):
            await self.docker("remove_service", self.service_name)
        if self.name:
            return
        try:
            network = await self.docker("inspect_network", self.user_network)
        except NotFound:
            return
        for endpoint in (network.get("Containers") or {}).values():
            if endpoint.get("Name") in self.frontend_containers:
                await self.docker(
                    "disconnect_container_from_network", endpoint["Name"], self.user_network
                )
        await self._remove_user_network()

    async def _remove_user_network(self) -> None:
        """Remove the user's network once the removed service's task has let go of it (the
        engine answers 403 "has active endpoints" meanwhile), within task_timeout."""
        deadline = time.monotonic() + self.task_timeout
        while True:
            try:
                await self.docker("remove_network", self.user_network)
                return
            except NotFound:
                return
            except APIError as error:
                if error.status_code != 403 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.home_node:
            state[HOME_NODE_STATE] = self.home_node
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if HOME_NODE_STATE in state:
            self.home_node = state[HOME_NODE_STATE]

    # clear_state (after a stop) keeps home_node: the files stay on that node.


def swarm_spawner_config(settings: Settings) -> dict[str, Any]:
    """The LabSwarmSpawner traitlets that come from settings (no GPUs: labhub.swarmgpu)."""
    return {
        **server_config(settings),
        "start_timeout": 180,
        "registry": settings.registry,
        "datasets": settings.datasets,
        "node_proxy_service": settings.node_proxy_service or "",
        "home_nfs": settings.home_nfs,
        "chp_container": settings.chp_container or "",
        "chp_host_names": chp_host_names(settings.domain, settings.subdomains),
    }
