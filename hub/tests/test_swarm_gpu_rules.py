"""GPUs on a Swarm without an engine: the allocator's node and device reach the service, and
the proxy lets through exactly the devices the GPU record books for that user, there.

`gpu_start` runs the real `LabSwarmGpuSpawner.start()` (the allocator over a real SQLite
record) against a recording docker-py client answering like a two-node manager; the
proxy's checks run on what it sent, then on that body made one step worse.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jupyterhub.objects import Hub, Server
from labhub.contract import GPU_DEVICES_LABEL, GPU_HOLDER_LABEL, OWNER_LABEL
from labhub.dockerpolicy import (
    Allowed,
    GpuClaim,
    Policy,
    Refused,
    check_gpu_claim,
    check_swarm_request,
)
from labhub.dockerproxy import verify_gpu_claim
from labhub.gpu.allocator import GpuAllocator
from labhub.gpu.api import devices_report
from labhub.gpu.inventory import Device, Inventory
from labhub.gpu.profiles import default_profiles
from labhub.gpu.readings import GpuReadings
from labhub.gpu.store import Store, booked_devices
from labhub.settings import Settings
from labhub.swarmgpu import (
    LabSwarmGpuSpawner,
    observed_services,
    swarm_gpu_spawner_config,
)
from labhub.swarmplacement import RETIRING_LABEL, NodeNamesError, gpu_node_ids
from labhub.swarmspawner import HOME_NODE_STATE
from tornado import web

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.recording import RecordingAPIClient

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env(MINIMAL_ENV)
FRONTENDS = ["labhub-hub"]
POLICY = Policy(
    allowed_images=frozenset({SETTINGS.workspace_image}),
    network=SETTINGS.docker_network,
    frontend_containers=frozenset(FRONTENDS),
)
CREATE = "/v1.41/services/create"
# Two GPU nodes; gpu-b's GPU 0 has the same id as gpu-a's: two devices all the same.
INVENTORY: Inventory = (
    Device(id="0", model="A100", memory_mib=40960, node="gpu-a"),
    Device(id="0", model="A100", memory_mib=40960, node="gpu-b"),
)


def node(node_id: str, hostname: str, state: str = "ready") -> dict[str, Any]:
    return {
        "ID": node_id,
        "Description": {"Hostname": hostname},
        "Status": {"State": state},
        "Spec": {"Availability": "active"},
    }


NODES = [node("nodeaaa", "gpu-a"), node("nodebbb", "gpu-b"), node("nodeccc", "cpu-only")]
# gpu-a being emptied by an admin (`docker node update --label-add labhub.retiring=true`).
GPU_A_RETIRING = [
    {**NODES[0], "Spec": {"Availability": "active", "Labels": {RETIRING_LABEL: "true"}}},
    *NODES[1:],
]


class Manager(RecordingAPIClient):
    """A Swarm manager with `nodes` and no lab service yet; a created service runs at once."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        super().__init__(strip="/v1.41")
        self.node_list = nodes

    def answer(self, path: str) -> tuple[int, Any]:
        created = self.sent_to("/services/create")
        answers: dict[str, Any] = {
            "/nodes": self.node_list,
            "/services": [],
            "/services/create": {"ID": "svc"},
            "/tasks": [{"Status": {"State": "running"}}] if created else [],
        }
        if path in answers:
            return (201 if path.endswith("create") else 200), answers[path]
        if path.startswith("/images/"):
            return 200, {"Config": {"Cmd": ["start-notebook.py"]}}
        if path.startswith("/networks/"):  # each user's network, the hub already on it
            return 200, {"Containers": {"c1": {"Name": FRONTENDS[0]}}}
        if created:
            return 200, {"ID": "svc", "Spec": {"Labels": {OWNER_LABEL: "x"}}}
        return 404, {"message": "service not found"}


class _User:
    admin = False
    groups: tuple[object, ...] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"/user/{name}/"


@pytest.fixture
def allocator(tmp_path: Path) -> GpuAllocator:
    return GpuAllocator(
        inventory=INVENTORY, profiles=default_profiles(INVENTORY), store=Store(tmp_path / "g.db")
    )


