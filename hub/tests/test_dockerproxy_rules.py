"""The Docker socket proxy's rules: what LabSpawner sends passes, anything more is refused.

The create bodies here are not written by hand: `captured_create` runs the real
`LabSpawner.start()` (with and without a GPU allocation) against a recording docker-py
client and keeps the exact request docker-py would have sent to the engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from jupyterhub.objects import Hub, Server
from labhub.contract import (
    CONTAINER_USER,
    OWNER_LABEL,
    USER_LOG_CONFIG,
    container_name_prefix,
    user_network_name,
    volume_prefix,
)
from labhub.dockerpolicy import (
    Allowed,
    FrontendPolicy,
    MetricsPolicy,
    Policy,
    Refused,
    check_frontend_request,
    check_metrics_request,
    check_owner,
    check_request,
    inspect_target,
    user_volume_sizes,
)
from labhub.dockerproxy import (
    BadRequest,
    DiskUsage,
    RequestHead,
    parse_head,
    policy_from_env,
    read_request,
    upstream_request,
)
from labhub.gpu.allocator import load_allocator
from labhub.settings import Settings
from labhub.spawner import LabSpawner, spawner_config

from testsupport.acme_companion import RELOAD_EXEC
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.recording import RecordingAPIClient

pytestmark = pytest.mark.unit
IMAGE = "labhub/workspace:0.1.0"
POLICY = Policy(allowed_images=frozenset({IMAGE}), network="labhub")
# What the spawner names this stack's containers and volumes (labhub.contract).
CONTAINER_PREFIX = container_name_prefix(POLICY.network)
VOLUME_PREFIX = volume_prefix(POLICY.network)
CREATE = "/v1.41/containers/create"


# --- What LabSpawner really sends -----------------------------------------------------
class RecordingClient(RecordingAPIClient):
    """Answers like an engine that has the image and no container yet."""

    def answer(self, path: str) -> tuple[int, Any]:
        created = self.sent_to("/containers/create")
        if path.endswith("/containers/json"):
            return 200, []
        if path.endswith("/containers/create"):
            return 201, {"Id": "abc123", "Warnings": []}
        if path.endswith("/start"):
            return 204, {}
        if "/images/" in path:
            return 200, {"Config": {"Cmd": ["start-notebook.py"]}}
        if "/containers/" in path and not created:
            return 404, {"message": "No such container"}
        if "/containers/" in path:
            networks = {"labhub": {"IPAddress": "10.0.0.5"}}
            return 200, {"Id": "abc123", "NetworkSettings": {"Networks": networks}}
        return 200, {}


class _User:
    name = "alice"
    admin = False
    groups: tuple[object, ...] = ()
    url = "/user/alice/"


class _Group:
    def __init__(self, name: str) -> None:
        self.name = name


def captured_create(
    tmp_path: Path,
    gpu: bool,
    datasets: str = "",
    groups: tuple[str, ...] = (),
    server_name: str = "",
    **traits: Any,
) -> tuple[str, bytes]:
    """(target, body) of the create request LabSpawner.start() makes through docker-py,
    for a user in ``groups`` with DATASETS=``datasets``, for the server ``server_name``
    ("" the default one), with LabSpawner ``traits`` on top of the settings'."""
    env = {
        **MINIMAL_ENV,
        "GPU_INVENTORY": "none",
        "GPU_DB": str(tmp_path / "gpu.sqlite"),
        "DATASETS": datasets,
    }
    if gpu:
        inventory = tmp_path / "gpus.json"
        inventory.write_text('{"devices": [{"id": "0", "model": "Test", "memory_mib": 1024}]}')
        env["GPU_INVENTORY"] = str(inventory)
    settings = Settings.from_env(env)
    config = {**spawner_config(settings, load_allocator(settings)), **traits}
    client = RecordingClient()
    original = LabSpawner._client
    LabSpawner._client = client
    try:
        user = _User()
        user.groups = tuple(_Group(name) for name in groups)
        # A named server's name comes from its database row (Spawner.name).
        named = SimpleNamespace(name=server_name, server=None) if server_name else None
        spawner = LabSpawner(user=user, hub=Hub(), orm_spawner=named, ready_poll_budget=0, **config)
        spawner.server = Server(base_url=f"/user/alice/{server_name}")
        if gpu:
            spawner.user_options = {"profile": "gpu-1"}
        asyncio.run(spawner.start())
    finally:
        LabSpawner._client = original
    [(_, path, params, data)] = [c for c in client.sent if c[1].endswith("/containers/create")]
    assert params is not None and data is not None
    return f"{path}?name={params['name']}", data.encode()


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes]]:
    """The create request of a CPU spawn and of a GPU spawn (one device)."""
    return {
        spawn: captured_create(tmp_path_factory.mktemp(spawn), spawn == "gpu")
        for spawn in ("cpu", "gpu")
    }


@pytest.mark.parametrize("spawn", ["cpu", "gpu"])
def test_what_labspawner_sends_passes_and_is_forwarded_as_checked(
    captured: dict[str, tuple[str, bytes]], spawn: str
) -> None:
    target, body = captured[spawn]
    allowed = check_request(POLICY, "POST", target, body)
    assert allowed.target == f"{CREATE}?name={container_name_prefix('labhub')}alice"
    assert json.loads(allowed.body) == json.loads(body)
    spec = json.loads(body)
    assert spec["User"] == CONTAINER_USER and spec["Labels"][OWNER_LABEL] == "alice"


