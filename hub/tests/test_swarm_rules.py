"""LabSwarmSpawner and the proxy's Swarm rules: what the spawner sends passes, anything more
is refused.

The service bodies are not written by hand: `swarm_start` runs the real
`LabSwarmSpawner.start()` against a recording docker-py client that answers like a
three-node Swarm manager, and keeps every request docker-py would have sent.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from jupyterhub.objects import Hub, Server
from labhub.contract import (
    CONTAINER_USER,
    OWNER_LABEL,
    SERVER_LABEL,
    container_name_prefix,
    user_network_name,
    volume_prefix,
)
from labhub.dockerpolicy import (
    Policy,
    Refused,
    check_owner,
    check_swarm_request,
    inspect_target,
)
from labhub.dockerproxy import DiskUsage, handle, policy_from_env
from labhub.settings import Settings
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner, swarm_spawner_config
from tornado import web

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.recording import RecordingAPIClient

pytestmark = pytest.mark.unit

SETTINGS = Settings.from_env(MINIMAL_ENV)
IMAGE = SETTINGS.workspace_image
# The containers that reach users' servers (the hub's, CHP's), as the deployment names them.
FRONTENDS = ["labhub-hub", "labhub-proxy-chp"]
POLICY = Policy(
    allowed_images=frozenset({IMAGE}),
    network=SETTINGS.docker_network,
    frontend_containers=frozenset(FRONTENDS),
)
PREFIX = container_name_prefix(POLICY.network)
CREATE = "/v1.41/services/create"
ALICES_NETWORK = user_network_name("alice", POLICY.network)


class RecordingManager(RecordingAPIClient):
    """Answers like a Swarm manager with the given nodes and lab services, where a created
    service's task is running at once."""

    def __init__(
        self,
        nodes: list[dict[str, Any]],
        services: list[dict[str, Any]],
        network: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(strip="/v1.41")
        self.nodes_answer, self.services_answer = nodes, services
        # The user's network as the manager inspects it (None: not made yet).
        self.network = network

    def answer(self, path: str) -> tuple[int, Any]:
        created = self.sent_to("/services/create")
        if path == "/networks/create":
            self.network = {"Name": ALICES_NETWORK, "Labels": {OWNER_LABEL: "alice"}}
            return 201, {"Id": "net123"}
        if path.startswith("/networks/") and path.endswith("/connect"):
            # The container joins with an address of the network's (as the engine gives).
            assert self.network is not None
            containers = self.network.setdefault("Containers", {})
            name = json.loads(self.sent[-1][3] or "{}")["Container"]
            address = f"10.0.9.{len(containers) + 2}/24"
            containers[f"id-{name}"] = {"Name": name, "IPv4Address": address}
            return 200, {}
        if path.startswith("/networks/"):
            return (404, {"message": "not found"}) if self.network is None else (200, self.network)
        if path == "/nodes":
            return 200, self.nodes_answer
        if path == "/services":
            return 200, self.services_answer
        if path == "/services/create":
            return 201, {"ID": "svc123"}
        if path == "/tasks":
            return 200, [{"Status": {"State": "running"}}] if created else []
        if path.startswith("/images/"):
            return 200, {"Config": {"Cmd": ["start-notebook.py"]}}
        if path.startswith("/services/") and not created:
            return 404, {"message": "service not found"}
        if path.startswith("/services/"):
            return 200, {"ID": "svc123", "Spec": {"Labels": {OWNER_LABEL: "alice"}}}
        return 200, {}


class _User:
    name = "alice"
    admin = False
    groups: tuple[object, ...] = ()
    url = "/user/alice/"


def node(node_id: str, state: str = "ready", availability: str = "active") -> dict[str, Any]:
    return {"ID": node_id, "Status": {"State": state}, "Spec": {"Availability": availability}}


def pinned(node_id: str) -> dict[str, Any]:
    return {"Spec": {"TaskTemplate": {"Placement": {"Constraints": [f"node.id=={node_id}"]}}}}


NODES = [node("n1"), node("n2"), node("n3")]


def swarm_start(
    nodes: list[dict[str, Any]] = NODES,
    services: list[dict[str, Any]] = (),  # type: ignore[assignment]
    state: dict[str, Any] | None = None,
    network: dict[str, Any] | None = None,
    frontends: list[str] = FRONTENDS,
) -> tuple[LabSwarmSpawner, RecordingManager]:
    """Run LabSwarmSpawner.start() for alice (with her saved spawner state) on a recording
    manager (with her `network` if made before); the spawner (for its state) and what it
    sent."""
    client = RecordingManager(nodes, list(services), network)
    original = LabSwarmSpawner._client
    LabSwarmSpawner._client = client
    try:
        spawner = LabSwarmSpawner(
            user=_User(), hub=Hub(), frontend_containers=frontends,
            **swarm_spawner_config(SETTINGS),
        )  # fmt: skip
        spawner.load_state(state or {})
        spawner.server = Server(base_url="/user/alice/")
        assert asyncio.run(spawner.start()) == (f"{PREFIX}alice", 8888)
    finally:
        LabSwarmSpawner._client = original
    return spawner, client


def created_body(client: RecordingManager, path: str = "/services/create") -> dict[str, Any]:
    [data] = [d for _, sent, _, d in client.sent if sent == path]
    assert data is not None
    body: dict[str, Any] = json.loads(data)
    return body


@pytest.fixture(scope="module")
def sent_body() -> dict[str, Any]:
    return created_body(swarm_start()[1])


def test_what_labswarmspawner_sends_passes_and_is_forwarded_as_checked(
    sent_body: dict[str, Any],
) -> None:
    body = json.dumps(sent_body).encode()
    allowed = check_swarm_request(POLICY, "POST", CREATE, body)
    assert json.loads(allowed.body) == sent_body
    # LabSpawner's hardening and limits, in the service API's terms.
    spec = sent_body["TaskTemplate"]["ContainerSpec"]
    assert spec["User"] == CONTAINER_USER and spec["CapabilityDrop"] == ["ALL"]
    assert sent_body["Labels"] == {OWNER_LABEL: "alice"}
    # The task's container also names its server (the per-user metrics read it there).
    assert spec["Labels"] == {OWNER_LABEL: "alice", SERVER_LABEL: ""}
    assert spec["Init"] is False
    volume, shm = spec["Mounts"]
    assert volume == {
        "Target": "/home/jovyan",
        "Source": f"{volume_prefix(POLICY.network)}alice",
        "Type": "volume",
        "ReadOnly": False,
    }
    assert shm["Type"] == "tmpfs" and shm["TmpfsOptions"] == {"SizeBytes": SETTINGS.shm_size}
    assert sent_body["TaskTemplate"]["Resources"] == {
        "Limits": {
            "MemoryBytes": SETTINGS.mem_limit,
            "NanoCPUs": int(SETTINGS.cpu_limit * 10**9),
            "Pids": SETTINGS.pids_limit,
        }
    }
    assert sent_body["EndpointSpec"] == {"Mode": "dnsrr"}
    # Her own network only: not the lab's, which the hub's other containers are on.
    assert sent_body["TaskTemplate"]["Networks"] == [{"Target": ALICES_NETWORK}]
    assert f"{POLICY.network}-u-alice" == ALICES_NETWORK


def test_every_call_of_a_spawn_passes_the_proxy() -> None:
    """Not just the create: the node and service lists, the inspects, the task polls."""
    _, client = swarm_start()
    for method, path, params, data in client.sent:
        query = (
            "" if not params else "?" + requests.models.RequestEncodingMixin._encode_params(params)
        )
        check_swarm_request(POLICY, method, f"/v1.41{path}{query}", (data or "").encode())


def test_the_first_spawn_picks_the_least_busy_node_and_later_spawns_stay_there() -> None:
    busy = [pinned("n1"), pinned("n1"), pinned("n2")]
    spawner, client = swarm_start(services=busy)
    constraints = created_body(client)["TaskTemplate"]["Placement"]["Constraints"]
    assert constraints == ["node.id==n3"]
    # Recorded in the state the hub keeps, and kept when the server stops.
    spawner.clear_state()
    saved = spawner.get_state()
    assert saved[HOME_NODE_STATE] == "n3"
    # n3 is now the busiest: the home wins all the same.
    _, client = swarm_start(services=[*busy, pinned("n3"), pinned("n3")], state=saved)
    assert created_body(client)["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==n3"]


def test_a_home_on_a_drained_node_is_a_503_naming_the_node() -> None:
    drained = [node("n1"), node("n3", availability="drain")]
    with pytest.raises(web.HTTPError, match="node n3, which is drained") as raised:
        swarm_start(nodes=drained, state={HOME_NODE_STATE: "n3"})
    assert raised.value.status_code == 503


def _spec(change: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], object]:
    return lambda body: change(body["TaskTemplate"]["ContainerSpec"])


