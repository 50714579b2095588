"""The lab's SwarmSpawner: each user's server a Swarm service, pinned to their home's node.

Same limits and hardening as LabSpawner's containers (`service_spec`), in the Swarm
service API's own terms: the unprivileged user, every capability dropped, memory, CPU
and process limits, /dev/shm as a sized tmpfs, the owner label, the user's named volume.
The service joins the lab's attachable overlay network with a `dnsrr` endpoint (no
routing mesh, no published port); the hub reaches it by its service name.

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
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Float, Unicode

from .contract import CONTAINER_USER, OWNER_LABEL, volume_name_for
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

    async def create_object(self) -> dict[str, Any]:
        """Choose the node, create the service pinned there, wait for its task."""
        if self.mem_limit is None or self.cpu_limit is None:
            raise web.HTTPError(500, "LabSwarmSpawner needs mem_limit and cpu_limit (settings)")
        self.reload_home_node()
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
                network=self.network_name,
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

    def reload_home_node(self) -> None:
        """The home node as the hub's database has it now: `labhub move-home` (an admin
        command, another process) changes it there while the server is stopped. Through
        the ORM object's own session (Spawner.db is deprecated)."""
        session = object_session(self.orm_spawner) if self.orm_spawner is not None else None
        if session is None:
            return
        session.refresh(self.orm_spawner, ["state"])
        state = self.orm_spawner.state or {}
        if HOME_NODE_STATE in state:
            self.home_node = state[HOME_NODE_STATE]

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