def test_a_named_server_has_its_own_container_on_the_users_one_home(tmp_path: Path) -> None:
    """alice's `train` server: a container name of its own that the proxy accepts, the
    same home volume as her default server, a read-only root and the sized /tmp."""
    target, body = captured_create(tmp_path, gpu=False, server_name="train")
    allowed = check_request(POLICY, "POST", target, body)
    assert allowed.target == f"{CREATE}?name={CONTAINER_PREFIX}alice--train"
    host = json.loads(body)["HostConfig"]
    assert host["Binds"] == [f"{VOLUME_PREFIX}alice:/home/jovyan:rw"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": f"rw,exec,nosuid,nodev,size={1024**3},mode=1777"}


def test_tmp_is_cut_to_half_a_smaller_memory_limit(tmp_path: Path) -> None:
    """/tmp's files are memory: the spawner keeps /tmp to half the memory limit the
    container really gets (a profile's too), so a full /tmp is ENOSPC, not an OOM kill."""
    target, body = captured_create(tmp_path, gpu=False)
    host = json.loads(body)["HostConfig"]
    assert f"size={1024**3}," in host["Tmpfs"]["/tmp"]  # USER_TMP_SIZE's default, 1G
    check_request(POLICY, "POST", target, body)
    (tmp_path / "small").mkdir()
    small = captured_create(tmp_path / "small", gpu=False, mem_limit="512M")
    small_host = json.loads(small[1])["HostConfig"]
    assert small_host["Memory"] == 512 * 1024**2
    assert f"size={256 * 1024**2}," in small_host["Tmpfs"]["/tmp"]
    check_request(POLICY, "POST", *small)


def test_the_gpu_spawn_sends_one_explicit_device_request(
    captured: dict[str, tuple[str, bytes]],
) -> None:
    assert json.loads(captured["cpu"][1])["HostConfig"]["DeviceRequests"] == []
    [request] = json.loads(captured["gpu"][1])["HostConfig"]["DeviceRequests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == ["0"]


# --- Datasets: the declared read-only binds, for members of their groups only ----------
DATASETS = json.dumps(
    [
        {"name": "mnist", "source": "/srv/datasets/mnist"},
        {"name": "scans", "source": "lab-scans", "groups": ["radiology"]},
    ]
)
DATASET_POLICY = policy_from_env(
    {"ALLOWED_IMAGES": IMAGE, "DOCKER_NETWORK": "labhub", "DATASETS": DATASETS}
)


@pytest.mark.parametrize(
    ("groups", "mounted"),
    [
        ((), ["/srv/datasets/mnist:/datasets/mnist:ro"]),
        (
            ("radiology", "other"),
            ["/srv/datasets/mnist:/datasets/mnist:ro", "lab-scans:/datasets/scans:ro"],
        ),
    ],
    ids=["outside-the-group", "in-the-group"],
)
def test_datasets_are_mounted_read_only_for_their_groups_and_the_proxy_allows_them(
    tmp_path: Path, groups: tuple[str, ...], mounted: list[str]
) -> None:
    target, body = captured_create(tmp_path, gpu=False, datasets=DATASETS, groups=groups)
    binds = json.loads(body)["HostConfig"]["Binds"]
    assert sorted(b for b in binds if ":/datasets/" in b) == mounted
    assert json.loads(DATASET_POLICY("POST", target, body).body) == json.loads(body)
    # Without DATASETS the proxy allows none of these mounts.
    with pytest.raises(Refused, match="nor a declared dataset"):
        check_request(POLICY, "POST", target, body)


@pytest.mark.parametrize(
    "bind",
    [
        "/srv/datasets/mnist:/datasets/mnist:rw",
        "/srv/datasets/mnist:/datasets/mnist",
        "/srv/datasets/mnist:/home/jovyan/mnist:ro",
        "/srv/datasets:/datasets/mnist:ro",
        "/srv/datasets/mnist/..:/datasets/mnist:ro",
        "lab-scans:/datasets/scans:rw",
        "lab-scans:/datasets/scans",
        "/:/datasets/mnist:ro",
        "/var/run/docker.sock:/datasets/mnist:ro",
    ],
)
def test_a_dataset_bind_changed_in_any_part_is_refused(tmp_path: Path, bind: str) -> None:
    target, body = captured_create(tmp_path, gpu=False, datasets=DATASETS, groups=("radiology",))
    spec = json.loads(body)
    spec["HostConfig"]["Binds"].append(bind)
    with pytest.raises(Refused, match="nor a declared dataset"):
        DATASET_POLICY("POST", target, json.dumps(spec).encode())


def _host(change: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], object]:
    return lambda spec: change(spec["HostConfig"])


# Each mutation takes LabSpawner's own (GPU) body one step beyond what it sends.
MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "memory-over-max": (_host(lambda h: h.update(Memory=POLICY.max_memory + 1)), "Memory="),
    "memory-zero": (_host(lambda h: h.update(Memory=0)), "Memory="),
    "memory-missing": (_host(lambda h: h.pop("Memory")), "memory is required"),
    "memory-bool": (_host(lambda h: h.update(Memory=True)), "Memory="),
    "memory-swap-unlimited": (_host(lambda h: h.update(MemorySwap=-1)), "MemorySwap"),
    "memory-swap-double": (_host(lambda h: h.update(MemorySwap=h["Memory"] * 2)), "MemorySwap"),
    "cpu-quota-over-max": (_host(lambda h: h.update(CpuQuota=65 * h["CpuPeriod"])), "CpuQuota"),
    "cpu-period-zero": (_host(lambda h: h.update(CpuPeriod=0)), "CpuPeriod"),
    "cpu-missing": (_host(lambda h: h.pop("CpuQuota")), "CPU limit"),
    "cpu-both": (_host(lambda h: h.update(NanoCpus=10**9)), "not both"),
    "pids-unlimited": (_host(lambda h: h.update(PidsLimit=-1)), "PidsLimit"),
    "pids-over-max": (_host(lambda h: h.update(PidsLimit=POLICY.max_pids + 1)), "PidsLimit"),
    "shm-over-max": (_host(lambda h: h.update(ShmSize=POLICY.max_shm + 1)), "ShmSize"),
    "gpu-count-all": (
        _host(lambda h: h["DeviceRequests"][0].update(Count=-1, DeviceIDs=None)),
        "Count",
    ),
    "gpu-no-ids": (_host(lambda h: h["DeviceRequests"][0].update(DeviceIDs=[])), "DeviceIDs"),
    "gpu-other-driver": (_host(lambda h: h["DeviceRequests"][0].update(Driver="cdi")), "driver"),
    "gpu-capabilities": (
        _host(lambda h: h["DeviceRequests"][0].update(Capabilities=[["gpu", "display"]])),
        "Capabilities",
    ),
    "gpu-options": (
        _host(lambda h: h["DeviceRequests"][0].update(Options={"x": "y"})),
        "options",
    ),
    "gpu-two-requests": (
        _host(lambda h: h["DeviceRequests"].append(h["DeviceRequests"][0])),
        "at most one",
    ),
    "network-host": (_host(lambda h: h.update(NetworkMode="host")), "NetworkMode"),
    "network-container": (_host(lambda h: h.update(NetworkMode="container:hub")), "NetworkMode"),
    "privileged": (_host(lambda h: h.update(Privileged=True)), "Privileged"),
    "privileged-lowercase": (_host(lambda h: h.update(privileged=True)), "privileged"),
    "cap-add": (_host(lambda h: h.update(CapAdd=["SYS_ADMIN"])), "CapAdd"),
    "cap-drop-none": (_host(lambda h: h.update(CapDrop=[])), "CapDrop"),
    "security-seccomp": (
        _host(lambda h: h["SecurityOpt"].append("seccomp=unconfined")),
        "SecurityOpt",
    ),
    "log-config": (_host(lambda h: h.update(LogConfig={"Type": "none"})), "LogConfig"),
    "ulimits": (_host(lambda h: h.update(Ulimits=[{"Name": "nofile", "Hard": 9}])), "Ulimits"),
    "oom-score": (_host(lambda h: h.update(OomScoreAdj=-1000)), "OomScoreAdj"),
    "pid-host": (_host(lambda h: h.update(PidMode="host")), "PidMode"),
    "volumes-from": (_host(lambda h: h.update(VolumesFrom=["hub"])), "VolumesFrom"),
    "bind-root": (_host(lambda h: h.update(Binds=["/:/host"])), "bind"),
    "bind-socket": (
        _host(lambda h: h.update(Binds=["/var/run/docker.sock:/var/run/docker.sock"])),
        "bind",
    ),
    "bind-propagation": (
        _host(lambda h: h.update(Binds=[f"{VOLUME_PREFIX}alice:/home/jovyan:rshared"])),
        "bind",
    ),
    "bind-other-volume": (_host(lambda h: h.update(Binds=["hub-data:/srv:rw"])), "bind"),
    "mounts": (
        _host(lambda h: h.update(Mounts=[{"Type": "bind", "Source": "/", "Target": "/h"}])),
        "mounts",
    ),
    "links": (_host(lambda h: h.update(Links=["hub:hub"])), "links"),
    "devices": (_host(lambda h: h.update(Devices=[{"PathOnHost": "/dev/sda"}])), "Devices"),
    "runtime": (_host(lambda h: h.update(Runtime="nvidia")), "Runtime"),
    "init": (_host(lambda h: h.update(Init=True)), "Init"),
    "networking-config": (
        lambda s: s.update(NetworkingConfig={"EndpointsConfig": {"labhub": {}}}),
        "NetworkingConfig",
    ),
    "top-level-privileged": (lambda s: s.update(Privileged=True), "Privileged"),
    "top-level-healthcheck": (lambda s: s.update(Healthcheck={"Test": ["NONE"]}), "Healthcheck"),
    "user-root": (lambda s: s.update(User="0:0"), "User="),
    "user-name": (lambda s: s.update(User="root"), "User="),
    "image-other": (lambda s: s.update(Image="labhub/hub:0.1.0"), "image"),
    "no-owner-label": (lambda s: s["Labels"].pop(OWNER_LABEL), "label"),
    "foreign-label": (lambda s: s["Labels"].update({"com.docker.compose.project": "x"}), "label"),
    "env-not-string": (lambda s: s["Env"].append(5), "Env"),
    "tty": (lambda s: s.update(Tty=True), "Tty"),
    "network-disabled-odd": (lambda s: s.update(NetworkDisabled="no"), "NetworkDisabled"),
    "exposed-udp": (lambda s: s.update(ExposedPorts={"53/udp": {}}), "ExposedPorts"),
    "no-host-config": (lambda s: s.pop("HostConfig"), "hostconfig is required"),
    # Every server of alice's (named ones too) mounts alice's home, nobody else's.
    "bind-another-users-home": (
        _host(lambda h: h.update(Binds=[f"{VOLUME_PREFIX}bob:/home/jovyan:rw"])),
        "mounts only",
    ),
    "bind-another-users-home-elsewhere": (
        _host(lambda h: h["Binds"].append(f"{VOLUME_PREFIX}bob:/mnt:ro")),
        "mounts only",
    ),
    # The writable layer has no bound on this engine: a read-only root, a sized /tmp.
    "root-writable": (_host(lambda h: h.update(ReadonlyRootfs=False)), "ReadonlyRootfs"),
    "root-writable-unset": (_host(lambda h: h.pop("ReadonlyRootfs")), "ReadonlyRootfs"),
    "tmp-unsized": (_host(lambda h: h.update(Tmpfs={"/tmp": "rw,mode=1777"})), "size="),
    "tmp-over-memory": (
        _host(lambda h: h.update(Tmpfs={"/tmp": f"size={h['Memory'] + 1}"})),
        "the size must be",
    ),
    "tmp-two-sizes": (
        _host(lambda h: h.update(Tmpfs={"/tmp": f"size=1024,size={h['Memory'] * 9}"})),
        "exactly one size",
    ),
    "tmp-size-with-unit": (_host(lambda h: h.update(Tmpfs={"/tmp": "size=900g"})), "size="),
    "tmp-odd-option": (
        _host(lambda h: h.update(Tmpfs={"/tmp": "size=1024,uid=0,mode=4777"})),
        "only",
    ),
    "tmp-elsewhere-too": (
        _host(lambda h: h["Tmpfs"].update({"/var/tmp": "size=1024"})),
        "exactly one",
    ),
    "tmp-missing": (_host(lambda h: h.pop("Tmpfs")), "Tmpfs"),
    # The container's log is on the host's disk too, and the container writes it.
    "log-unrotated": (
        _host(lambda h: h.update(LogConfig={"Type": "json-file", "Config": {}})),
        "LogConfig",
    ),
    "log-bigger": (
        _host(lambda h: h["LogConfig"]["Config"].update({"max-size": "10g"})),
        "LogConfig",
    ),
    "log-missing": (_host(lambda h: h.pop("LogConfig")), "LogConfig is required"),
}