def gpu_start(
    allocator: GpuAllocator,
    user: str,
    profile: str = "gpu-1",
    state: dict[str, Any] | None = None,
    nodes: list[dict[str, Any]] = NODES,
) -> tuple[LabSwarmGpuSpawner, dict[str, Any]]:
    """Start `user`'s server on `profile`; the spawner and the service body it sent."""
    client = Manager(nodes)
    original = LabSwarmGpuSpawner._client
    LabSwarmGpuSpawner._client = client
    try:
        config = swarm_gpu_spawner_config(SETTINGS, allocator)
        spawner = LabSwarmGpuSpawner(
            user=_User(user), hub=Hub(), frontend_containers=FRONTENDS, **config
        )
        spawner.load_state(state or {})
        spawner.user_options = {"profile": profile}
        spawner.server = Server(base_url=f"/user/{user}/")
        asyncio.run(spawner.start())
    finally:
        LabSwarmGpuSpawner._client = original
    [data] = [d for _, path, _, d in client.sent if path == "/services/create"]
    return spawner, json.loads(data or "{}")


def env_of(body: dict[str, Any]) -> dict[str, str]:
    env = body["TaskTemplate"]["ContainerSpec"]["Env"]
    return dict(item.split("=", 1) for item in env)


def passes_the_proxy(body: dict[str, Any], db: Path, nodes: list[dict[str, Any]] = NODES) -> None:
    """The proxy's rules and the relay's check against the record (raises Refused)."""
    allowed = check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())
    if allowed.gpu_claim is not None:
        check_gpu_claim(allowed.gpu_claim, booked_devices(db, allowed.gpu_claim.holder), nodes)


def test_two_gpu_users_get_devices_on_their_nodes_pinned_there(allocator: GpuAllocator) -> None:
    _, ada = gpu_start(allocator, "ada")
    _, bob = gpu_start(allocator, "bob")
    for body, node_id in ((ada, "nodeaaa"), (bob, "nodebbb")):
        assert body["TaskTemplate"]["Placement"]["Constraints"] == [f"node.id=={node_id}"]
        assert env_of(body)["NVIDIA_VISIBLE_DEVICES"] == "0"  # the id on that node
        passes_the_proxy(body, allocator.store.path)
    assert ada["Labels"][GPU_DEVICES_LABEL] == "0@gpu-a"
    assert bob["Labels"][GPU_DEVICES_LABEL] == "0@gpu-b"
    assert ada["Labels"][GPU_HOLDER_LABEL] == "ada"


def test_a_cpu_server_sees_no_gpu_and_goes_where_placement_says(allocator: GpuAllocator) -> None:
    spawner, body = gpu_start(allocator, "cy", profile="cpu")
    assert env_of(body)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert GPU_DEVICES_LABEL not in body["Labels"]
    assert spawner.home_node in {"nodeaaa", "nodebbb", "nodeccc"}
    passes_the_proxy(body, allocator.store.path)


def test_a_third_gpu_user_is_told_all_are_busy(allocator: GpuAllocator) -> None:
    gpu_start(allocator, "ada")
    gpu_start(allocator, "bob")
    with pytest.raises(web.HTTPError, match="All GPUs for 1 whole GPU are busy") as busy:
        gpu_start(allocator, "cy")
    assert busy.value.status_code == 503


def test_the_home_nodes_gpu_is_given_even_when_another_node_is_first_in_order(
    allocator: GpuAllocator,
) -> None:
    _, body = gpu_start(allocator, "ada", state={HOME_NODE_STATE: "nodebbb"})
    assert body["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==nodebbb"]
    assert body["Labels"][GPU_DEVICES_LABEL] == "0@gpu-b"


def test_a_busy_home_node_is_not_replaced_by_another_nodes_gpu(allocator: GpuAllocator) -> None:
    gpu_start(allocator, "ada")  # takes 0@gpu-a
    with pytest.raises(web.HTTPError, match="busy") as busy:
        gpu_start(allocator, "bob", state={HOME_NODE_STATE: "nodeaaa"})
    assert busy.value.status_code == 503
    assert booked_devices(allocator.store.path, "bob") is None  # 0@gpu-b stays free


def test_a_home_on_a_node_without_gpus_is_refused_naming_the_node(
    allocator: GpuAllocator,
) -> None:
    with pytest.raises(web.HTTPError, match="nodeccc \\(where your files are\\) cannot"):
        gpu_start(allocator, "ada", state={HOME_NODE_STATE: "nodeccc"})


