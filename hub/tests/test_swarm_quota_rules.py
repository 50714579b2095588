"""Disk quotas in Swarm mode (QUOTA_ROOT with ENGINE=swarm): each home a btrfs subvolume
on its node, made by that node's diskquota service, which the hub asks through the node's
Docker proxy.

Proven here without an engine (the kernel's part on a real Swarm is
tests/test_swarm_stack.py): the real LabSwarmSpawner has the home prepared on the node it
pins the service to, before the service exists, and sends exactly the quota bind, which
the manager's proxy passes; any other device path, option or volume is refused (a property
test); a node proxy relays a checked home request, and only that, to its diskquota socket
as a new request; the hub asks the home node's proxy, and refuses a plain volume already
there; the settings take QUOTA_ROOT with ENGINE=swarm, but not with HOME_NFS. A node proxy
answers exactly `GET QUOTA_USAGE_ROUTE` with its stack's homes' usage, read on its
diskquota service's usage socket, and refuses any other method, path or query (a property
test); another stack's homes on the node are never in its answer (the merge over every
node is in tests/gpu/test_homes.py). The node's metrics proxy answers the same route the
same way, for the per-user metrics (tests/test_containermetrics.py reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from docker.errors import NotFound
from hypothesis import assume, given
from hypothesis import strategies as st
from jupyterhub import orm
from jupyterhub.objects import Hub, Server
from labhub import cli, diskquota, homemove
from labhub.contract import quota_home_options, volume_name_for, volume_prefix
from labhub.diskquota import (
    QUOTA_HOME_ROUTE,
    QUOTA_USAGE_ROUTE,
    DiskQuotaError,
    Usage,
    request_home_through,
    request_removal_through,
)
from labhub.dockerpolicy import (
    MetricsPolicy,
    Policy,
    Refused,
    check_metrics_request,
    check_node_request,
    check_swarm_request,
)
from labhub.dockerproxy import DiskUsage, handle, policy_from_env
from labhub.settings import Settings, SettingsError
from labhub.swarmspawner import LabSwarmSpawner, swarm_spawner_config

from testsupport.dockerproxy import raw_request
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser, SlowManager

pytestmark = pytest.mark.unit

ROOT = "/srv/labhub-homes"
SWARM_QUOTA_ENV = {**MINIMAL_ENV, "ENGINE": "swarm", "QUOTA_ROOT": ROOT, "DISK_QUOTA": "2G"}
SETTINGS = Settings.from_env(SWARM_QUOTA_ENV)
NETWORK = SETTINGS.docker_network
IMAGE = SETTINGS.workspace_image
FRONTENDS = ["labhub-hub", "labhub-proxy-chp"]
POLICY = Policy(
    allowed_images=frozenset({IMAGE}),
    network=NETWORK,
    frontend_containers=frozenset(FRONTENDS),
    quota_root=ROOT,
)
CREATE = "/v1.41/services/create"
ALICES_HOME = volume_name_for("alice", NETWORK)


@pytest.fixture(scope="module")
def spawn() -> Iterator[tuple[list[tuple[Any, ...]], SlowManager]]:
    """alice's first spawn with QUOTA_ROOT: the home requests (with what the manager had
    been sent by then) and the manager."""
    manager, prepared = SlowManager(), []

    def prepare(service: str, node: str, volume: str, limit: int, root: str) -> None:
        prepared.append((service, node, volume, limit, root, dict(manager.created)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(homemove, "prepare_quota_home", prepare)
        spawner = LabSwarmSpawner(
            user=HubUser("alice"), hub=Hub(), frontend_containers=FRONTENDS,
            **swarm_spawner_config(SETTINGS),
        )  # fmt: skip
        spawner.server = Server(base_url="/user/alice/")
        original, LabSwarmSpawner._client = LabSwarmSpawner._client, manager
        try:
            asyncio.run(asyncio.wait_for(spawner.start(), 30))
        finally:
            LabSwarmSpawner._client = original
    yield prepared, manager


def home_mount(body: dict[str, Any]) -> dict[str, Any]:
    mount: dict[str, Any] = body["TaskTemplate"]["ContainerSpec"]["Mounts"][0]
    return mount


def test_the_home_is_prepared_on_its_node_before_the_service_then_bound_onto_it(
    spawn: tuple[list[tuple[Any, ...]], SlowManager],
) -> None:
    prepared, manager = spawn
    body = manager.created[f"{NETWORK}-user-alice"]
    [node] = [c.removeprefix("node.id==") for c in body["TaskTemplate"]["Placement"]["Constraints"]]
    # On the node the service is pinned to, with DISK_QUOTA, before the service existed.
    service = SETTINGS.node_proxy_service or ""
    assert prepared == [(service, node, ALICES_HOME, 2 * 1024**3, ROOT, {})]
    assert home_mount(body)["VolumeOptions"] == {
        "DriverConfig": {"Name": "local", "Options": quota_home_options(ROOT, ALICES_HOME)}
    }
    allowed = check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())
    assert json.loads(allowed.body) == body
    # A proxy without QUOTA_ROOT takes no volume options at all.
    without = Policy(POLICY.allowed_images, NETWORK, frontend_containers=POLICY.frontend_containers)
    with pytest.raises(Refused, match=r"VolumeOptions on .* are not allowed"):
        check_swarm_request(without, "POST", CREATE, json.dumps(body).encode())


def with_options(body: dict[str, Any], options: Any, source: str = ALICES_HOME) -> bytes:
    changed = copy.deepcopy(body)
    home_mount(changed)["Source"] = source
    home_mount(changed)["VolumeOptions"] = {"DriverConfig": {"Name": "local", "Options": options}}
    return json.dumps(changed).encode()


@given(device=st.one_of(st.text(max_size=80), st.sampled_from(["/", "/etc", ROOT])))
def test_any_other_device_path_is_refused(
    spawn: tuple[list[tuple[Any, ...]], SlowManager], device: str
) -> None:
    """A host path in disguise: the home bound anywhere but its own subvolume."""
    assume(device != f"{ROOT}/{ALICES_HOME}")
    body = spawn[1].created[f"{NETWORK}-user-alice"]
    options = {**quota_home_options(ROOT, ALICES_HOME), "device": device}
    with pytest.raises(Refused, match="must be exactly its disk-quota home"):
        check_swarm_request(POLICY, "POST", CREATE, with_options(body, options))


@pytest.mark.parametrize(
    "options",
    [
        quota_home_options(ROOT, volume_name_for("bob", NETWORK)),  # another user's home
        quota_home_options(ROOT, ALICES_HOME + "/.."),
        quota_home_options(ROOT + "/..", ALICES_HOME),
        {**quota_home_options(ROOT, ALICES_HOME), "o": "bind,rw,suid"},
        {**quota_home_options(ROOT, ALICES_HOME), "type": "btrfs"},
        {**quota_home_options(ROOT, ALICES_HOME), "uid": "0"},
        {"o": "bind", "device": f"{ROOT}/{ALICES_HOME}"},
        {},
    ],
    ids=["other-users-home", "dot-dot", "root-dot-dot", "mount-flags", "type", "extra", "no-type",
         "empty"],
)  # fmt: skip
def test_each_other_option_of_the_home_is_refused(
    spawn: tuple[list[tuple[Any, ...]], SlowManager], options: dict[str, str]
) -> None:
    body = spawn[1].created[f"{NETWORK}-user-alice"]
    with pytest.raises(Refused, match="must be exactly its disk-quota home"):
        check_swarm_request(POLICY, "POST", CREATE, with_options(body, options))


def test_the_settings_take_quota_root_in_swarm_mode_but_not_with_home_nfs() -> None:
    assert SETTINGS.disk_quotas.root == ROOT
    with pytest.raises(SettingsError, match="QUOTA_ROOT and HOME_NFS are both set"):
        Settings.from_env({**SWARM_QUOTA_ENV, "HOME_NFS": "nfs.example.edu:/homes"})
    env = {"PROXY_POLICY": "swarm", "ALLOWED_IMAGES": IMAGE, "FRONTEND_CONTAINERS": "hub"}
    assert policy_from_env({**env, "QUOTA_ROOT": ROOT})
    with pytest.raises(SystemExit, match="QUOTA_ROOT and HOME_NFS are both set"):
        policy_from_env({**env, "QUOTA_ROOT": ROOT, "HOME_NFS": "nfs.example.edu:/homes"})


# --- A node's proxy, relaying to its diskquota service ---------------------------------------
NODE = Policy(allowed_images=frozenset({IMAGE}), network=NETWORK)
NODE_METRICS = MetricsPolicy(network=NETWORK, swarm=True)


def test_a_node_proxy_allows_a_user_homes_quota_request_only() -> None:
    body = json.dumps({"Limit": 5}).encode()
    allowed = check_node_request(NODE, "POST", QUOTA_HOME_ROUTE + ALICES_HOME, body)
    assert allowed.quota_home == (ALICES_HOME, 5)
    for target, sent, reason in [
        (QUOTA_HOME_ROUTE + "other-user-alice", body, "not a user volume"),
        (QUOTA_HOME_ROUTE + ALICES_HOME + "?root=x", body, "query parameter"),
        ("/v1.41" + QUOTA_HOME_ROUTE + ALICES_HOME, body, "not needed"),
        (QUOTA_HOME_ROUTE + ALICES_HOME, b'{"Limit": 5, "Root": "/"}', "Root not allowed"),
        (QUOTA_HOME_ROUTE + ALICES_HOME, b'{"Limit": 0}', "Limit=0"),
        (QUOTA_HOME_ROUTE + ALICES_HOME, b'{"Limit": true}', "Limit=True"),
        (QUOTA_HOME_ROUTE + ALICES_HOME, b'{"Limit": "5"}', "Limit='5'"),
        (QUOTA_HOME_ROUTE + ALICES_HOME, b'{"Remove": true}', "Remove not allowed"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_node_request(NODE, "POST", target, sent)


def test_a_node_proxy_allows_deleting_a_user_homes_subvolume_only() -> None:
    allowed = check_node_request(NODE, "DELETE", QUOTA_HOME_ROUTE + ALICES_HOME, b"")
    assert allowed.quota_home_removal == ALICES_HOME and allowed.quota_home is None
    for target, sent, reason in [
        (QUOTA_HOME_ROUTE + "other-user-alice", b"", "not a user volume"),
        (QUOTA_HOME_ROUTE + ALICES_HOME + "?force=1", b"", "query parameter"),
        (QUOTA_HOME_ROUTE + ALICES_HOME, b'{"Root": "/"}', "takes no request body"),
        (QUOTA_HOME_ROUTE + "..", b"", "dot segments"),
        (QUOTA_HOME_ROUTE, b"", "not needed"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_node_request(NODE, "DELETE", target, sent)


def test_a_node_proxy_with_quota_root_makes_a_volume_bound_onto_its_own_folder_only() -> None:
    """A home moved or restored into a quota home (labhub.homemove.NodeEngine.make_home)."""
    env = {"PROXY_POLICY": "node", "ALLOWED_IMAGES": IMAGE, "DOCKER_NETWORK": NETWORK}
    check, without = policy_from_env({**env, "QUOTA_ROOT": ROOT}), policy_from_env(env)

    def create(options: dict[str, str]) -> bytes:
        return json.dumps({"Name": ALICES_HOME, "Driver": "local", "DriverOpts": options}).encode()

    allowed = check("POST", "/v1.41/volumes/create", create(quota_home_options(ROOT, ALICES_HOME)))
    assert json.loads(allowed.body)["DriverOpts"] == quota_home_options(ROOT, ALICES_HOME)
    for policy, options in (
        (check, quota_home_options(ROOT, volume_name_for("bob", NETWORK))),
        (check, quota_home_options("/", ALICES_HOME)),
        (check, {**quota_home_options(ROOT, ALICES_HOME), "type": "btrfs"}),
        (without, quota_home_options(ROOT, ALICES_HOME)),
    ):
        with pytest.raises(Refused, match="are not allowed"):
            policy("POST", "/volumes/create", create(options))


@contextlib.asynccontextmanager
async def node_proxy(tmp_path: Path, check: Any, **sockets: str) -> AsyncIterator[int]:
    """A real node proxy's handler (PROXY_POLICY=node, no engine behind it) on a loopback
    port, with the diskquota `sockets` it relays to (quota_socket, usage_socket)."""
    proxy = await asyncio.start_server(
        lambda r, w: handle(
            check, str(tmp_path / "no-engine.sock"), DiskUsage(""), r, w, uploads=True, **sockets
        ),
        "127.0.0.1", 0,
    )  # fmt: skip
    async with proxy:
        yield proxy.sockets[0].getsockname()[1]


def relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, volume: str, limit: int
) -> tuple[Usage | str, list[tuple[Path, str, int]]]:
    """`request_home_through` a real node proxy's handler (PROXY_POLICY=node) to a real
    diskquota service's handler (DISK_QUOTA_MAX=1G) whose btrfs work is recorded: the
    hub's answer (or error) and what the service was asked to make."""
    made: list[tuple[Path, str, int]] = []

    def ensure_home(root: Path, volume: str, limit: int) -> Usage:
        made.append((root, volume, limit))
        return Usage(0, limit)

    monkeypatch.setattr(diskquota, "ensure_home", ensure_home)
    check = policy_from_env({"PROXY_POLICY": "node", "ALLOWED_IMAGES": IMAGE})
    socket_path = str(tmp_path / "diskquota.sock")

    async def run() -> Usage | str:
        service = await asyncio.start_unix_server(
            lambda r, w: diskquota._answer(Path(ROOT), 1024**3, r, w), path=socket_path
        )
        async with service, node_proxy(tmp_path, check, quota_socket=socket_path) as port:
            try:
                return await asyncio.to_thread(
                    request_home_through, f"tcp://127.0.0.1:{port}", volume, limit
                )
            except DiskQuotaError as error:
                return str(error)

    return asyncio.run(run()), made


