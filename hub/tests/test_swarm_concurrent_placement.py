"""First spawns that arrive together still spread over the Swarm's nodes.

The cluster benchmark (bench/cluster/) found every batch of ten concurrent first spawns on
one node: each spawn counted the servers per node before any of the others had created
its service. Here nine users spawn at once against a manager whose calls take a moment,
as they do through the Docker proxy, and whose service list includes what was created.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest
import requests
from jupyterhub.objects import Hub, Server
from labhub.contract import OWNER_LABEL
from labhub.settings import Settings
from labhub.swarmplacement import servers_per_node
from labhub.swarmspawner import LabSwarmSpawner, swarm_spawner_config

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.recording import RecordingAPIClient

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env(MINIMAL_ENV)
NODES = [
    {"ID": node_id, "Status": {"State": "ready"}, "Spec": {"Availability": "active"}}
    for node_id in ("n1", "n2", "n3")
]


class SlowManager(RecordingAPIClient):
    """A Swarm manager where every call takes 20 ms and a created service is listed (and its
    task running) from then on."""

    def __init__(self) -> None:
        super().__init__(strip="/v1.41")
        self.created: dict[str, dict[str, Any]] = {}

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        time.sleep(0.02)
        if url.endswith("/services/create"):
            body = json.loads(kwargs["data"])
            self.created[body["Name"]] = body
        return super().request(method, url, **kwargs)

    def answer(self, path: str) -> tuple[int, Any]:
        if path == "/nodes":
            return 200, NODES
        if path == "/services":
            return 200, [{"Spec": body} for body in list(self.created.values())]
        if path == "/services/create":
            return 201, {"ID": "svc"}
        if path == "/tasks":
            return 200, [{"Status": {"State": "running"}}]
        if path.startswith("/networks/"):  # each user's network, the hub already on it
            return 200, {"Containers": {"c1": {"Name": "labhub-hub"}}}
        if path.startswith("/images/"):
            return 200, {"Config": {"Cmd": ["start-notebook.py"]}}
        name = path.removeprefix("/services/")
        if name in self.created:
            return 200, {"ID": "svc", "Spec": {"Labels": self.created[name]["Labels"]}}
        return 404, {"message": "service not found"}


class _User:
    admin = False
    groups: tuple[object, ...] = ()

    def __init__(self, name: str) -> None:
        self.name, self.url = name, f"/user/{name}/"


async def spawn_together(users: list[str]) -> None:
    spawners = []
    for user in users:
        spawner = LabSwarmSpawner(
            user=_User(user),
            hub=Hub(),
            frontend_containers=["labhub-hub"],
            **swarm_spawner_config(SETTINGS),
        )
        spawner.server = Server(base_url=f"/user/{user}/")
        spawners.append(spawner)
    await asyncio.gather(*(spawner.start() for spawner in spawners))


def test_nine_first_spawns_at_once_land_three_on_each_of_three_nodes() -> None:
    manager = SlowManager()
    original = LabSwarmSpawner._client
    LabSwarmSpawner._client = manager
    try:
        asyncio.run(spawn_together([f"student{i}" for i in range(9)]))
    finally:
        LabSwarmSpawner._client = original
    assert len(manager.created) == 9
    assert all(body["Labels"][OWNER_LABEL] for body in manager.created.values())
    placed = servers_per_node({"Spec": body} for body in manager.created.values())
    assert placed == Counter({"n1": 3, "n2": 3, "n3": 3})