HOST_BIND = {"Target": "/host", "Source": "/", "Type": "bind", "ReadOnly": False}
# A named volume whose local driver options bind the host's root: a bind in disguise.
DISGUISED_BIND = {
    "Target": "/home/jovyan",
    "Source": f"{volume_prefix(POLICY.network)}alice",
    "Type": "volume",
    "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {"o": "bind", "device": "/"}}},
}
# Each mutation takes the spawner's own body one step beyond what it sends.
MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "root": (_spec(lambda s: s.update(User="0:0")), "never root"),
    "no-user": (_spec(lambda s: s.pop("User")), "user is required"),
    "host-bind": (_spec(lambda s: s["Mounts"].append(HOST_BIND)), "Mounts: the user's volume"),
    "bind-instead": (_spec(lambda s: s.update(Mounts=[HOST_BIND])), "no binds"),
    "volume-options": (_spec(lambda s: s.update(Mounts=[DISGUISED_BIND])), "VolumeOptions"),
    "other-volume": (
        _spec(lambda s: s["Mounts"][0].update(Source="labhub-hub-data")),
        "not a user volume",
    ),
    "shm-elsewhere": (_spec(lambda s: s["Mounts"][1].update(Target="/etc")), "no binds"),
    "cap-add": (_spec(lambda s: s.update(CapabilityAdd=["SYS_ADMIN"])), "CapabilityAdd"),
    "keep-caps": (_spec(lambda s: s.update(CapabilityDrop=["NET_RAW"])), "drop all"),
    "privileges": (_spec(lambda s: s.update(Privileges={"SELinuxContext": {}})), "Privileges"),
    "sysctls": (_spec(lambda s: s.update(Sysctls={"net.ipv4.ip_forward": "1"})), "Sysctls"),
    "other-image": (_spec(lambda s: s.update(Image="debian:trixie-slim")), "not an allowed"),
    "no-owner": (_spec(lambda s: s.update(Labels={})), OWNER_LABEL),
    "no-pids-limit": (
        lambda b: b["TaskTemplate"]["Resources"]["Limits"].pop("Pids"),
        "pids is required",
    ),
    "memory-over-max": (
        lambda b: b["TaskTemplate"]["Resources"]["Limits"].update(MemoryBytes=1 << 60),
        "MemoryBytes=",
    ),
    "generic-resources": (
        lambda b: b["TaskTemplate"]["Resources"].update(Reservations={"GenericResources": []}),
        "Reservations",
    ),
    "anywhere": (
        lambda b: b["TaskTemplate"]["Placement"].update(Constraints=["node.role==manager"]),
        "exactly one node.id",
    ),
    "host-network": (
        lambda b: b["TaskTemplate"].update(Networks=[{"Target": "host"}]),
        "Networks=",
    ),
    "lab-network": (
        lambda b: b["TaskTemplate"].update(Networks=[{"Target": POLICY.network}]),
        "only its owner's network",
    ),
    "another-users-network": (
        lambda b: b["TaskTemplate"].update(
            Networks=[{"Target": user_network_name("bob", POLICY.network)}]
        ),
        "only its owner's network",
    ),
    "a-second-network": (
        lambda b: b["TaskTemplate"]["Networks"].append({"Target": "labhub-u-bob"}),
        "only its owner's network",
    ),
    # Relabelled as bob to join bob's network: the task still runs as alice's.
    "service-of-another-owner": (
        lambda b: (
            b.update(Labels={OWNER_LABEL: "bob"}),
            b["TaskTemplate"].update(
                Networks=[{"Target": user_network_name("bob", POLICY.network)}]
            ),
        ),
        "is not the service's",
    ),
    "runtime": (
        lambda b: b["TaskTemplate"].update(Runtime="plugin"),
        "Runtime",
    ),
    "published-port": (
        lambda b: b["EndpointSpec"].update(Ports=[{"TargetPort": 8888, "PublishedPort": 80}]),
        "Ports",
    ),
    "other-name": (lambda b: b.update(Name="labhub-hub"), "must start with"),
    "global-mode": (lambda b: b.update(Mode={"Global": {}}), "Mode"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_step_beyond_what_labswarmspawner_sends_is_refused(
    sent_body: dict[str, Any], mutation: str
) -> None:
    body = copy.deepcopy(sent_body)
    change, reason = MUTATIONS[mutation]
    change(body)
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("method", "target", "reason"),
    [
        ("GET", "/v1.41/services", "list services with filters"),
        ("GET", "/v1.41/services?" + urlencode({"filters": '{"label":["x"]}'}), "only"),
        ("GET", "/v1.41/tasks", "user services only"),
        ("GET", "/v1.41/tasks?" + urlencode({"filters": '{"service":["hub"]}'}), "user services"),
        ("GET", "/v1.41/tasks?filters=notjson", "not a short JSON"),
        ("POST", "/v1.41/services/svc123/update?version=3", "not needed"),
        ("GET", "/v1.41/services/svc123/logs", "not needed"),
        ("POST", "/v1.41/nodes/n1/update?version=3", "not needed"),
        ("DELETE", "/v1.41/nodes/n1", "not needed"),
        ("GET", "/v1.41/swarm", "not needed"),
        ("GET", "/v1.41/secrets", "not needed"),
        ("POST", "/v1.41/containers/create?name=labhub-user-x", "not needed"),
        ("POST", "/v1.41/networks/create", "exactly the labhub.user label"),
        ("GET", "/v1.41/networks", "not needed"),
        ("GET", "/v1.41/networks/labhub", "not a user's network"),
        ("GET", "/v1.41/networks/labhub-docker-api", "not a user's network"),
        ("POST", "/v1.41/networks/labhub/connect", "not a user's network"),
        ("POST", "/v1.41/networks/labhub-u-alice/disconnect", "only the frontends"),
        ("POST", "/v1.41/networks/prune", "not needed"),
        ("GET", "/v1.41/images/debian:trixie-slim/json", "not an allowed"),
    ],
)
def test_everything_else_in_swarm_mode_is_refused(method: str, target: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, method, target, b"")