def test_the_spawn_page_counts_only_the_gpus_a_user_could_get(allocator: GpuAllocator) -> None:
    def form(state: dict[str, Any], nodes: list[dict[str, Any]] = NODES) -> str:
        LabSwarmGpuSpawner._client = Manager(nodes)
        try:
            config = swarm_gpu_spawner_config(SETTINGS, allocator)
            spawner = LabSwarmGpuSpawner(
                user=_User("ada"), hub=Hub(), frontend_containers=FRONTENDS, **config
            )
            spawner.load_state(state)
            return str(asyncio.run(spawner.gpu_options_form()))
        finally:
            LabSwarmGpuSpawner._client = None

    assert "(2 free now)" in form({})
    assert "(1 free now)" in form({HOME_NODE_STATE: "nodeaaa"})
    assert "(0 free now)" in form({HOME_NODE_STATE: "nodeccc"})
    assert "(1 free now)" in form({}, [node("nodeaaa", "gpu-a", state="down"), *NODES[1:]])
    # A retiring node's GPU is for the homes already there, not for a first spawn.
    assert "(1 free now)" in form({}, GPU_A_RETIRING)
    assert "(1 free now)" in form({HOME_NODE_STATE: "nodeaaa"}, GPU_A_RETIRING)


def test_a_retiring_nodes_gpu_makes_no_new_home_but_serves_the_homes_it_has(
    allocator: GpuAllocator,
) -> None:
    _, ada = gpu_start(allocator, "ada", nodes=GPU_A_RETIRING)
    assert ada["Labels"][GPU_DEVICES_LABEL] == "0@gpu-b"
    # gpu-a's GPU is free, but a first spawn there would make bob's home on gpu-a.
    with pytest.raises(web.HTTPError, match="busy"):
        gpu_start(allocator, "bob", nodes=GPU_A_RETIRING)
    spawner, cy = gpu_start(
        allocator, "cy", state={HOME_NODE_STATE: "nodeaaa"}, nodes=GPU_A_RETIRING
    )
    assert cy["Labels"][GPU_DEVICES_LABEL] == "0@gpu-a"
    assert cy["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==nodeaaa"]
    assert spawner.home_node == "nodeaaa"
    # Not marked down on the admin page: it is up, only closed to new homes.
    assert allocator.store.nodes_down_since() == {}


def test_a_down_nodes_gpu_is_not_given(allocator: GpuAllocator) -> None:
    down = [node("nodeaaa", "gpu-a", state="down"), *NODES[1:]]
    _, body = gpu_start(allocator, "ada", nodes=down)
    assert body["Labels"][GPU_DEVICES_LABEL] == "0@gpu-b"
    with pytest.raises(web.HTTPError, match="busy"):
        gpu_start(allocator, "bob", nodes=down)


def test_a_hostname_two_nodes_share_is_refused_by_name() -> None:
    twins = [node("n1", "gpu-a"), node("n2", "gpu-a")]
    with pytest.raises(NodeNamesError, match="hostname of nodes n1, n2"):
        gpu_node_ids({"gpu-a"}, twins)
    assert gpu_node_ids({"n2", "gone"}, twins) == {"n2": "n2"}


def test_a_restarted_hub_reads_the_bookings_back_from_the_services(
    allocator: GpuAllocator,
) -> None:
    _, body = gpu_start(allocator, "ada")
    service = {"Spec": {"Name": body["Name"], "Labels": body["Labels"]}}
    [found] = observed_services([service], datetime.now(UTC))
    [recorded] = allocator.store.allocations()
    assert found.device_ids == recorded.device_ids == ("0@gpu-a",)
    assert (found.holder, found.since) == (recorded.holder, recorded.since)


@pytest.mark.parametrize("gone", ["down", "left"])
def test_a_gpu_server_whose_node_went_away_is_stopped_and_its_device_released(
    allocator: GpuAllocator, gone: str
) -> None:
    spawner, _ = gpu_start(allocator, "ada")
    client = Manager(NODES)
    client.sent.append(("POST", "/services/create", None, "{}"))  # the service exists
    LabSwarmGpuSpawner._client = client
    try:
        assert asyncio.run(spawner.poll()) is None
        client.node_list = [node("nodeaaa", "gpu-a", state="down")] if gone == "down" else []
        client.node_list += NODES[1:]
        status = asyncio.run(spawner.poll())
        assert status == f"node nodeaaa {'is down' if gone == 'down' else 'has left the swarm'}"
        asyncio.run(spawner.run_post_stop_hook())  # what the hub does when poll says so
    finally:
        LabSwarmGpuSpawner._client = None
    assert booked_devices(allocator.store.path, "ada") is None
    # The admin page's report names the node and when it went (labhub.gpu.api).
    report = asyncio.run(devices_report(allocator.store, INVENTORY, GpuReadings()))
    states = {d["id"]: (d["node"], d["node_down_since"]) for d in report["devices"]}
    assert states["0@gpu-b"] == ("gpu-b", None)
    assert states["0@gpu-a"][0] == "gpu-a" and states["0@gpu-a"][1] is not None
    actions = [entry.action for entry in allocator.store.audit()]
    assert "node-down" in actions
    # Back up: seen at the next spawn, the mark goes.
    gpu_start(allocator, "bob", state={HOME_NODE_STATE: "nodeaaa"})
    assert allocator.store.nodes_down_since() == {}


