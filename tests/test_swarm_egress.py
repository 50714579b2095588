"""Swarm mode: the users' way out (the egress proxy) and a deleted user's clean-up.

Each user's server sits on an internal overlay network of its own (docs/scale-out.md,
"Isolation"): no route anywhere. The egress proxy (images/egress: Squid, its rules from
`labhub.egress`) is joined to each user's network like the hub, and has its own way out on
the manager; the spawner gives the servers HTTP_PROXY/HTTPS_PROXY. Deleting a user in the
hub (`LabSwarmSpawner.delete_forever`) removes their service, disconnects the frontends and
removes their network, through the swarm proxy's rules for exactly that.

The integration tests run on a two-engine test cluster (tests/swarm.py) with the real
Squid image on the manager and, as "the outside", a network namespace of the test's own
joined to the manager only: a web server there on a listed address, another port and an
unlisted address. No traffic leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub.objects import Hub, Server
from labhub.contract import OWNER_LABEL, user_network_name
from labhub.dockerpolicy import Policy, Refused, check_swarm_request
from labhub.egress import EgressRules, proxy_environment, squid_conf
from labhub.settings import NetworkSettings, Settings
from labhub.swarmspawner import LabSwarmSpawner, swarm_spawner_config
from swarm import Swarm, run
from swarmlab import (
    FRONTEND,
    IMAGE,
    NETWORK,
    PREFIX,
    Cluster,
    HubUser,
    assert_reached_on_its_network,
    spawners_through,
    swarm_proxy,
)
from swarmstack import EGRESS_IMAGE
from test_compose import rendered

from testsupport.dockerproxy import raw_request
from testsupport.images import REPO
from testsupport.minimal_env import MINIMAL_ENV, NETWORK_ENV
from testsupport.recording import RecordingAPIClient
from testsupport.waiting import wait_until

# Its clusters: the `swarm` run of `make test` (tests/run-all.sh).
pytestmark = pytest.mark.swarm

EGRESS = f"{NETWORK}-egress"
FRONTENDS = [FRONTEND, EGRESS]
POLICY = Policy(
    allowed_images=frozenset({IMAGE}), network=NETWORK, frontend_containers=frozenset(FRONTENDS)
)
ALICES = user_network_name("alice", NETWORK)
SETTINGS = Settings.from_env({**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK, "WORKSPACE_IMAGE": IMAGE})


# --- The rules, without an engine -------------------------------------------------------
def _rules(**change: Any) -> str:
    values: dict[str, Any] = {"internet": False, "lan_access": False, "allow": (), "never": ()}
    return squid_conf(EgressRules(**{**values, **change}))


def _access(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if line.startswith("http_access")]


@pytest.mark.unit
def test_the_never_list_comes_before_anything_the_settings_open() -> None:
    conf = _rules(
        internet=True, lan_access=True,
        allow=(ipaddress.IPv4Network("10.0.5.0/24"),), never=(ipaddress.IPv4Network("10.0.0.0/8"),),
    )  # fmt: skip
    access = _access(conf)
    assert access.index("http_access deny never") < access.index("http_access allow listed")
    assert "acl never dst 0.0.0.0/8 10.0.0.0/8 127.0.0.0/8 169.254.0.0/16" in conf
    assert access[-1] == "http_access allow all"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("internet", "lan", "last_two"),
    [
        (True, False, ["http_access deny lan", "http_access allow all"]),  # the default .env
        (False, True, ["http_access allow lan", "http_access deny all"]),
        (False, False, ["http_access deny lan", "http_access deny all"]),
    ],
)
def test_the_settings_mean_what_they_mean_on_one_host(
    internet: bool, lan: bool, last_two: list[str]
) -> None:
    access = _access(_rules(internet=internet, lan_access=lan))
    assert access[-2:] == last_two
    # Never more than web ports, never Squid's own pages or its host.
    assert access[:5] == [
        "http_access deny !web_ports", "http_access deny manager",
        "http_access deny to_localhost", "http_access deny to_linklocal", "http_access deny never",
    ]  # fmt: skip


@pytest.mark.unit
def test_the_default_settings_work_in_swarm_mode() -> None:
    """Before, check-settings refused USER_INTERNET=true (the default) with ENGINE=swarm."""
    for egress in ({}, {"USER_LAN_ACCESS": "true", "USER_EGRESS_ALLOW": "10.1.2.3"}):
        net = NetworkSettings.from_env({**NETWORK_ENV, "ENGINE": "swarm", **egress})
        assert net.internet


@pytest.mark.unit
def test_a_server_gets_the_proxy_in_both_cases_and_reaches_the_frontends_directly() -> None:
    env = proxy_environment(EGRESS, [FRONTEND])
    url = f"http://{EGRESS}:3128"
    assert env["HTTP_PROXY"] == env["http_proxy"] == env["HTTPS_PROXY"] == url
    assert env["NO_PROXY"] == env["no_proxy"] == f"localhost,127.0.0.1,{FRONTEND}"


class _Manager(RecordingAPIClient):
    """A Swarm manager where alice's service is gone or going, and her network has the
    frontends, the engine's own endpoint and (until the service goes) her task on it."""

    def __init__(self, busy: int = 0) -> None:
        super().__init__(strip="/v1.41")
        self.busy = busy  # how many removes the engine answers "active endpoints" to

    def answer(self, path: str) -> tuple[int, Any]:
        method = self.sent[-1][0]
        if path.startswith("/services/"):
            return 200, {}
        if method == "DELETE" and path == f"/networks/{ALICES}":
            self.busy -= 1
            return (403, {"message": "has active endpoints"}) if self.busy >= 0 else (204, {})
        if path.endswith("/disconnect"):
            return 200, {}
        endpoints = [*FRONTENDS, f"{ALICES}-endpoint", f"{PREFIX}-alice.1.x"]
        containers = {f"id{i}": {"Name": name} for i, name in enumerate(endpoints)}
        return 200, {"Name": ALICES, "Labels": {OWNER_LABEL: "alice"}, "Containers": containers}