@pytest.mark.parametrize(
    ("spawn", "mutation"),
    [
        (spawn, mutation)
        for spawn in ("cpu", "gpu")
        for mutation in sorted(MUTATIONS)
        # The device-request mutations need the GPU spawn's device request.
        if spawn == "gpu" or not mutation.startswith("gpu-")
    ],
)
def test_each_field_beyond_what_labspawner_sends_is_refused(
    captured: dict[str, tuple[str, bytes]], spawn: str, mutation: str
) -> None:
    target, body = captured[spawn]
    spec = json.loads(body)
    change, reason = MUTATIONS[mutation]
    change(spec)
    with pytest.raises(Refused, match=reason):
        check_request(POLICY, "POST", target, json.dumps(spec).encode())


@given(key=st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,20}", fullmatch=True))
def test_any_host_config_key_labspawner_does_not_send_is_refused_by_name(key: str) -> None:
    spec = {
        "Image": IMAGE,
        "User": CONTAINER_USER,
        "Labels": {OWNER_LABEL: "alice"},
        "HostConfig": {
            "Memory": 1 << 30,
            "PidsLimit": 64,
            "NanoCpus": 10**9,
            "NetworkMode": "labhub",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": "size=1024"},
        },
    }
    sent = {"memory", "memoryswap", "shmsize", "networkmode", "capdrop", "securityopt"}
    sent |= {"binds", "links", "cpuquota", "cpuperiod", "nanocpus", "pidslimit"}
    sent |= {"autoremove", "init", "mounts", "devicerequests", "readonlyrootfs", "tmpfs"}
    sent |= {"logconfig"}
    assume(key.casefold() not in sent)
    spec["HostConfig"][key] = None
    with pytest.raises(Refused, match=f"HostConfig: {key} not allowed"):
        check_request(
            POLICY, "POST", CREATE + f"?name={CONTAINER_PREFIX}a", json.dumps(spec).encode()
        )