def test_one_service_is_owner_checked_by_its_spec_labels() -> None:
    allowed = check_swarm_request(POLICY, "DELETE", "/v1.41/services/svc123", b"")
    assert (allowed.owned_container, allowed.owned_kind) == ("svc123", "service")
    assert inspect_target(allowed) == "/v1.41/services/svc123"
    check_owner(
        "svc123", 200, json.dumps({"Spec": {"Labels": {OWNER_LABEL: "a"}}}).encode(), kind="service"
    )
    # The hub's own service (or anyone else's) carries no owner label.
    with pytest.raises(Refused, match="not a labhub user service"):
        check_owner("hub", 200, json.dumps({"Spec": {"Labels": {}}}).encode(), kind="service")
    # A container's owner label under Config does not make a service one.
    config_only = {"Config": {"Labels": {OWNER_LABEL: "a"}}, "Spec": {}}
    with pytest.raises(Refused, match="not a labhub user service"):
        check_owner("odd", 200, json.dumps(config_only).encode(), kind="service")


def test_the_swarm_proxy_refuses_what_swarm_mode_does_not_do_yet() -> None:
    base = {"PROXY_POLICY": "swarm", "ALLOWED_IMAGES": IMAGE, "FRONTEND_CONTAINERS": "hub"}
    check = policy_from_env(base)
    with pytest.raises(Refused, match="not needed by the hub in Swarm mode"):
        check("POST", "/v1.41/containers/create?name=labhub-user-a", b"{}")