def test_the_node_proxy_relays_a_home_to_its_diskquota_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer, made = relay(tmp_path, monkeypatch, ALICES_HOME, 2**20)
    assert answer == Usage(0, 2**20) and made == [(Path(ROOT), ALICES_HOME, 2**20)]


def removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, volume: str, engine_has_it: bool
) -> tuple[bool | str, list[str]]:
    """`request_removal_through` a real node proxy's handler to a real diskquota service's
    handler whose btrfs work is recorded, in front of an engine that has the volume or
    not (a stand-in that answers the volume's inspect only): the hub's answer (or error)
    and which subvolumes the service deleted."""
    deleted: list[str] = []

    def remove_home(root: Path, volume: str) -> bool:
        deleted.append(volume)
        return True

    monkeypatch.setattr(diskquota, "remove_home", remove_home)
    check = policy_from_env({"PROXY_POLICY": "node", "ALLOWED_IMAGES": IMAGE})
    quota_socket, engine_socket = str(tmp_path / "diskquota.sock"), str(tmp_path / "no-engine.sock")

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        found = engine_has_it and line.split()[1] == f"/volumes/{volume}".encode()
        body = b'{"Name": "%s"}' % volume.encode() if found else b'{"message": "no such volume"}'
        head = f"HTTP/1.1 {200 if found else 404} X\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    async def run() -> bool | str:
        service = await asyncio.start_unix_server(
            lambda r, w: diskquota._answer(Path(ROOT), 1024**3, r, w), path=quota_socket
        )
        stand_in = await asyncio.start_unix_server(engine, path=engine_socket)
        proxy = node_proxy(tmp_path, check, quota_socket=quota_socket)
        async with service, stand_in, proxy as port:
            try:
                return await asyncio.to_thread(
                    request_removal_through, f"tcp://127.0.0.1:{port}", volume
                )
            except DiskQuotaError as error:
                return str(error)

    return asyncio.run(run()), deleted