def _delete_alice(manager: _Manager, name: str = "") -> list[tuple[str, str, dict[str, Any]]]:
    """LabSwarmSpawner.delete_forever for alice's server `name` on `manager`; what it sent,
    each request checked by the swarm proxy's rules (Refused raises)."""
    original = LabSwarmSpawner._client
    LabSwarmSpawner._client = manager
    try:
        spawner = LabSwarmSpawner(
            user=HubUser("alice"), hub=Hub(), frontend_containers=FRONTENDS, task_timeout=5.0,
            **swarm_spawner_config(SETTINGS),
        )  # fmt: skip
        # The hub's record of the server, of which delete_forever reads the name.
        spawner.orm_spawner = SimpleNamespace(name=name, server=None)
        asyncio.run(spawner.delete_forever())
    finally:
        LabSwarmSpawner._client = original
    sent = []
    for method, path, _, data in manager.sent:
        allowed = check_swarm_request(POLICY, method, f"/v1.41{path}", (data or "").encode())
        sent.append((method, path, json.loads(allowed.body or b"{}")))
    return sent


@pytest.mark.unit
def test_deleting_a_user_removes_the_service_the_frontends_connections_and_the_network() -> None:
    sent = _delete_alice(_Manager(busy=2))
    assert sent == [
        ("DELETE", f"/services/{PREFIX}-alice", {}),
        ("GET", f"/networks/{ALICES}", {}),
        # The frontends only: not the engine's endpoint, never her task.
        *[("POST", f"/networks/{ALICES}/disconnect", {"Container": c}) for c in FRONTENDS],
        # Until the removed service's task lets go of the network.
        *[("DELETE", f"/networks/{ALICES}", {})] * 3,
    ]


@pytest.mark.unit
def test_deleting_a_named_server_leaves_the_users_network() -> None:
    # Its own service only (its name is the spawner's name template's).
    [(method, path, _)] = _delete_alice(_Manager(), name="gpu")
    assert method == "DELETE" and path.startswith(f"/services/{PREFIX}-alice")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("method", "target", "body", "reason"),
    [
        ("DELETE", f"/v1.41/networks/{NETWORK}", {}, "not a user's network"),
        ("DELETE", "/v1.41/networks/bridge", {}, "not a user's network"),
        ("POST", f"/v1.41/networks/{ALICES}/disconnect", {"Container": f"{PREFIX}-bob.1.x"},
         "only the frontends"),
        ("POST", f"/v1.41/networks/{ALICES}/disconnect", {"Container": FRONTEND, "Force": True},
         "Force must be false"),
        ("POST", f"/v1.41/networks/{ALICES}/disconnect",
         {"Container": FRONTEND, "EndpointConfig": {}}, "not allowed"),
        ("POST", f"/v1.41/networks/{NETWORK}/disconnect", {"Container": FRONTEND},
         "not a user's network"),
    ],
)  # fmt: skip
def test_the_proxy_removes_and_disconnects_nothing_else(
    method: str, target: str, body: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, method, target, json.dumps(body).encode() if body else b"")