# --- Each user's own network -------------------------------------------------------------
NETWORK_CREATE = "/v1.41/networks/create"
CONNECT = f"/v1.41/networks/{ALICES_NETWORK}/connect"


def test_a_first_spawn_makes_the_users_internal_network_and_connects_the_frontends() -> None:
    _, client = swarm_start()
    paths = [path for _, path, _, _ in client.sent]
    # Made and joined before the service that needs it.
    assert paths.index("/networks/create") < paths.index("/services/create")
    network = created_body(client, "/networks/create")
    assert network["Name"] == ALICES_NETWORK and network["Labels"] == {OWNER_LABEL: "alice"}
    assert network["Driver"] == "overlay" and network["Internal"] and network["Attachable"]
    connected = [json.loads(d or "") for _, path, _, d in client.sent if path.endswith("/connect")]
    assert [c["Container"] for c in connected] == FRONTENDS
    allowed = check_swarm_request(POLICY, "POST", NETWORK_CREATE, json.dumps(network).encode())
    assert json.loads(allowed.body) == network
    for connect in connected:
        allowed = check_swarm_request(POLICY, "POST", CONNECT, json.dumps(connect).encode())
        # The relay checks the network's owner label before it connects anything.
        assert (allowed.owned_container, allowed.owned_kind) == (ALICES_NETWORK, "network")