def test_the_node_proxy_deletes_a_homes_subvolume_only_once_its_volume_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer, deleted = removal(tmp_path, monkeypatch, ALICES_HOME, engine_has_it=True)
    assert "answered 409" in str(answer) and "is still on this node" in str(answer)
    assert deleted == []
    answer, deleted = removal(tmp_path, monkeypatch, "other-user-alice", engine_has_it=False)
    assert "answered 403" in str(answer) and deleted == []
    answer, deleted = removal(tmp_path, monkeypatch, ALICES_HOME, engine_has_it=False)
    assert answer is True and deleted == [ALICES_HOME]


def test_the_diskquota_services_limit_and_the_proxys_rules_both_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer, made = relay(tmp_path, monkeypatch, ALICES_HOME, 2 * 1024**3)
    assert "answered 502" in str(answer) and "DISK_QUOTA_MAX=1073741824" in str(answer)
    answer, made_too = relay(tmp_path, monkeypatch, "other-user-alice", 2**20)
    assert "answered 403" in str(answer) and "not a user volume" in str(answer)
    assert made == made_too == []


# --- A node's proxy, answering its homes' usage -------------------------------------------
def test_a_node_proxy_answers_exactly_get_quota_usage_for_its_stacks_homes() -> None:
    allowed = check_node_request(NODE, "GET", QUOTA_USAGE_ROUTE, b"")
    assert allowed.quota_usage_of == volume_prefix(NETWORK) and allowed.target == QUOTA_USAGE_ROUTE
    for method, target, reason in [
        ("POST", QUOTA_USAGE_ROUTE, "not needed"),
        ("DELETE", QUOTA_USAGE_ROUTE, "not needed"),
        ("HEAD", QUOTA_USAGE_ROUTE, "not needed"),
        ("GET", QUOTA_USAGE_ROUTE + "?prefix=other-user-", "query parameter 'prefix'"),
        ("GET", QUOTA_USAGE_ROUTE + "?network=other", "query parameter 'network'"),
        ("GET", QUOTA_USAGE_ROUTE + "/", "not needed"),
        ("GET", QUOTA_USAGE_ROUTE + "/other-user-alice", "not needed"),
        ("GET", QUOTA_USAGE_ROUTE + "/../quota-homes/x", "not a plain API path"),
        ("GET", "/v1.41" + QUOTA_USAGE_ROUTE, "not needed"),
        ("GET", QUOTA_USAGE_ROUTE.upper(), "not needed"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_node_request(NODE, method, target, b"")
    with pytest.raises(Refused, match="takes no request body"):
        check_node_request(NODE, "GET", QUOTA_USAGE_ROUTE, b"{}")


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]),
    before=st.sampled_from(["", "/v1.41", "/labhub", "/v1.41/labhub"]),
    after=st.text(max_size=40),
    metrics=st.booleans(),
)
def test_nothing_but_that_request_reaches_the_usage_socket(
    method: str, before: str, after: str, metrics: bool
) -> None:
    """Whatever is put around the route, at the node proxy or the node's metrics proxy:
    refused, or the very same request (an empty query adds nothing), never the usage of
    another prefix nor any other target."""
    target = before + QUOTA_USAGE_ROUTE + after
    try:
        if metrics:
            allowed = check_metrics_request(NODE_METRICS, method, target, b"")
        else:
            allowed = check_node_request(NODE, method, target, b"")
    except Refused:
        return
    if allowed.quota_usage_of:
        assert (method, allowed.target) == ("GET", QUOTA_USAGE_ROUTE)
        assert allowed.quota_usage_of == volume_prefix(NETWORK)
    else:  # an engine route, none of which reads the diskquota service's sockets
        assert allowed.quota_home is None and not allowed.target.startswith("/labhub")