# --- Routes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "target", "forwarded", "owned"),
    [
        ("GET", "/v1.41/_ping", "/v1.41/_ping", None),
        ("GET", "/version", "/version", None),
        (
            "GET",
            "/v1.41/containers/json?limit=-1&all=1&size=0&trunc_cmd=0",
            "/v1.41/containers/json?limit=-1&all=1&size=0&trunc_cmd=0",
            None,
        ),
        (
            "GET",
            "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A+%5B%22a%22%5D%7D",
            "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A+%5B%22a%22%5D%7D",
            None,
        ),
        ("GET", "/v1.41/containers/abc/json", "/v1.41/containers/abc/json", "abc"),
        ("GET", "/v1.41/images/labhub/workspace:0.1.0/json", None, None),
        ("POST", "/v1.41/containers/abc123/start", None, "abc123"),
        ("POST", "/v1.41/containers/abc123/stop?t=10", None, "abc123"),
        (
            "DELETE",
            "/v1.41/containers/abc123?v=False&link=False&force=False",
            None,
            "abc123",
        ),
        # The names "json" and "create" are containers too on these routes: owner-checked.
        ("DELETE", "/v1.41/containers/json", None, "json"),
        ("DELETE", "/containers/create", None, "create"),
        ("GET", "/v1.41/containers/create/json", None, "create"),
        ("POST", "/v1.41/containers/json/kill?signal=SIGKILL", None, "json"),
        ("GET", f"/v1.41/volumes/{VOLUME_PREFIX}alice", None, None),
        ("DELETE", f"/v1.41/volumes/{VOLUME_PREFIX}alice", None, None),
    ],
)
def test_what_the_hub_needs_passes_and_single_containers_are_owner_checked(
    method: str, target: str, forwarded: str | None, owned: str | None
) -> None:
    allowed = check_request(POLICY, method, target, b"")
    assert allowed.target == (forwarded or target)
    assert allowed.owned_container == owned
    assert allowed.body == b""