def test_a_later_spawn_finds_the_network_and_frontends_and_only_inspects() -> None:
    joined = {
        "Name": ALICES_NETWORK,
        "Labels": {OWNER_LABEL: "alice"},
        "Containers": {f"id{i}": {"Name": name} for i, name in enumerate(FRONTENDS)},
    }
    _, client = swarm_start(network=joined)
    assert not client.sent_to("/networks/create") and not client.sent_to("/connect")
    assert [p for _, p, _, _ in client.sent if p.startswith("/networks")] == [
        f"/networks/{ALICES_NETWORK}"
    ]


def test_a_spawner_with_no_frontends_is_a_500_saying_what_to_set() -> None:
    with pytest.raises(web.HTTPError, match="frontend_containers is empty") as raised:
        swarm_start(frontends=[])
    assert raised.value.status_code == 500


@pytest.fixture(scope="module")
def sent_network() -> dict[str, Any]:
    return created_body(swarm_start()[1], "/networks/create")


# Each takes the spawner's own network one step further.
NETWORK_MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "another-users-name": (lambda n: n.update(Name="labhub-u-bob"), "not the network of"),
    "lab-network-name": (lambda n: n.update(Name=POLICY.network), "not the network of"),
    "no-owner": (lambda n: n.update(Labels={}), "exactly the labhub.user label"),
    "extra-label": (lambda n: n["Labels"].update({"labhub.server": ""}), "exactly the"),
    "not-internal": (lambda n: n.update(Internal=False), "internal"),
    "internal-omitted": (lambda n: n.pop("Internal"), "internal"),
    "not-attachable": (lambda n: n.update(Attachable=False), "attachable"),
    # A second network of the same name (the engine allows it without CheckDuplicate).
    "duplicate-name": (lambda n: n.update(CheckDuplicate=False), "checkduplicate"),
    "internal-as-1": (lambda n: n.update(Internal=1), "internal"),
    "bridge": (lambda n: n.update(Driver="bridge"), "driver"),
    "macvlan-on-the-lan": (
        lambda n: n.update(Driver="macvlan", Options={"parent": "eth0"}),
        "driver",
    ),
    "driver-options": (
        lambda n: n.update(Options={"com.docker.network.driver.mtu": "9000"}),
        "no options",
    ),
    # An address plan over the hub's or the LAN's addresses.
    "ipam": (lambda n: n.update(IPAM={"Config": [{"Subnet": "10.0.0.0/8"}]}), "no ipam"),
    "ingress": (lambda n: n.update(Ingress=True), "Ingress"),
    "config-from": (lambda n: n.update(ConfigFrom={"Network": "x"}), "ConfigFrom"),
    "ipv6": (lambda n: n.update(EnableIPv6=True), "EnableIPv6"),
    "scope": (lambda n: n.update(Scope="local"), "Scope"),
}