def usage_through_proxy(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    requests: list[tuple[str, str]],
    diskquota_runs: bool = True,
    policy: str = "node",
) -> tuple[list[tuple[int, Any]], int]:
    """`requests` sent to a real node proxy's handler (PROXY_POLICY=`policy`: the node
    proxy, or the node's metrics proxy; this stack's network) in front of a real diskquota
    service's usage socket (if it runs), whose QUOTA_ROOT holds alice's home, bob's and
    another stack's alice's: each status and JSON answer, and how often the service read
    the homes."""
    read: list[Path] = []
    on_the_node = {
        ALICES_HOME: Usage(3 * 2**20, 2**30),
        volume_name_for("bob", NETWORK): Usage(5, 0),
        volume_name_for("alice", "otherlab"): Usage(7 * 2**20, 2**30),
    }

    def homes_usage(root: Path) -> dict[str, Usage]:
        read.append(root)
        return on_the_node

    monkeypatch.setattr(diskquota, "homes_usage", homes_usage)
    check = policy_from_env(
        {"PROXY_POLICY": policy, "ALLOWED_IMAGES": IMAGE, "DOCKER_NETWORK": NETWORK}
    )
    usage_socket = str(tmp_path / "usage.sock")

    def ask(port: int, method: str, target: str) -> tuple[int, Any]:
        status, body = raw_request(port, method, target)
        return status, json.loads(body or "null")

    async def run() -> list[tuple[int, Any]]:
        service = await asyncio.start_unix_server(
            lambda _, w: diskquota._answer_usage(Path(ROOT), w), path=usage_socket
        )
        if not diskquota_runs:
            service.close()
            Path(usage_socket).unlink()
        async with service, node_proxy(tmp_path, check, usage_socket=usage_socket) as port:
            return [await asyncio.to_thread(ask, port, *request) for request in requests]

    return asyncio.run(run()), len(read)