@pytest.mark.unit
def test_a_remove_is_owner_checked_by_the_networks_labels() -> None:
    allowed = check_swarm_request(POLICY, "DELETE", f"/v1.41/networks/{ALICES}", b"")
    assert (allowed.owned_container, allowed.owned_kind) == (ALICES, "network")


@pytest.mark.integration
def test_make_up_starts_the_egress_proxy_as_a_frontend_of_every_users_network(
    tmp_path: Path,
) -> None:
    """compose/swarm.yml as `make up` renders it: the egress container under the name the
    hub and the Docker proxy are given, unprivileged, its rules mounted read-only, its own
    network on EGRESS_SUBNET."""
    services = rendered(tmp_path, "docker-compose.yml", "swarm.yml")
    egress, hub, proxy = services["egress"], services["hub"], services["docker-proxy"]
    name = egress["container_name"]
    assert hub["environment"]["EGRESS_CONTAINER"] == name  # type: ignore[index]
    assert name in proxy["environment"]["FRONTEND_CONTAINERS"].split(",")  # type: ignore[index]
    assert egress["cap_drop"] == ["ALL"] and "no-new-privileges:true" in egress["security_opt"]  # type: ignore[operator]
    [conf] = egress["volumes"]  # type: ignore[misc]
    assert conf["target"] == "/etc/squid/squid.conf" and conf["read_only"]  # type: ignore[index]
    assert conf["source"].endswith(".build/egress/squid.conf")  # type: ignore[index]
    assert set(egress["networks"]) == {"egress"}  # type: ignore[arg-type]


# --- On a test cluster: the real Squid, the real proxy, real engines -----------------------
# "The outside": a namespace of the test's joined to the manager's only (a /29 of its own).
OUTSIDE = ipaddress.IPv4Network("192.168.253.0/29")
MANAGER_END, LISTED, UNLISTED = (str(OUTSIDE[i]) for i in (1, 2, 3))
WEB_PORT, OTHER_PORT = 8080, 81


@contextlib.contextmanager
def outside_web(swarm: Swarm) -> Iterator[None]:
    """Web servers in a namespace linked to the manager's only: on WEB_PORT and OTHER_PORT,
    at LISTED and UNLISTED; each answers "hello from outside"."""
    manager = swarm.manager
    name, here, there = f"{manager.name}web", f"{manager.name}o", f"{manager.name}p"
    servers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "hello").write_text("hello from outside\n")
        try:
            on_manager = ("ip", "-n", manager.name)
            run("ip", "netns", "add", name)
            run(*on_manager, "link", "add", here, "type", "veth", "peer", "name", there)
            run(*on_manager, "link", "set", there, "netns", name)
            run(*on_manager, "addr", "add", f"{MANAGER_END}/29", "dev", here)
            run(*on_manager, "link", "set", here, "up")
            for address in (LISTED, UNLISTED):
                run("ip", "-n", name, "addr", "add", f"{address}/29", "dev", there)
            run("ip", "-n", name, "link", "set", there, "up")
            for port in (WEB_PORT, OTHER_PORT):
                command = ["nsenter", f"--net=/run/netns/{name}", sys.executable, "-m",
                          "http.server", str(port), "--directory", root]  # fmt: skip
                servers.append(
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            for address, port in ((LISTED, WEB_PORT), (UNLISTED, WEB_PORT), (LISTED, OTHER_PORT)):
                wait_until(
                    lambda a=address, p=port: from_manager(swarm, a, p),  # type: ignore[misc]
                    30, f"the outside's web server at {address}:{port}",
                )  # fmt: skip
            yield
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)
            run("ip", "netns", "del", name, check=False)