@pytest.mark.parametrize("mutation", sorted(NETWORK_MUTATIONS))
def test_each_step_beyond_the_users_network_is_refused(
    sent_network: dict[str, Any], mutation: str
) -> None:
    body = copy.deepcopy(sent_network)
    change, reason = NETWORK_MUTATIONS[mutation]
    change(body)
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, "POST", NETWORK_CREATE, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("connect", "reason"),
    [
        # A user's server (its service's task container) joining another user's network.
        ({"Container": f"{PREFIX}bob.1.x7q2"}, "only the frontends"),
        ({"Container": "labhub-docker-proxy"}, "only the frontends"),
        ({"Container": ["labhub-hub"]}, "only the frontends"),
        ({"Container": "labhub-hub", "EndpointConfig": {"IPAddress": "10.0.1.2"}}, "empty"),
        # An alias would let the hub's container answer for another name on this network.
        ({"Container": "labhub-hub", "EndpointConfig": {"Aliases": ["x"]}}, "empty"),
        ({"Container": "labhub-hub", "Force": True}, "Force"),
    ],
)
def test_only_a_frontend_connects_to_a_users_network(connect: dict[str, Any], reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, "POST", CONNECT, json.dumps(connect).encode())


def test_what_is_forwarded_of_a_connect_is_the_checked_container_only() -> None:
    body = json.dumps({"container": "labhub-hub", "EndpointConfig": None}).encode()
    assert check_swarm_request(POLICY, "POST", CONNECT, body).body == b'{"Container":"labhub-hub"}'


def test_a_network_is_owner_checked_by_its_own_labels() -> None:
    allowed = check_swarm_request(POLICY, "GET", f"/v1.41/networks/{ALICES_NETWORK}", b"")
    assert inspect_target(allowed) == f"/v1.41/networks/{ALICES_NETWORK}"
    check_owner("n", 200, json.dumps({"Labels": {OWNER_LABEL: "a"}}).encode(), kind="network")
    # Named like a user's network but made by someone else, without the label.
    with pytest.raises(Refused, match="not a labhub user network"):
        check_owner("n", 200, json.dumps({"Labels": {}}).encode(), kind="network")


@pytest.mark.parametrize(
    ("frontends", "problem"),
    [("", "FRONTEND_CONTAINERS is empty"), ("labhub-hub,cafe", "'cafe' looks like a container")],
)
def test_the_swarm_proxy_needs_the_frontends_by_name(frontends: str, problem: str) -> None:
    env = {"PROXY_POLICY": "swarm", "ALLOWED_IMAGES": IMAGE, "FRONTEND_CONTAINERS": frontends}
    with pytest.raises(SystemExit, match=problem):
        policy_from_env(env)


# --- SUBDOMAINS: the GPU service's own host, at CHP's address ---------------------------
GPU_HOST = "gpus--service.lab.example.edu"
SUBDOMAIN_ENV = {"DOMAIN": "lab.example.edu", "SUBDOMAINS": "true"}
EGRESS = "labhub-egress"


def subdomain_start(
    network: dict[str, Any] | None = None,
) -> tuple[LabSwarmSpawner, RecordingManager]:
    """A spawn with SUBDOMAINS (and the egress proxy), as jupyterhub_config.py wires it."""
    settings = Settings.from_env({**MINIMAL_ENV, **SUBDOMAIN_ENV, "ENGINE": "swarm",
                                  "CHP_CONTAINER": FRONTENDS[1]})  # fmt: skip
    client = RecordingManager(NODES, [], network)
    original = LabSwarmSpawner._client
    LabSwarmSpawner._client = client
    try:
        spawner = LabSwarmSpawner(
            user=_User(), hub=Hub(), frontend_containers=[*FRONTENDS, EGRESS],
            egress_proxy=EGRESS, **swarm_spawner_config(settings),
        )  # fmt: skip
        spawner.server = Server(base_url="/user/alice/")
        asyncio.run(spawner.start())
    finally:
        LabSwarmSpawner._client = original
    return spawner, client


def test_with_subdomains_a_server_resolves_the_gpu_services_host_to_chp_on_its_network() -> None:
    """The status URL names the GPU service's own host, which CHP routes by (test_wiring);
    the user's overlay network has no such name, so the service's /etc/hosts gives CHP's
    address there, the egress proxy is not asked for it, and the proxy forwards that."""
    _, client = subdomain_start()
    body = created_body(client)
    spec = body["TaskTemplate"]["ContainerSpec"]
    # CHP joined second, after the hub: the recording network gave it 10.0.9.3.
    assert spec["Hosts"] == [f"10.0.9.3 {GPU_HOST}"]
    env = dict(item.split("=", 1) for item in spec["Env"])
    assert GPU_HOST in env["no_proxy"].split(",")
    check = policy_from_env(swarm_proxy_env(**SUBDOMAIN_ENV))
    encoded = json.dumps(body).encode()
    assert json.loads(check("POST", CREATE, encoded).body) == body