@pytest.mark.parametrize(
    ("method", "target", "body", "reason"),
    [
        ("POST", "/v1.41/containers/abc/exec", b"{}", "not needed"),
        ("POST", "/v1.41/exec/abc/start", b"{}", "not needed"),
        ("POST", "/v1.41/images/create?fromImage=alpine", b"", "not needed"),
        ("POST", "/v1.41/build", b"", "not needed"),
        ("GET", "/v1.41/containers/abc/archive?path=/", b"", "not need"),
        ("POST", "/v1.41/containers/abc/attach", b"", "not needed"),
        ("GET", "/v1.41/containers/abc/logs", b"", "not needed"),
        ("HEAD", "/v1.41/_ping", b"", "not needed"),
        ("GET", "/v1.41/images/debian:trixie-slim/json", b"", "not an allowed"),
        ("DELETE", "/v1.41/volumes/labhub-hub-data", b"", "not a user volume"),
        ("POST", "/v1.41/volumes/create", b'{"Name": "other"}', "not a user volume"),
        # Route confusion: escapes, dot segments and empty segments the engine would clean.
        ("POST", "/v1.41/containers/abc%2Fexec", b"", "no %-escapes"),
        ("GET", "/v1.41/containers/../exec/abc/json", b"", "dot segments"),
        ("GET", "/v1.41/containers/./abc/json", b"", "dot segments"),
        ("GET", "/v1.41//containers/json", b"", "//"),
        ("POST", "/v1.41/containers/create/..", b"", "dot segments"),
        # Queries that change what a checked route does.
        ("DELETE", "/v1.41/containers/abc?link=true", b"", "link="),
        ("DELETE", "/v1.41/containers/abc?force=1&force=0", b"", "twice"),
        ("POST", "/v1.41/containers/abc/start?detachKeys=ctrl-x", b"", "detachKeys"),
        ("GET", "/v1.41/containers/json?filters=notjson", b"", "filters"),
        ("DELETE", f"/v1.41/volumes/{VOLUME_PREFIX}a?force=1", b"", "force"),
        ("POST", "/v1.41/containers/create?name=postgres", b"{}", "must start with"),
        ("POST", "/v1.41/containers/create", b"{}", "must start with"),
        ("POST", "/v1.20/containers/abc/start", b'{"Privileged": true}', "no request body"),
        ("GET", "/v1.41/_ping", b"x", "no request body"),
    ],
)
def test_everything_else_is_refused(method: str, target: str, body: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_request(POLICY, method, target, body)


def test_only_labelled_containers_may_be_touched() -> None:
    check_owner(
        "labhub-user-alice", 200, json.dumps({"Config": {"Labels": {OWNER_LABEL: "a"}}}).encode()
    )
    check_owner("gone", 404, b'{"message": "No such container: gone"}')
    for labels in ({}, None, {OWNER_LABEL: ""}, {"com.example.db": "1"}):
        body = json.dumps({"Config": {"Labels": labels}}).encode()
        with pytest.raises(Refused, match="not a labhub user container"):
            check_owner("postgres", 200, body)
    with pytest.raises(Refused, match="cannot read"):
        check_owner("odd", 200, b"[]")


def test_the_exporter_reads_its_own_stacks_user_containers_only() -> None:
    """A user container of another stack on the same engine carries the label too."""
    allowed = check_metrics_request(METRICS, "GET", "/containers/x/stats?stream=0", b"")
    assert allowed.owner_network == "labhub"

    def inspected(*networks: str) -> bytes:
        return json.dumps(
            {
                "Config": {"Labels": {OWNER_LABEL: "ada"}},
                "NetworkSettings": {"Networks": {name: {} for name in networks}},
            }
        ).encode()

    check_owner("x", 200, inspected("labhub"), network=allowed.owner_network)
    for networks in ((), ("lab2",), ("bridge",)):
        with pytest.raises(Refused, match="not a user container of this stack"):
            check_owner("x", 200, inspected(*networks), network=allowed.owner_network)
    # The hub's own checks do not ask for a network.
    assert check_request(POLICY, "POST", "/containers/x/stop", b"").owner_network == ""


def test_the_owner_check_inspects_with_the_requests_api_version() -> None:
    allowed = check_request(POLICY, "DELETE", "/v1.41/containers/json?force=1", b"")
    assert inspect_target(allowed) == "/v1.41/containers/json/json"
    assert inspect_target(Allowed("/containers/x/stop", "", "x")) == "/containers/x/json"


# --- Bodies Docker reads differently from Python -------------------------------------
def good_spec() -> dict[str, Any]:
    return {
        "Image": IMAGE,
        "User": CONTAINER_USER,
        "Labels": {OWNER_LABEL: "alice"},
        "HostConfig": {
            "Memory": 4 << 30,
            "PidsLimit": 1024,
            "NanoCpus": 2 * 10**9,
            "NetworkMode": "labhub",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "Binds": [f"{VOLUME_PREFIX}alice:/home/jovyan:rw"],
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": "rw,exec,nosuid,nodev,size=1073741824,mode=1777"},
            "LogConfig": USER_LOG_CONFIG,
        },
    }


GOOD = json.dumps(good_spec())[1:-1]  # the members of a good body, to splice into bad ones


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # Duplicate keys: Python keeps the last, Go merges both into one struct.
        ('{"HostConfig": {"Privileged": true}, ' + GOOD + "}", "given twice"),
        ("{" + GOOD + ', "hostConfig": {"Privileged": true}}', "given twice"),
        # Go folds the long s (U+017F) and the Kelvin sign onto s and k.
        ("{" + GOOD.replace('"Binds"', '"Bind\\u017f"') + "}", "non-ASCII"),
        ("{" + GOOD + ', "x": NaN}', "not JSON"),
        ("[1]", "not a JSON object"),
        ("not json", "not JSON"),
    ],
)
def test_create_bodies_that_docker_reads_differently_are_refused(body: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_request(POLICY, "POST", CREATE + f"?name={CONTAINER_PREFIX}alice", body.encode())


def test_a_lowercase_key_is_read_as_docker_reads_it() -> None:
    spec = good_spec()
    spec["hostconfig"] = spec.pop("HostConfig")
    spec["hostconfig"]["memory"] = spec["hostconfig"].pop("Memory")
    allowed = check_request(
        POLICY, "POST", CREATE + f"?name={CONTAINER_PREFIX}a", json.dumps(spec).encode()
    )
    assert json.loads(allowed.body) == spec
    spec["hostconfig"]["memory"] = POLICY.max_memory + 1
    with pytest.raises(Refused, match="Memory="):
        check_request(
            POLICY, "POST", CREATE + f"?name={CONTAINER_PREFIX}a", json.dumps(spec).encode()
        )


def test_a_volume_bound_to_a_host_path_is_refused() -> None:
    volume = {"Name": f"{VOLUME_PREFIX}evil", "Driver": "local"}
    bind = {**volume, "DriverOpts": {"type": "none", "o": "bind", "device": "/"}}
    for body, reason in (
        (bind, "driver options"),
        ({**volume, "Driver": "nfs"}, "drivers"),
        ({**volume, "Scope": "global"}, "Scope"),
    ):
        with pytest.raises(Refused, match=reason):
            check_request(POLICY, "POST", "/v1.41/volumes/create", json.dumps(body).encode())
    allowed = check_request(POLICY, "POST", "/v1.41/volumes/create", json.dumps(volume).encode())
    assert json.loads(allowed.body) == volume


# --- Framing --------------------------------------------------------------------------
PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\n"


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (PING + b"X: a\n\r\n\r\n", "bare CR or LF"),
        (PING + b"X: a\r\r\n\r\n", "bare CR or LF"),
        (b"GET /_ping HTTP/1.1\nHost: docker\r\n\r\n", "bare CR or LF"),
        (PING + b"X: a\r\n b\r\n\r\n", "obs-fold"),
        (PING + b"X: a\r\n\tb\r\n\r\n", "obs-fold"),
        (PING + b"Content-Length: +5\r\n\r\n", "plain number"),
        (PING + b"Content-Length: 5_0\r\n\r\n", "plain number"),
        (PING + b"Content-Length: -1\r\n\r\n", "plain number"),
        (PING + b"Content-Length: 5, 5\r\n\r\n", "plain number"),
        (PING + b"Content-Length: \xd9\xa5\r\n\r\n", "ASCII"),
        (PING + b"Content-Length: 999999999\r\n\r\n", "plain number"),
        (PING + b"Content-Length: 2000000\r\n\r\n", "larger than"),
        (PING + b"Content-Length: 0\r\ncontent-length: 0\r\n\r\n", "more than once"),
        (PING + b"Transfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
        (PING + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
        (PING + b"Content-Length : 5\r\n\r\n", "not a token"),
        (PING + b"X(Y): 5\r\n\r\n", "not a token"),
        (PING + b": 5\r\n\r\n", "not a token"),
        (PING + b"NoColon\r\n\r\n", "not a token"),
        (PING + b"X: a\x00b\r\n\r\n", "control characters"),
        (PING + b"X: a\x7fb\r\n\r\n", "control characters"),
        (b"GET  /_ping HTTP/1.1\r\n\r\n", "request line"),
        (b"GET http://docker/_ping HTTP/1.1\r\n\r\n", "request line"),
        (b"GET /_ping HTTP/1.0\r\n\r\n", "request line"),
        (b"get /_ping HTTP/1.1\r\n\r\n", "request line"),
        (b"GET /_p ing HTTP/1.1\r\n\r\n", "request line"),
        (PING + b"X: " + b"a" * 20_000 + b"\r\n\r\n", "longer than"),
        (PING + b"X: a\r\n" * 70 + b"\r\n", "header lines"),
        (PING, "end with CRLF CRLF"),
    ],
)
def test_heads_the_engine_could_read_differently_are_bad_requests(head: bytes, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_head(head)


def test_a_plain_head_is_read() -> None:
    head = b"POST /v1.41/containers/x/stop?t=5 HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n"
    head += b"User-Agent: docker-sdk-python/7.2.0\r\nX-Empty:\r\n\r\n"
    assert parse_head(head) == RequestHead("POST", "/v1.41/containers/x/stop?t=5", 0)


@given(st.binary(min_size=1, max_size=40))
def test_no_head_with_a_bare_lf_is_ever_accepted(noise: bytes) -> None:
    head = PING + b"X: " + noise + b"\n" + noise + b"\r\n\r\n"
    with pytest.raises(BadRequest):
        parse_head(head)


def test_the_engine_gets_a_request_built_from_the_checked_parts_only() -> None:
    allowed = Allowed("/v1.41/containers/create?name=labhub-user-a", "/v1.41", None, b'{"a":1}')
    assert upstream_request("POST", allowed) == (
        b"POST /v1.41/containers/create?name=labhub-user-a HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n"
        b'{"a":1}'
    )
    assert upstream_request("GET", Allowed("/_ping")) == (
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
    )
    assert b"Content-Length: 0\r\n" in upstream_request("POST", Allowed("/containers/a/stop"))


def test_the_forwarded_body_is_re_serialised_not_the_clients_bytes() -> None:
    spaced = json.dumps(good_spec(), indent=4).encode()
    allowed = check_request(POLICY, "POST", CREATE + f"?name={CONTAINER_PREFIX}a", spaced)
    assert allowed.body != spaced and json.loads(allowed.body) == good_spec()


# --- The nginx-proxy front's read-only endpoint ---------------------------------------
FRONT = FrontendPolicy(nginx_container="labhub-nginx-proxy-1")


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", "/v1.41/_ping", b""),
        ("GET", "/v1.41/version", b""),
        ("GET", "/info", b""),
        ("GET", "/v1.41/containers/json?all=1", b""),
        ("GET", "/v1.41/containers/abc123/json", b""),
        ("GET", "/v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D", b""),
        ("POST", "/containers/labhub-nginx-proxy-1/kill?signal=SIGHUP", b""),
        ("POST", "/containers/labhub-nginx-proxy-1/exec", json.dumps(RELOAD_EXEC).encode()),
        ("POST", "/exec/" + "a" * 64 + "/start", b'{"Detach": false, "Tty": false}'),
    ],
)
def test_the_front_reads_metadata_and_reloads_nginx(method: str, target: str, body: bytes) -> None:
    check_frontend_request(FRONT, method, target, body)