def from_manager(swarm: Swarm, address: str, port: int) -> bool:
    """Whether the web server answers at address:port from the manager's namespace."""
    url = f"http://{address}:{port}/hello"
    fetch = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=3).read().decode())"
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{swarm.manager.name}", sys.executable, "-c", fetch],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return "hello from outside" in result.stdout


def egress_config(swarm: Swarm, out_network: str) -> str:
    """The egress proxy's squid.conf as `make egress-conf` writes it (the script's --never
    list read from the manager, then `labhub egress-conf`), for USER_EGRESS_ALLOW the
    listed address, no internet, no LAN."""
    manager = {**os.environ, "DOCKER_HOST": f"unix://{swarm.manager.socket}"}
    never = run("bash", "scripts/swarm-manager.sh", "never", cwd=REPO, env=manager).split()
    settings = {**MINIMAL_ENV, **NETWORK_ENV, "USER_INTERNET": "false", "USER_EGRESS_ALLOW": LISTED}
    conf = run(sys.executable, "-m", "labhub.cli", "egress-conf", *never,
               env={**os.environ, **settings})  # fmt: skip
    # The nodes, the Swarm's address pool and the manager's bridge networks are listed.
    assert set(never[0::2]) == {"--never"}
    subnets = swarm.manager.docker(
        "network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", out_network
    ).split()
    assert {*(node.address for node in swarm.nodes), "10.0.0.0/8", *subnets} <= set(never[1::2])
    return conf


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two engines, the lab's overlay, the swarm proxy with the hub's stand-in and the
    egress proxy as frontends, Squid running on the manager, the outside's web servers."""
    with Swarm(2, images=[IMAGE], manager_images=[EGRESS_IMAGE]) as swarm:
        manager = swarm.manager
        manager.docker("network", "create", "--driver", "overlay", "--attachable", NETWORK)
        out = f"{NETWORK}-egress-out"
        manager.docker("network", "create", out)
        with tempfile.TemporaryDirectory() as conf_dir, outside_web(swarm):
            conf = Path(conf_dir) / "squid.conf"
            conf.write_text(egress_config(swarm, out))
            conf.chmod(0o644)
            manager.docker(
                "run", "--detach", "--name", EGRESS, "--network", out, "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges:true",
                "--volume", f"{conf}:/etc/squid/squid.conf:ro", EGRESS_IMAGE,
            )  # fmt: skip
            with (
                swarm_proxy(swarm, FRONTEND_CONTAINERS=",".join(FRONTENDS)) as port,
                spawners_through(port),
            ):
                yield Cluster(swarm, port)


def start(cluster: Cluster, user: str) -> LabSwarmSpawner:
    """`user`'s server started as the hub configures LabSwarmSpawner with an egress proxy."""
    spawner = spawner_for(cluster, user)
    if not asyncio.run(spawner.get_object()):
        assert_reached_on_its_network(asyncio.run(spawner.start()))
    cluster.states[user] = spawner.get_state()
    return spawner


def spawner_for(cluster: Cluster, user: str) -> LabSwarmSpawner:
    spawner = cluster.spawner(user)
    spawner.frontend_containers = FRONTENDS
    spawner.egress_proxy = EGRESS
    spawner.server = Server(base_url=f"/user/{user}/")
    return spawner


# One HTTP request through the egress proxy from inside a server: the status line and,
# when it answers, the body's first line.
THROUGH_PROXY = (
    "use IO::Socket::INET; my ($proxy, $url) = @ARGV; my ($h, $p) = split /:/, $proxy; "
    "my $c = IO::Socket::INET->new(PeerAddr => $h, PeerPort => $p, Timeout => 5) "
    'or die "no proxy: $@"; print $c "GET $url HTTP/1.0\\r\\n\\r\\n"; '
    "my @r = <$c>; print $r[0]; print $r[-1]"
)


def through_proxy(cluster: Cluster, user: str, url: str) -> str:
    node, container = cluster.task_container(user)
    proxy = node.docker("exec", container, "printenv", "HTTP_PROXY").strip()
    assert proxy == f"http://{EGRESS}:3128"
    host_port = proxy.removeprefix("http://")

    def answered() -> str:  # Squid needs a moment to join a new user's network
        out = node.docker("exec", container, "perl", "-e", THROUGH_PROXY, host_port, url,
                          check=False, timeout=60)  # fmt: skip
        return out if out.startswith("HTTP/") else ""

    return wait_until(answered, 60, f"an answer from the egress proxy to {url}")