def test_a_later_spawn_takes_chps_address_from_the_one_inspect() -> None:
    joined = {
        "Name": ALICES_NETWORK,
        "Labels": {OWNER_LABEL: "alice"},
        "Containers": {
            f"id{i}": {"Name": name, "IPv4Address": f"10.0.7.{i + 2}/24"}
            for i, name in enumerate([*FRONTENDS, EGRESS])
        },
    }
    _, client = subdomain_start(network=joined)
    assert created_body(client)["TaskTemplate"]["ContainerSpec"]["Hosts"] == [
        f"10.0.7.3 {GPU_HOST}"
    ]
    assert [p for _, p, _, _ in client.sent if p.startswith("/networks")] == [
        f"/networks/{ALICES_NETWORK}"
    ]


def test_chp_without_an_address_on_the_users_network_is_a_500_naming_it() -> None:
    joined = {
        "Name": ALICES_NETWORK,
        "Labels": {OWNER_LABEL: "alice"},
        "Containers": {f"id{i}": {"Name": n} for i, n in enumerate([*FRONTENDS, EGRESS])},
    }
    with pytest.raises(web.HTTPError, match=r"labhub-proxy-chp.*has no address") as raised:
        subdomain_start(network=joined)
    assert raised.value.status_code == 500


@pytest.mark.parametrize(
    ("hosts", "env", "reason"),
    [
        # A package index pointed at another address: the user's pip would trust it.
        (["10.0.9.3 pypi.org"], SUBDOMAIN_ENV, "the only names allowed are " + GPU_HOST),
        ([f"10.0.9.3 {GPU_HOST} pypi.org"], SUBDOMAIN_ENV, "the only names allowed"),
        ([f"10.0.9.3 {GPU_HOST}\n10.0.9.4 pypi.org"], SUBDOMAIN_ENV, "the only names allowed"),
        ([f"10.0.9.3\t{GPU_HOST}"], SUBDOMAIN_ENV, "not 'IPv4-ADDRESS NAME'"),
        ([f"{GPU_HOST}:10.0.9.3"], SUBDOMAIN_ENV, "not 'IPv4-ADDRESS NAME'"),
        ([f"10.0.9.3 {GPU_HOST}", f"10.0.9.4 {GPU_HOST}"], SUBDOMAIN_ENV, "names a host twice"),
        (f"10.0.9.3 {GPU_HOST}", SUBDOMAIN_ENV, "list of at most"),
        # Without SUBDOMAINS no name at all.
        ([f"10.0.9.3 {GPU_HOST}"], {}, r"none \(SUBDOMAINS is off\)"),
        ([f"10.0.9.3 {GPU_HOST}"], {**SUBDOMAIN_ENV, "DOMAIN": "other.example"}, "allowed"),
    ],
)
def test_a_service_resolves_no_other_name_than_chps(
    sent_body: dict[str, Any], hosts: object, env: dict[str, str], reason: str
) -> None:
    body = copy.deepcopy(sent_body)
    body["TaskTemplate"]["ContainerSpec"]["Hosts"] = hosts
    check = policy_from_env(swarm_proxy_env(**env))
    with pytest.raises(Refused, match=reason):
        check("POST", CREATE, json.dumps(body).encode())


def test_the_swarm_proxy_reads_subdomains_as_the_hub_does() -> None:
    with pytest.raises(SystemExit, match="SUBDOMAINS='yes' is not valid: use true or false"):
        policy_from_env(swarm_proxy_env(SUBDOMAINS="yes"))


# --- A registry that wants a login to pull (REGISTRY_USERNAME) ---------------------------
REGISTRY = "registry.lab.example.edu:5000/labhub"
PINNED = f"{REGISTRY}/workspace@sha256:{'a' * 64}"
PULL_LOGIN = {
    "REGISTRY": REGISTRY, "IMAGE_DIGESTS": f"{IMAGE}={PINNED}",
    "REGISTRY_USERNAME": "robot$lab", "REGISTRY_PASSWORD": "t0k3n",
}  # fmt: skip


