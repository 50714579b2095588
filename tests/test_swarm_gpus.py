"""GPUs across a real two-engine Swarm: one allocator picks node and device, the task on that
node sees exactly its device, and the proxy lets nothing else through.

No GPU is needed: each node's dockerd runs `tests/fake-gpu/nvidia-container-runtime` as its
default runtime, a stand-in for NVIDIA's (a runc wrapper) that gives a container
`/dev/nvidia<id>` (a copy of /dev/null) for each id in its NVIDIA_VISIBLE_DEVICES, as the
real runtime gives the real device nodes. The inventory: GPU 0 on the manager, GPUs 0 and 1
on the worker (booked as `0@<node ID>`: all hostnames are this host's). Every Docker call of
`LabSwarmGpuSpawner` goes through labhub's Docker proxy (PROXY_POLICY=swarm, GPU_DB the
allocator's record) in front of the manager, on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jupyterhub.objects import Hub, Server
from labhub.contract import GPU_DEVICES_LABEL, GPU_HOLDER_LABEL, container_prefix
from labhub.gpu.allocator import GpuAllocator
from labhub.gpu.api import devices_report
from labhub.gpu.inventory import Device
from labhub.gpu.profiles import default_profiles
from labhub.gpu.readings import GpuReadings
from labhub.gpu.store import Store, booked_devices
from labhub.settings import Settings
from labhub.swarmgpu import LabSwarmGpuSpawner, swarm_gpu_spawner_config
from swarm import Node, Swarm
from swarmlab import (
    HubUser,
    frontend_for,
    make_user_network,
    service_body,
    spawners_through,
    swarm_proxy,
)
from tornado import web

from testsupport.dockerproxy import raw_request
from testsupport.images import BASE_IMAGE, ensure_base_image
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.waiting import wait_until

pytestmark = [pytest.mark.swarm, pytest.mark.integration]

IMAGE = BASE_IMAGE
NETWORK = os.environ.get("LABHUB_TEST_STACK", "lhswgpu")
PREFIX = container_prefix(NETWORK)
RUNTIME = Path(__file__).parent / "fake-gpu" / "nvidia-container-runtime"
# The user's server: anything that keeps running (the spawner appends its own arguments).
SERVER = ["sh", "-c", "exec sleep 900", "sh"]


@dataclass
class GpuCluster:
    swarm: Swarm
    proxy_port: int
    allocator: GpuAllocator
    db: Path
    # The spawners of running servers, as the hub keeps them.
    running: dict[str, LabSwarmGpuSpawner] = field(default_factory=dict)

    def spawner(self, user: str) -> LabSwarmGpuSpawner:
        settings = Settings.from_env(
            {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK, "WORKSPACE_IMAGE": IMAGE}
        )
        spawner = LabSwarmGpuSpawner(
            user=HubUser(user), hub=Hub(), cmd=SERVER, frontend_containers=[frontend_for(NETWORK)],
            **swarm_gpu_spawner_config(settings, self.allocator),
        )  # fmt: skip
        spawner.user_options = {"profile": "gpu-1"}
        spawner.server = Server(base_url=f"/user/{user}/")
        return spawner

    def start(self, user: str) -> LabSwarmGpuSpawner:
        spawner = self.spawner(user)
        asyncio.run(spawner.start())
        self.running[user] = spawner
        return spawner

    def node(self, node_id: str) -> Node:
        return next(node for node in self.swarm.nodes if node.node_id == node_id)

    def task(self, service: str) -> tuple[Node, str]:
        """The node running the service's task and its container there."""

        def running() -> tuple[Node, str] | None:
            for node in self.swarm.nodes:
                found = node.docker(
                    "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"
                ).split()
                if found:
                    return node, found[0]
            return None

        found = wait_until(running, 120, f"a running task of {service}", interval=1)
        assert found is not None
        return found

    def devices_seen(self, service: str) -> list[str]:
        node, container = self.task(service)
        listing = node.docker("exec", container, "sh", "-c", "ls /dev | grep '^nvidia' || true")
        return sorted(listing.split())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root (network namespaces, dockerd)")
    ensure_base_image()
    runtime = ["--add-runtime", f"nvidia={RUNTIME}", "--default-runtime", "nvidia"]
    with Swarm(2, images=[IMAGE], dockerd_args=runtime) as swarm:
        swarm.manager.docker("network", "create", "--driver", "overlay", "--attachable", NETWORK)
        manager, worker = (node.node_id for node in swarm.nodes)
        inventory = (
            Device(id="0", model="Fake A100", memory_mib=40960, node=manager),
            Device(id="0", model="Fake A100", memory_mib=40960, node=worker),
            Device(id="1", model="Fake A100", memory_mib=40960, node=worker),
        )
        db = tmp_path_factory.mktemp("gpu") / "gpu.sqlite"
        allocator = GpuAllocator(inventory, default_profiles(inventory), Store(db))
        with (
            swarm_proxy(swarm, NETWORK, IMAGE, GPU_DB=str(db)) as port,
            spawners_through(port, LabSwarmGpuSpawner),
        ):
            yield GpuCluster(swarm, port, allocator, db)