def _env(value: list[str]) -> Callable[[dict[str, Any]], object]:
    return lambda body: body["TaskTemplate"]["ContainerSpec"].update(Env=value)


def _label(key: str, value: str) -> Callable[[dict[str, Any]], object]:
    return lambda body: body["Labels"].update({key: value})


def _pin(node_id: str) -> Callable[[dict[str, Any]], object]:
    constraints = [f"node.id=={node_id}"]
    return lambda body: body["TaskTemplate"]["Placement"].update(Constraints=constraints)


def _mount_device_list(body: dict[str, Any]) -> None:
    mounts = body["TaskTemplate"]["ContainerSpec"]["Mounts"]
    mounts[0] = {**mounts[0], "Target": "/var/run/nvidia-container-devices/1"}


# Each takes ada's own GPU service (booked 0@gpu-a, pinned to nodeaaa) one step further.
ATTACKS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "all": (_env(["NVIDIA_VISIBLE_DEVICES=all"]), "never all"),
    "none-is-the-driver": (_env(["NVIDIA_VISIBLE_DEVICES=none"]), "never all, none"),
    "uuid": (_env(["NVIDIA_VISIBLE_DEVICES=GPU-1234"]), "never all, none or a UUID"),
    "unset-so-the-images-all": (_env([]), "exactly one NVIDIA_VISIBLE_DEVICES"),
    "twice": (
        _env(["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=all"]),
        "exactly one NVIDIA_VISIBLE_DEVICES",
    ),
    "another-nvidia-variable": (
        _env(["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"]),
        "no other NVIDIA_",
    ),
    "more-than-booked": (_env(["NVIDIA_VISIBLE_DEVICES=0,1"]), "is not the booked"),
    "another-users-device": (
        _label(GPU_DEVICES_LABEL, "0@gpu-b"),
        "the GPU record books 0@gpu-a",
    ),
    "another-users-holder": (_label(GPU_HOLDER_LABEL, "bob"), "not the service's owner"),
    "pinned-to-another-node": (_pin("nodebbb"), "but the service is pinned to nodebbb"),
    "device-list-mount": (_mount_device_list, "would choose GPUs past the allocator"),
    "no-booking-label": (
        lambda body: body["Labels"].pop(GPU_DEVICES_LABEL),
        "needs the labhub.gpu.holder label and labhub.gpu.devices",
    ),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_the_proxy_refuses_a_gpu_service_beyond_the_booking(
    allocator: GpuAllocator, attack: str
) -> None:
    _, body = gpu_start(allocator, "ada")
    passes_the_proxy(body, allocator.store.path)  # the spawner's own body passes
    change, reason = ATTACKS[attack]
    worse = copy.deepcopy(body)
    change(worse)
    with pytest.raises(Refused, match=reason):
        passes_the_proxy(worse, allocator.store.path)


def test_a_cpu_service_cannot_carry_a_booking(allocator: GpuAllocator) -> None:
    _, body = gpu_start(allocator, "cy", profile="cpu")
    body["Labels"][GPU_DEVICES_LABEL] = "0@gpu-a"
    with pytest.raises(Refused, match="GPU labels on a service whose NVIDIA_VISIBLE_DEVICES"):
        passes_the_proxy(body, allocator.store.path)


def test_the_relay_refuses_a_gpu_service_without_a_record_or_once_released(
    allocator: GpuAllocator, tmp_path: Path
) -> None:
    spawner, body = gpu_start(allocator, "ada")
    allowed = check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())
    assert allowed.gpu_claim == GpuClaim("ada", ("0@gpu-a",), "gpu-a", "nodeaaa")
    with pytest.raises(Refused, match="no GPU record"):
        verify_gpu_claim("", str(tmp_path / "no.sock"), allowed)
    asyncio.run(spawner.gpu_release("stopped"))
    with pytest.raises(Refused, match="books nothing"):
        check_gpu_claim(allowed.gpu_claim, booked_devices(allocator.store.path, "ada"), NODES)
    assert isinstance(allowed, Allowed)