def swarm_proxy_env(**env: str) -> dict[str, str]:
    return {
        "PROXY_POLICY": "swarm", "ALLOWED_IMAGES": IMAGE, "DOCKER_NETWORK": POLICY.network,
        "FRONTEND_CONTAINERS": ",".join(FRONTENDS), **env,
    }  # fmt: skip


def engine_heads(
    tmp_path: Path, env: dict[str, str], requests: list[tuple[str, str, bytes, str]]
) -> list[bytes]:
    """Each of `requests` (method, target, body, extra client header lines) sent to the
    real handler of a Swarm manager's proxy with `env`, in front of a stand-in engine:
    the head of what the engine got for each (b"" if nothing)."""
    check = policy_from_env(swarm_proxy_env(**env))
    socket_path = str(tmp_path / "engine.sock")
    heads: list[bytes] = []

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads[-1] = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def run() -> None:
        stand_in = await asyncio.start_unix_server(engine, path=socket_path)
        proxy = await asyncio.start_server(
            lambda r, w: handle(check, socket_path, DiskUsage(""), r, w), "127.0.0.1", 0
        )
        port = proxy.sockets[0].getsockname()[1]
        async with stand_in, proxy:
            for method, target, body, extra in requests:
                heads.append(b"")
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                head = (
                    f"{method} {target} HTTP/1.1\r\nHost: docker\r\n{extra}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
                await reader.read()
                writer.close()

    asyncio.run(run())
    return heads


def registry_auth_of(head: bytes) -> dict[str, str] | None:
    found = re.findall(rb"(?im)^x-registry-auth: *(\S+)\r$", head)
    return json.loads(base64.urlsafe_b64decode(found[0])) if found else None


def test_with_a_pull_login_each_service_the_proxy_creates_carries_it_for_its_node(
    tmp_path: Path, sent_body: dict[str, Any]
) -> None:
    """The proxy's own login goes with a service create, and only with it; a header the
    client sent is never forwarded (the hub holds no say in what the nodes log in with)."""
    stolen = "X-Registry-Auth: c3RvbGVu\r\n"
    pinned = copy.deepcopy(sent_body)
    pinned["TaskTemplate"]["ContainerSpec"]["Image"] = PINNED
    create = ("POST", CREATE, json.dumps(pinned).encode(), stolen)
    remove = ("DELETE", "/v1.41/services/svc123", b"", stolen)
    nodes = ("GET", "/v1.41/nodes", b"", "")
    with_login = engine_heads(tmp_path, PULL_LOGIN, [create, remove, nodes])
    assert registry_auth_of(with_login[0]) == {
        "username": "robot$lab", "password": "t0k3n",
        "serveraddress": "registry.lab.example.edu:5000",
    }  # fmt: skip
    # The DELETE's service is owner-checked first: the stand-in's 201 to that inspect ends
    # it, so nothing but the inspect reaches the engine; the list, plainly.
    assert [registry_auth_of(head) for head in with_login[1:]] == [None, None]
    # Without a login, none: the client's never passes.
    plain = ("POST", CREATE, json.dumps(sent_body).encode(), stolen)
    [anonymous] = engine_heads(tmp_path, {}, [plain])
    assert anonymous.startswith(b"POST /v1.41/services/create ")
    assert registry_auth_of(anonymous) is None


@pytest.mark.parametrize(
    "env",
    [
        {"REGISTRY_USERNAME": "robot"},
        {"REGISTRY_PASSWORD": "t0k3n"},
        {"REGISTRY_USERNAME": "robot", "REGISTRY_PASSWORD": "t0k3n"},  # no REGISTRY
    ],
    ids=["no-password", "no-username", "no-registry"],
)
def test_a_half_pull_login_stops_the_proxy_naming_both_settings(env: dict[str, str]) -> None:
    with pytest.raises(SystemExit, match="REGISTRY_USERNAME and REGISTRY_PASSWORD go together"):
        policy_from_env(swarm_proxy_env(**env))