# The node's metrics proxy (MONITORING=true) answers the same, for the per-user metrics.
BOTH_PROXIES = pytest.mark.parametrize("policy", ["node", "node-metrics"])


@BOTH_PROXIES
def test_the_node_proxy_answers_its_stacks_homes_usage_from_the_usage_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    [(status, answer)], reads = usage_through_proxy(
        tmp_path, monkeypatch, [("GET", QUOTA_USAGE_ROUTE)], policy=policy
    )
    assert status == 200 and reads == 1
    # Another stack's home on the same QUOTA_ROOT is not answered.
    assert answer == {ALICES_HOME: [3 * 2**20, 2**30], volume_name_for("bob", NETWORK): [5, 0]}


@BOTH_PROXIES
def test_the_node_proxy_refuses_any_other_usage_request_reading_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    requests = [
        ("POST", QUOTA_USAGE_ROUTE),
        ("GET", QUOTA_USAGE_ROUTE + "?prefix=otherlab-user-"),
        ("GET", QUOTA_USAGE_ROUTE + "/" + volume_name_for("alice", "otherlab")),
        ("GET", "/v1.41" + QUOTA_USAGE_ROUTE),
    ]
    answers, reads = usage_through_proxy(tmp_path, monkeypatch, requests, policy=policy)
    assert [status for status, _ in answers] == [403] * len(requests), answers
    assert all("refused by labhub docker proxy" in answer["message"] for _, answer in answers)
    assert reads == 0


