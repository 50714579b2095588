"""First spawns that arrive together still spread over the Swarm's nodes.

The cluster benchmark (bench/cluster/) found every batch of ten concurrent first spawns on
one node: each spawn counted the servers per node before any of the others had created
its service. Here nine users spawn at once against a manager whose calls take a moment,
as they do through the Docker proxy, and whose service list includes what was created.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from jupyterhub.objects import Hub, Server
from labhub.contract import OWNER_LABEL
from labhub.settings import Settings
from labhub.swarmplacement import servers_per_node
from labhub.swarmspawner import LabSwarmSpawner, swarm_spawner_config

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser, SlowManager

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env(MINIMAL_ENV)


async def spawn_together(users: list[str]) -> None:
    spawners = []
    for user in users:
        spawner = LabSwarmSpawner(
            user=HubUser(user),
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
