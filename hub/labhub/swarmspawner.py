"""The lab's SwarmSpawner: each user's server a Swarm service, pinned to their home's node.

Same limits and hardening as LabSpawner's containers (`service_spec`), in the Swarm
service API's own terms: the unprivileged user, every capability dropped, memory, CPU
and process limits, /dev/shm as a sized tmpfs, the owner label, the user's named volume.
The service joins only its user's own overlay network (`user_network_name`), attachable
and internal, with a `dnsrr` endpoint (no routing mesh, no published port). The spawner
makes that network on the user's first spawn and connects the frontends (the hub's and
CHP's containers, `frontend_containers`) to it: they reach the server by its service name,
and the server reaches nothing else: no other user's server, no node, no LAN or internet.

Placement is `labhub.swarmplacement`'s: the first spawn picks a node, which is recorded
in the spawner's state (the hub's database) and kept across stops, so every later spawn
lands where the user's files are.

Not here yet (docs/scale-out.md): GPUs, datasets and disk quotas. The service API of
Engine 20.10 (API 1.41) has no `no-new-privileges`: the nodes' engines run with
`--no-new-privileges`, which applies it to every container, tasks included.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from docker.errors import APIError, NotFound
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    TaskTemplate,
)
from docker.utils import parse_bytes
from dockerspawner import SwarmSpawner
from tornado import web
from traitlets import Float, List, Unicode

from .contract import CONTAINER_USER, OWNER_LABEL, user_network_name, volume_name_for
from .settings import Settings
from .spawner import LabServerMixin, server_config
from .swarmplacement import (
    NoNodeForServer,
    node_for,
    nodes_from_api,
    pin_constraint,
    servers_per_node,
)

# The spawner's state key of the home node (kept by the hub in its database).
HOME_NODE_STATE = "home_node"


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


def service_spec(server: ServerService) -> dict[str, Any]:
    """docker-py `create_service` arguments for a lab server, hardened as LabSpawner's."""
    labels = {OWNER_LABEL: server.user}
    container = ContainerSpec(
        image=server.image,
        args=server.args,
        env=server.env,
        user=CONTAINER_USER,
        labels=labels,
        mounts=[
            # A named volume on the node (the local driver, no options: never a host path).
            Mount(target=server.home_dir, source=server.volume, type="volume"),
            Mount(target="/dev/shm", source=None, type="tmpfs", tmpfs_size=server.shm_size),
        ],
        cap_drop=["ALL"],
        init=False,  # tini is the image's entry point
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
        "labels": labels,
        "task_template": task,
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


class LabSwarmSpawner(LabServerMixin, SwarmSpawner):  # type: ignore[misc]
    """SwarmSpawner with LabSpawner's limits and hardening, pinned to the user's home node."""

    home_node = Unicode(
        "",
        help="The Swarm node ID holding this user's home volume: chosen at the first spawn "
        "(labhub.swarmplacement), then kept in the spawner's state across stops.",
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

    async def create_object(self) -> dict[str, Any]:
        """Choose the node, create the service pinned there, wait for its task."""
        if self.mem_limit is None or self.cpu_limit is None:
            raise web.HTTPError(500, "LabSwarmSpawner needs mem_limit and cpu_limit (settings)")
        await self.join_user_network()
        nodes = nodes_from_api(await self.docker("nodes"))
        services = await self.docker("services", filters={"label": OWNER_LABEL})
        try:
            node = node_for(self.home_node or None, nodes, servers_per_node(services))
        except NoNodeForServer as error:
            raise web.HTTPError(503, f"{self.user.name}'s server cannot start: {error}") from None
        spec = service_spec(
            ServerService(
                name=self.service_name,
                user=self.user.name,
                image=self.image,
                args=await self.get_command(),
                env=self.get_env(),
                volume=volume_name_for(self.user.name, self.network_name),
                home_dir=self.home_dir,
                network=self.user_network,
                node=node,
                mem_limit=int(self.mem_limit),
                nano_cpus=int(self.cpu_limit * 1e9),
                pids_limit=self.pids_limit,
                shm_size=parse_bytes(self.shm_size),
            )
        )
        service: dict[str, Any] = await self.docker("create_service", **spec)
        self.home_node = node
        deadline = time.monotonic() + self.task_timeout
        while not await self.docker("tasks", filters={"service": self.service_name}):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"service {self.service_name} has no task after {self.task_timeout} s"
                )
            await asyncio.sleep(0.2)
        return service

    @property
    def user_network(self) -> str:
        """The user's own overlay network (`network_name` stays the lab's: the volume's and
        the services' names carry it)."""
        return user_network_name(self.user.name, self.network_name)

    async def join_user_network(self) -> None:
        """Make the user's internal overlay network on their first spawn and connect the
        frontends to it; kept across stops, so a later spawn costs one inspect."""
        if not self.frontend_containers:
            raise web.HTTPError(
                500,
                "LabSwarmSpawner.frontend_containers is empty: name the hub's (and CHP's) "
                "containers, or no one could reach the users' servers",
            )
        network = await self._user_network_inspected()
        joined = {c.get("Name") for c in (network.get("Containers") or {}).values()}
        for container in self.frontend_containers:
            if container not in joined:
                await self.docker("connect_container_to_network", container, self.user_network)

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
    """The LabSwarmSpawner traitlets that come from settings (no GPUs, datasets or quotas)."""
    return {**server_config(settings), "start_timeout": 180}