def test_a_one_host_metrics_proxy_has_no_usage_route() -> None:
    """On one host the exporter reads the usage socket itself; its proxy reads the engine."""
    one_host = policy_from_env({"PROXY_POLICY": "metrics", "DOCKER_NETWORK": NETWORK})
    with pytest.raises(Refused, match="not needed by the metrics exporter"):
        one_host("GET", QUOTA_USAGE_ROUTE, b"")
    node_metrics = policy_from_env({"PROXY_POLICY": "node-metrics", "DOCKER_NETWORK": NETWORK})
    with pytest.raises(Refused, match="only reads"):
        node_metrics("GET", QUOTA_USAGE_ROUTE, b"{}")
    for engine_route in ("/volumes/" + ALICES_HOME, QUOTA_HOME_ROUTE + ALICES_HOME):
        with pytest.raises(Refused, match="not needed by the metrics exporter"):
            node_metrics("GET", engine_route, b"")


def test_a_node_without_its_diskquota_service_answers_502_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [(status, answer)], _ = usage_through_proxy(
        tmp_path, monkeypatch, [("GET", QUOTA_USAGE_ROUTE)], diskquota_runs=False
    )
    assert status == 502 and "no disk usage at" in answer["message"]


# --- The hub's side: the home node's proxy, then its diskquota service ---------------------
class NodeEngine:
    """A node's engine behind its proxy, as docker-py's APIClient sees it: `volumes` by name."""

    volumes: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **_: Any) -> None:
        pass

    def inspect_volume(self, name: str) -> dict[str, Any]:
        if name not in self.volumes:
            raise NotFound(f"volume {name} not found")
        return self.volumes[name]