@pytest.mark.parametrize(
    ("method", "target", "body", "reason"),
    [
        ("POST", "/v1.41/containers/create", b"{}", "not needed"),
        ("POST", "/containers/labhub-hub-1/kill?signal=SIGHUP", b"", "not needed"),
        ("POST", "/containers/labhub-nginx-proxy-1/kill?signal=SIGKILL", b"", "signal"),
        ("POST", "/containers/labhub-nginx-proxy-1/stop", b"", "not needed"),
        ("DELETE", "/containers/labhub-nginx-proxy-1", b"", "not needed"),
        ("POST", "/containers/labhub-hub-1/exec", json.dumps(RELOAD_EXEC).encode(), "not needed"),
        (
            "POST",
            "/containers/labhub-nginx-proxy-1/exec",
            json.dumps({**RELOAD_EXEC, "Cmd": ["sh", "-c", "cat /etc/shadow"]}).encode(),
            "only acme-companion",
        ),
        (
            "POST",
            "/containers/labhub-nginx-proxy-1/exec",
            json.dumps({**RELOAD_EXEC, "Privileged": True}).encode(),
            "only acme-companion",
        ),
        ("POST", "/exec/" + "a" * 64 + "/start", b'{"Detach": true}', "exec start"),
        ("GET", "/v1.41/containers/abc/logs", b"", "not needed"),
        ("GET", "/v1.41/volumes", b"", "not needed"),
        ("GET", "/v1.41/events?filters=notjson", b"", "filters"),
        ("GET", "/v1.41/containers/json?all=1&all=0", b"", "twice"),
    ],
)
def test_the_front_can_do_nothing_else(method: str, target: str, body: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_frontend_request(FRONT, method, target, body)


# --- The container-metrics exporter's read-only endpoint -----------------------------
METRICS = MetricsPolicy(network="labhub")
USER_LIST = "/v1.41/containers/json?" + urlencode(
    {"filters": json.dumps({"label": [OWNER_LABEL], "network": ["labhub"]})}
)


@pytest.mark.parametrize(
    ("target", "owned"),
    [
        ("/v1.41/_ping", None),
        ("/v1.41/version", None),
        (USER_LIST, None),
        ("/v1.41/containers/abc123/stats?stream=false&one-shot=true", "abc123"),
        ("/containers/abc123/stats?stream=0", "abc123"),
    ],
)
def test_the_exporter_lists_user_containers_and_reads_their_stats(
    target: str, owned: str | None
) -> None:
    """A stats read names its container, so the relay checks the owner label first."""
    allowed = check_metrics_request(METRICS, "GET", target, b"")
    assert allowed.owned_container == owned


def test_the_exporters_list_is_rebuilt_from_the_checked_filters() -> None:
    spaced = "/containers/json?" + urlencode(
        {"filters": '{"label": ["labhub.user"],  "network": ["labhub"]}'}
    )
    allowed = check_metrics_request(METRICS, "GET", spaced, b"")
    assert allowed.target == USER_LIST.removeprefix("/v1.41")


def _user_list(**filters: list[str]) -> str:
    return "/containers/json?" + urlencode({"filters": json.dumps(filters)})


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        ("GET", "/v1.41/containers/json", "user containers only"),
        ("GET", "/v1.41/containers/json?all=1", "user containers only"),
        ("GET", USER_LIST + "&all=1", "user containers only"),
        ("GET", _user_list(network=["labhub"]), "user containers only"),
        ("GET", _user_list(label=[OWNER_LABEL], network=["other"]), "user containers only"),
        ("GET", _user_list(label=[OWNER_LABEL]), "user containers only"),
        ("GET", "/containers/abc123/stats", "stream=false"),
        ("GET", "/containers/abc123/stats?stream=true", "stream=false"),
        ("GET", "/containers/abc123/stats?stream=0&size=1", "not needed here"),
        ("GET", "/containers/abc123/json", "not needed by the metrics exporter"),
        ("GET", "/containers/abc123/logs?stdout=1", "not needed by the metrics exporter"),
        ("GET", "/containers/abc123/top", "not needed by the metrics exporter"),
        ("GET", "/containers/abc123/archive?path=%2Fetc", "not needed by the metrics exporter"),
        ("GET", "/v1.41/info", "not needed by the metrics exporter"),
        ("GET", "/v1.41/events", "not needed by the metrics exporter"),
        ("GET", "/v1.41/volumes", "not needed by the metrics exporter"),
        ("POST", "/containers/abc123/stop", "only reads"),
        ("POST", "/containers/abc123/exec", "only reads"),
        ("POST", "/v1.41/containers/create", "only reads"),
        ("DELETE", "/containers/abc123", "only reads"),
    ],
)
def test_the_exporter_can_read_nothing_else(method: str, target: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_metrics_request(METRICS, method, target, b"")


# Swarm mode: the same reads through each node's proxy (PROXY_POLICY=node-metrics).
NODE_METRICS = MetricsPolicy(network="labhub", swarm=True)


def _task_list(name: str) -> str:
    """A list of task containers named by the engine's regular expression `name`."""
    return _user_list(label=[OWNER_LABEL, "com.docker.swarm.service.name"], name=[name])


TASK_LIST = _task_list(r"^/labhub\-user\-")


def test_a_node_proxy_lists_the_stacks_task_containers_and_owner_checks_their_stats() -> None:
    assert check_metrics_request(NODE_METRICS, "GET", TASK_LIST, b"").target == TASK_LIST
    stats = check_metrics_request(NODE_METRICS, "GET", "/containers/c1/stats?stream=0", b"")
    owned = (stats.owned_container, stats.owned_kind, stats.owner_network)
    assert owned == ("c1", "task", "labhub")
    node_proxy = policy_from_env({"PROXY_POLICY": "node-metrics", "DOCKER_NETWORK": "lab"})
    assert node_proxy("GET", _task_list(r"^/lab\-user\-"), b"")


@pytest.mark.parametrize(
    "target",
    [
        USER_LIST,  # one host's list: no task container is on the lab's network
        _user_list(label=[OWNER_LABEL, "com.docker.swarm.service.name"]),
        _task_list("^/"),
        _task_list(r"^/lab2\-user\-"),
    ],
    ids=["one-host-list", "no-name", "any-name", "other-stack"],
)
def test_a_node_proxy_lists_nothing_but_the_stacks_task_containers(target: str) -> None:
    with pytest.raises(Refused, match="user containers only"):
        check_metrics_request(NODE_METRICS, "GET", target, b"")
    # And the one-host proxy refuses the Swarm list.
    with pytest.raises(Refused, match="user containers only"):
        check_metrics_request(METRICS, "GET", TASK_LIST, b"")


def _task(owner: str | None, *networks: str) -> bytes:
    labels = {OWNER_LABEL: owner} if owner is not None else {}
    attached = {network: {} for network in networks}
    return json.dumps(
        {"Config": {"Labels": labels}, "NetworkSettings": {"Networks": attached}}
    ).encode()


_NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)