@pytest.mark.integration
def test_a_listed_destination_answers_through_the_proxy_and_not_without_it(
    cluster: Cluster,
) -> None:
    start(cluster, "alice")
    answer = through_proxy(cluster, "alice", f"http://{LISTED}:{WEB_PORT}/hello")
    assert answer.startswith("HTTP/1.1 200") and "hello from outside" in answer, answer
    # Without the proxy: no route out of the user's internal network.
    assert cluster.connects("alice", LISTED, WEB_PORT).startswith("failed"), "reached directly"


@pytest.mark.integration
def test_the_proxy_refuses_every_other_destination(cluster: Cluster) -> None:
    start(cluster, "alice")
    bob = start(cluster, "bob")
    bobs_address, _ = asyncio.run(bob.get_ip_and_port())
    denied = [
        f"http://{LISTED}:{OTHER_PORT}/hello",  # another port (it answers the manager)
        f"http://{UNLISTED}:{WEB_PORT}/hello",  # a private address not listed (it answers too)
        f"http://{bobs_address}:8888/",  # another user's server, by address
        f"http://{PREFIX}-bob:8888/",  # and by name (the proxy is on Bob's network)
        f"http://{cluster.swarm.manager.address}:2377/",  # a node's Swarm port
        "http://169.254.169.254/latest/meta-data/",  # the metadata address
    ]
    for url in denied:
        answer = through_proxy(cluster, "alice", url)
        assert answer.startswith("HTTP/1.1 403"), (url, answer)
    # The allowed one still answers: the refusals are the rules, not a dead proxy.
    assert "hello from outside" in through_proxy(
        cluster, "alice", f"http://{LISTED}:{WEB_PORT}/hello"
    )


def engine_networks(cluster: Cluster) -> list[str]:
    return sorted(cluster.swarm.manager.docker("network", "ls", "--format", "{{.Name}}").split())


@pytest.mark.integration
def test_deleting_a_user_removes_their_network_and_the_proxy_removes_nothing_else(
    cluster: Cluster,
) -> None:
    start(cluster, "carol")
    carols = user_network_name("carol", NETWORK)
    assert carols in engine_networks(cluster)
    spawner = spawner_for(cluster, "carol")
    asyncio.run(spawner.stop())
    asyncio.run(spawner.delete_forever())
    # The manager accepted the remove; each engine lets go of its copy within seconds.
    for node in cluster.swarm.nodes:
        wait_until(
            lambda n=node: carols not in n.docker("network", "ls", "--format", "{{.Name}}").split(),  # type: ignore[misc]
            30, f"{carols} gone from {node.name}",
        )  # fmt: skip
    services = cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}").split()
    assert f"{PREFIX}-carol" not in services

    # Through the proxy, as an attacker holding the hub's access: nothing else goes.
    start(cluster, "bob")
    bobs = user_network_name("bob", NETWORK)
    _, bobs_task = cluster.task_container("bob")
    unlabelled = user_network_name("nobody", NETWORK)
    manager = cluster.swarm.manager
    manager.docker("network", "create", "--driver", "overlay", "--attachable", unlabelled)
    endpoints = ("network", "inspect", "--format", "{{json .Containers}}", bobs)
    try:
        before = engine_networks(cluster)
        joined = manager.docker(*endpoints)
        for method, target, body, reason in (
            ("DELETE", f"/v1.41/networks/{NETWORK}", b"", "not a user's network"),
            ("DELETE", f"/v1.41/networks/{unlabelled}", b"", "not a labhub user network"),
            ("POST", f"/v1.41/networks/{bobs}/disconnect",
             json.dumps({"Container": bobs_task}).encode(), "only the frontends"),
            ("POST", f"/v1.41/networks/{bobs}/disconnect",
             json.dumps({"Container": FRONTEND, "Force": True}).encode(), "Force must be false"),
        ):  # fmt: skip
            status, answer = raw_request(cluster.proxy_port, method, target, body)
            assert status == 403 and reason in answer, (target, answer)
        assert engine_networks(cluster) == before
        assert manager.docker(*endpoints) == joined
    finally:
        manager.docker("network", "rm", unlabelled)