@pytest.mark.parametrize(
    ("on_the_node", "refused"),
    [
        (None, ""),
        ({"Options": quota_home_options(ROOT, ALICES_HOME)}, ""),
        ({"Options": None}, "predates QUOTA_ROOT and has no quota"),
        ({"Options": quota_home_options("/elsewhere", ALICES_HOME)}, "predates QUOTA_ROOT"),
    ],
    ids=["first-start", "quota-home-there", "plain-volume-there", "other-root"],
)
def test_the_hub_prepares_the_home_on_its_node_unless_a_plain_volume_is_there(
    monkeypatch: pytest.MonkeyPatch, on_the_node: dict[str, Any] | None, refused: str
) -> None:
    asked: list[tuple[str, str, int]] = []
    monkeypatch.setattr(homemove, "find_node_proxies", lambda service: {"n2": "tcp://n2:2375"})
    monkeypatch.setattr(NodeEngine, "volumes", {ALICES_HOME: on_the_node} if on_the_node else {})
    monkeypatch.setattr(homemove.docker, "APIClient", NodeEngine)
    monkeypatch.setattr(homemove, "request_home_through", lambda *args: asked.append(args))
    if refused:
        with pytest.raises(DiskQuotaError, match=refused):
            homemove.prepare_quota_home("proxies", "n2", ALICES_HOME, 5, ROOT)
        assert asked == []
    else:
        homemove.prepare_quota_home("proxies", "n2", ALICES_HOME, 5, ROOT)
        assert asked == [("tcp://n2:2375", ALICES_HOME, 5)]
    with pytest.raises(DiskQuotaError, match="no Docker proxy answers for node n3"):
        homemove.prepare_quota_home("proxies", "n3", ALICES_HOME, 5, ROOT)


def test_a_moved_or_restored_home_gets_the_limit_the_users_next_spawn_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's quota counts, as DiskQuotas.limit_for says, read from the hub's database;
    no quota object at all without QUOTA_ROOT."""
    path = tmp_path / "jupyterhub.sqlite"
    db = orm.new_session_factory(f"sqlite:///{path}")()
    alice, bob = orm.User(name="alice"), orm.User(name="bob")
    db.add_all([alice, bob, orm.Group(name="thesis", users=[alice])])
    db.commit()
    settings = Settings.from_env({**SWARM_QUOTA_ENV, "DISK_QUOTA_GROUPS": '{"thesis": "50G"}'})
    assert homemove.user_groups(path, "alice") == ["thesis"]
    assert cli._home_quota(settings, path, "alice") == homemove.HomeQuota(ROOT, 50 * 1024**3)
    assert cli._home_quota(settings, path, "bob") == homemove.HomeQuota(ROOT, 2 * 1024**3)
    assert cli._home_quota(Settings.from_env(MINIMAL_ENV), path, "alice") is None