@given(owner=_NAMES, other=_NAMES)
def test_a_task_container_is_read_only_on_its_owners_own_network(owner: str, other: str) -> None:
    """The stats of a task container are read only when it carries an owner label and is
    on that owner's own network of this stack: never on another user's, another stack's,
    or only the lab's (the hub's or CHP's connections carry no owner label)."""
    own, others = user_network_name(owner, "labhub"), user_network_name(other, "labhub")
    assume(own != others)  # names are lower-cased, as JupyterHub's are
    check_owner("c1", 200, _task(owner, own), kind="task", network="labhub")
    for inspected in (
        _task(owner, others),
        _task(owner, user_network_name(owner, "lab2")),
        _task(owner, "labhub"),
        _task(None, own),
        _task("", user_network_name("", "labhub")),
    ):
        with pytest.raises(Refused, match=r"not a labhub user task|not a user task of this stack"):
            check_owner("c1", 200, inspected, kind="task", network="labhub")


@pytest.mark.parametrize("target", ["/v1.41/system/df", "/system/df"])
def test_the_exporter_reads_disk_usage_cut_to_its_stacks_volumes(target: str) -> None:
    allowed = check_metrics_request(METRICS, "GET", target, b"")
    assert (allowed.target, allowed.volumes_of, allowed.owned_container) == (target, "labhub", None)


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        # API 1.42's type=... is ignored by older engines: no parameter is let through.
        ("GET", "/system/df?type=volume", "takes no parameters"),
        ("GET", "/system/df?verbose=1", "takes no parameters"),
        ("POST", "/system/df", "only reads"),
        ("GET", "/system/info", "not needed by the metrics exporter"),
        ("GET", "/system/df/x", "not needed by the metrics exporter"),
    ],
)
def test_disk_usage_is_the_plain_read_only(method: str, target: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_metrics_request(METRICS, method, target, b"")


# The parts of an engine's GET /system/df answer (API 1.41) that matter here.
DISK_USAGE = {
    "LayersSize": 10**10,
    "Images": [{"Id": "sha256:1", "RepoTags": ["labhub/hub:1"], "Size": 10**9}],
    "Containers": [{"Id": "c1", "Names": ["/labhub-hub-1"], "Labels": {"a": "b"}}],
    "Volumes": [
        {"Name": f"{VOLUME_PREFIX}ada", "Labels": {}, "UsageData": {"Size": 5 << 20}},
        {"Name": f"{VOLUME_PREFIX}bo", "UsageData": {"Size": -1, "RefCount": -1}},
        {"Name": "lab2-user-ada", "UsageData": {"Size": 7 << 20}},
        {"Name": "labhub-hub-data", "UsageData": {"Size": 1 << 20}},
    ],
}


def test_the_exporter_gets_only_the_sizes_of_its_stacks_user_volumes() -> None:
    """No image, container, hub volume or other stack's volume; an unsized one left out."""
    assert user_volume_sizes(DISK_USAGE, "labhub") == {f"{VOLUME_PREFIX}ada": 5 << 20}
    assert user_volume_sizes(DISK_USAGE, "lab2") == {"lab2-user-ada": 7 << 20}
    assert user_volume_sizes({"Volumes": None}, "labhub") == {}


def test_disk_usage_is_read_from_the_engine_at_most_once_per_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many asks at once, then again within the period: one engine call; after it, one
    more. The answer holds the stack's user volumes' sizes and nothing else."""
    calls: list[str] = []

    def engine(socket_path: str, target: str, timeout: float) -> tuple[int, bytes]:
        calls.append(target)
        return 200, json.dumps(DISK_USAGE).encode()

    monkeypatch.setattr("labhub.dockerproxy._inspect", engine)
    allowed = check_metrics_request(METRICS, "GET", "/v1.41/system/df", b"")
    cache = DiskUsage("/nowhere.sock", every=300)

    async def asks(times: int) -> list[bytes]:
        return list(await asyncio.gather(*(cache.answer(allowed) for _ in range(times))))

    answers = asyncio.run(asks(5))
    assert calls == ["/v1.41/system/df"]
    assert all(json.loads(a) == {"Volumes": {f"{VOLUME_PREFIX}ada": 5 << 20}} for a in answers)
    asyncio.run(asks(1))
    assert len(calls) == 1
    cache.read_at -= 300
    asyncio.run(asks(1))
    assert len(calls) == 2


def test_the_metrics_instance_gets_the_stacks_network() -> None:
    readable = policy_from_env({"PROXY_POLICY": "metrics", "DOCKER_NETWORK": "lab2"})
    lab2 = "/containers/json?" + urlencode(
        {"filters": json.dumps({"label": [OWNER_LABEL], "network": ["lab2"]})}
    )
    assert readable("GET", lab2, b"").target == lab2
    with pytest.raises(Refused, match="user containers only"):
        readable("GET", USER_LIST, b"")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "ALLOWED_IMAGES is empty"),
        ({"PROXY_POLICY": "readonly"}, "use hub, swarm, node, frontend, metrics or node-metrics"),
        ({"PROXY_POLICY": "frontend"}, "NGINX_PROXY_CONTAINER is empty"),
    ],
)
def test_a_proxy_without_its_settings_stops_with_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        policy_from_env(env)


def test_each_instance_gets_its_own_policy() -> None:
    hub = policy_from_env({"ALLOWED_IMAGES": IMAGE, "DOCKER_NETWORK": "labhub"})
    front = policy_from_env({"PROXY_POLICY": "frontend", "NGINX_PROXY_CONTAINER": "n"})
    with pytest.raises(Refused, match="not needed by the hub"):
        hub("GET", "/v1.41/events", b"")
    assert front("GET", "/v1.41/events", b"").target == "/v1.41/events"
    with pytest.raises(Refused, match="not needed by nginx-proxy"):
        front("POST", CREATE + f"?name={CONTAINER_PREFIX}a", json.dumps(good_spec()).encode())


def read(*chunks: bytes, eof: bool = False) -> tuple[RequestHead, bytes]:
    """read_request over a stream fed these chunks (kept open unless eof)."""

    async def scenario() -> tuple[RequestHead, bytes]:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        if eof:
            reader.feed_eof()
        return await asyncio.wait_for(read_request(reader), timeout=2)

    return asyncio.run(scenario())


def test_a_request_is_read_exactly_without_waiting_for_more() -> None:
    post = b"POST /v1.41/volumes/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n"
    # The connection stays open (docker-py keeps it alive): the answer comes at once.
    assert read(post + b"{}") == (RequestHead("POST", "/v1.41/volumes/create", 2), b"{}")
    assert read(post[:10], post[10:40], post[40:], b"{", b"}")[1] == b"{}"


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ((PING + b"\r\n" + PING + b"\r\n",), "bytes after the request body"),
        ((PING + b"Content-Length: 2\r\n\r\n{}x",), "bytes after the request body"),
        ((PING + b"Content-Length: 2\r\n\r\n{",), "closed the connection"),
        ((PING,), "closed the connection"),
        ((PING + b"X: " + b"a" * 70_000,), "longer than"),
    ],
    ids=["pipelined", "extra-byte", "short-body", "short-head", "endless-head"],
)
def test_pipelined_or_incomplete_requests_are_bad_requests(
    chunks: tuple[bytes, ...], reason: str
) -> None:
    with pytest.raises(BadRequest, match=reason):
        read(*chunks, eof=True)