def test_three_gpu_users_each_see_exactly_their_device_on_its_node_and_a_fourth_is_refused(
    cluster: GpuCluster,
) -> None:
    spawners = {user: cluster.start(user) for user in ("ada", "bob", "cy")}
    booked = {user: booked_devices(cluster.db, user) for user in spawners}
    keys = [key for devices in booked.values() for key in devices or ()]
    assert sorted(keys) == sorted(d.key for d in cluster.allocator.inventory), booked
    for user, spawner in spawners.items():
        [key] = booked[user] or ()
        device_id, node_id = key.split("@")
        node, _ = cluster.task(spawner.service_name)
        assert node.node_id == node_id == spawner.home_node, (user, key)
        # The stand-in runtime gave the task the devices its environment names: one.
        assert cluster.devices_seen(spawner.service_name) == [f"nvidia{device_id}"], user
    with pytest.raises(web.HTTPError, match="busy") as busy:
        cluster.start("dan")
    assert busy.value.status_code == 503
    assert booked_devices(cluster.db, "dan") is None
    # A stop frees the device, and the next GPU user gets it, on that device's node.
    asyncio.run(spawners["ada"].stop())
    assert booked_devices(cluster.db, "ada") is None
    dan = cluster.start("dan")
    assert booked_devices(cluster.db, "dan") == booked["ada"]
    [adas] = booked["ada"] or ()
    assert cluster.task(dan.service_name)[0].node_id == adas.split("@")[1]


def test_the_proxy_gives_no_one_a_gpu_the_record_does_not_book_them(cluster: GpuCluster) -> None:
    bob = cluster.start("bob") if not booked_devices(cluster.db, "bob") else None
    [bobs] = booked_devices(cluster.db, "bob") or ()
    device_id, node_id = bobs.split("@")
    attacks = {
        "every GPU": service_body(network=NETWORK, node_id=node_id, visible="all"),
        "bob's GPU, booked as mallory's": service_body(
            network=NETWORK,
            node_id=node_id,
            visible=device_id,
            labels={GPU_HOLDER_LABEL: "mallory", GPU_DEVICES_LABEL: bobs},
        ),
        "bob's GPU, as bob": service_body(
            network=NETWORK,
            node_id=node_id,
            visible=device_id,
            labels={GPU_HOLDER_LABEL: "bob", GPU_DEVICES_LABEL: bobs},
        ),
    }
    for attack, body in attacks.items():
        status, answer = raw_request(cluster.proxy_port, "POST", "/v1.41/services/create", body)
        assert status == 403, (attack, answer)
    services = cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}").split()
    assert f"{PREFIX}-mallory" not in services
    # The same service without a GPU is created: the refusals were the GPU rules.
    make_user_network(cluster.proxy_port, network=NETWORK)
    status, answer = raw_request(
        cluster.proxy_port, "POST", "/v1.41/services/create",
        service_body(network=NETWORK, node_id=node_id),
    )  # fmt: skip
    assert status == 201, answer
    assert cluster.devices_seen(f"{PREFIX}-mallory") == []
    cluster.swarm.manager.docker("service", "rm", f"{PREFIX}-mallory")
    if bob is not None:
        asyncio.run(bob.stop())


def test_a_gpu_nodes_engine_stopping_releases_its_holders_and_shows_on_the_admin_report(
    cluster: GpuCluster,
) -> None:
    worker = cluster.swarm.workers[0]
    on_worker = {
        user: spawner
        for user, spawner in cluster.running.items()
        if booked_devices(cluster.db, user) and spawner.home_node == worker.node_id
    }
    assert on_worker, cluster.running
    assert all(asyncio.run(s.poll()) is None for s in on_worker.values())
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGTERM)  # the engine stops its containers
    worker.process.wait(timeout=60)

    def worker_down() -> bool:
        listing = cluster.swarm.manager.docker("node", "inspect", worker.node_id)
        return json.loads(listing)[0]["Status"]["State"] == "down"

    wait_until(worker_down, 120, "the manager to see the worker down", interval=2)
    for user, spawner in on_worker.items():
        assert asyncio.run(spawner.poll()) == f"node {worker.node_id} is down", user
        asyncio.run(spawner.run_post_stop_hook())  # what the hub does when poll says so
        assert booked_devices(cluster.db, user) is None, user
        services = cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}")
        assert spawner.service_name not in services.split()
    report = asyncio.run(
        devices_report(cluster.allocator.store, cluster.allocator.inventory, GpuReadings())
    )
    for device in report["devices"]:
        assert (device["node_down_since"] is not None) == (device["node"] == worker.node_id)
    # No GPU of the down node is given; the manager's GPU is busy: all busy.
    with pytest.raises(web.HTTPError, match="busy"):
        cluster.start("eve")
