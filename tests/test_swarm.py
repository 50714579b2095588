"""The test cluster the Swarm mode is built on: real engines, one overlay network.

These prove the ground the scale-out work stands on (tests/swarm.py): engines in their
own network namespaces form one Swarm, a task is placed on the node a constraint names,
and a container on the manager reaches it over an attachable overlay network in
`dnsrr` mode, with no registry and nothing leaving the machine.

On that cluster, labhub's first Swarm slice: LabSwarmSpawner, with every Docker call
through the real Docker proxy (PROXY_POLICY=swarm) in front of the manager, places users'
servers, hardened, on the nodes of their homes, each on an internal overlay network of its
own that only the frontends (the hub's container) join, driven from this process and by a
real JupyterHub in a container on the manager; the proxy refuses dangerous services and
networks before the engine sees them. With HOME_NFS (a second proxy in front of the same
manager) only each home's exact NFS volume options pass, and a spawn makes that volume on
its node and, with no NFS client here, ends naming the export. What is not built yet is
listed in docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyterhub.objects import Hub, Server
from labhub.contract import OWNER_LABEL, nfs_home_options, user_network_name, volume_name_for
from labhub.settings import Settings
from labhub.swarmplacement import SwarmNode, node_for
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner, swarm_spawner_config
from swarm import Node, Swarm, run
from swarmlab import (
    CLIENT,
    FRONTEND,
    IMAGE,
    NETWORK,
    PREFIX,
    SERVER,
    Cluster,
    lab_cluster,
    make_user_network,
    network_body,
    service_body,
    spawners_through,
    wait_for_running_task,
)
from tornado import web

from testsupport.dockerproxy import raw_request, running_proxy
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser
from testsupport.waiting import wait_until

pytestmark = [pytest.mark.swarm, pytest.mark.integration]


def test_a_task_on_a_worker_answers_a_container_on_the_manager_over_the_overlay() -> None:
    with Swarm(2, images=[IMAGE]) as swarm:
        worker = swarm.workers[0]
        nodes = swarm.manager.docker("node", "ls", "--format", "{{.ID}} {{.Status}}")
        assert nodes.count("Ready") == 2, nodes
        swarm.manager.docker("network", "create", "--driver", "overlay", "--attachable", "lab")
        swarm.manager.docker(
            "service", "create", "--detach", "--name", "web", "--network", "lab",
            "--endpoint-mode", "dnsrr", "--no-resolve-image",
            "--constraint", f"node.id=={worker.node_id}", "--env", f"NODE={worker.node_id}",
            IMAGE, "perl", "-e", SERVER,
        )  # fmt: skip
        assert wait_for_running_task(swarm, "web") == worker.node_id
        answer = swarm.manager.docker(
            "run", "--rm", "--network", "lab", IMAGE, "perl", "-e", CLIENT, timeout=120
        )
        assert answer.strip() == f"hello from {worker.node_id}"
    # Nothing of the cluster is left on the host.
    assert not any(node.name in run("ip", "netns", "list") for node in swarm.nodes)
    assert swarm.bridge not in run("ip", "link", "show")
    assert swarm.bridge not in run("iptables", "-S", "FORWARD")
    mounts = Path("/proc/self/mounts").read_text()  # (other runs' clusters may be up)
    assert not any(f"labhub-test-swarm/{node.name}" in mounts for node in swarm.nodes)


# --- labhub on the cluster: LabSwarmSpawner through the proxy in front of the manager -----
# JupyterHub, CHP and the hub's dependencies come from this stack's hub image; labhub's
# own code from this checkout, mounted over it.
HUB_IMAGE = f"labhub/hub:{os.environ.get('LABHUB_TEST_VERSION', 'test')}"
CHECKOUT = Path(__file__).parents[1]
# The same stand-in speaking just enough HTTP for the hub and its proxy: it names the user
# and the path it was asked for.
USER_HTTP_SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8888, Listen => 5, "
    "ReuseAddr => 1) or die $!; while (my $c = $s->accept) { my ($path) = <$c> =~ "
    "m{^[A-Z]+ (\\S+)}; while (my $h = <$c>) { last if $h =~ /^\\r?\\n$/ } "
    'my $b = qq({"user": "$ENV{JUPYTERHUB_USER}", "path": "$path"}); '
    'print $c "HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n'
    'Content-Length: " . length($b) . "\\r\\n\\r\\n$b"; close $c }'
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three engines with the lab's overlay network and Docker proxy (tests/swarmlab.py);
    the manager also holds the hub image."""
    with lab_cluster(3, manager_images=[HUB_IMAGE]) as running:
        yield running


def test_two_users_run_on_the_nodes_placement_chose_hardened_and_reachable_over_the_overlay(
    cluster: Cluster,
) -> None:
    alice, bob = cluster.start("alice"), cluster.start("bob")
    # The first spawns spread: each user's task runs on the node recorded as their home.
    assert cluster.running_node(f"{PREFIX}-alice") == alice.home_node
    assert cluster.running_node(f"{PREFIX}-bob") == bob.home_node
    assert alice.home_node != bob.home_node
    home_node = cluster.node(alice.home_node)
    volume = volume_name_for("alice", NETWORK)
    # The home volume exists on that node's engine, and only there.
    for node in cluster.swarm.nodes:
        volumes = node.docker("volume", "ls", "--quiet").split()
        assert (volume in volumes) == (node is home_node), node.name
    # LabSpawner's hardening, read back from the engine that runs the task.
    [container] = home_node.docker(
        "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={PREFIX}-alice"
    ).split()
    inspected = json.loads(home_node.docker("inspect", container))[0]
    host = inspected["HostConfig"]
    assert inspected["Config"]["User"] == "1000:100"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert host["Memory"] == alice.mem_limit and host["PidsLimit"] == alice.pids_limit
    assert host["NanoCpus"] == int(alice.cpu_limit * 10**9)
    assert not [m for m in inspected["Mounts"] if m["Type"] == "bind"]
    status = home_node.docker("exec", container, "cat", "/proc/1/status")
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status
    # The servers answer the frontend by service name over their own overlay (dnsrr).
    for user in ("alice", "bob"):
        assert cluster.from_frontend(user) == f"hello from {user}"


@pytest.mark.parametrize("where", ["different-nodes", "same-node"])
def test_one_users_server_cannot_reach_anothers(cluster: Cluster, where: str) -> None:
    if where == "different-nodes":
        users = ("alice", "bob")  # placement spreads first spawns (the test above)
    else:
        users = ("carol", "dave")  # both homes recorded on one worker: pinned there
        for user in users:
            cluster.states.setdefault(user, {HOME_NODE_STATE: cluster.swarm.workers[0].node_id})
    (one, other) = users
    for user in users:
        cluster.start(user)
    nodes = {cluster.running_node(f"{PREFIX}-{user}") for user in users}
    assert len(nodes) == (1 if where == "same-node" else 2)
    node, container = cluster.task_container(other)
    endpoints = json.loads(
        node.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container)
    )
    assert list(endpoints) == [user_network_name(other, NETWORK)]
    addresses = [endpoint["IPAddress"] for endpoint in endpoints.values()]
    # Every way to the other's server fails: its service name does not resolve on one's
    # network, its task's address has no route; the frontend reaches both at once.
    for target in (f"{PREFIX}-{other}", *addresses):
        reached = cluster.connects(one, target, 8888)
        assert reached.startswith("failed"), (target, reached)
        assert cluster.connects(one, f"{PREFIX}-{one}", 8888) == "connected"
    for user in users:
        assert cluster.from_frontend(user) == f"hello from {user}"
    # Nor any node: no default route out of an internal network, so not the engines'
    # ports either (2377 control, 7946 gossip), where a forged VXLAN packet could enter.
    for peer in cluster.swarm.nodes:
        port = 2377 if peer is cluster.swarm.manager else 7946
        reached = cluster.connects(one, peer.address, port)
        assert reached.startswith("failed"), (peer.name, reached)
    node, container = cluster.task_container(one)
    routes = node.docker("exec", container, "cat", "/proc/net/route").splitlines()[1:]
    assert routes and not [route for route in routes if route.split()[1] == "00000000"], routes


def test_a_stopped_users_next_spawn_lands_on_their_home_not_where_a_first_spawn_goes(
    cluster: Cluster,
) -> None:
    cluster.start("alice")
    cluster.stop("alice")
    home = cluster.states["alice"][HOME_NODE_STATE]
    manager = cluster.swarm.manager
    assert not manager.docker("service", "ls", "--quiet", "--filter", f"name={PREFIX}-alice")
    newcomers = make_first_spawns_go_elsewhere(cluster, home, "user", cluster.start)
    cluster.start("alice")
    assert cluster.running_node(f"{PREFIX}-alice") == home
    # Her files are still there: the same volume, on the same node.
    assert volume_name_for("alice", NETWORK) in cluster.node(home).docker("volume", "ls", "-q")
    for user in newcomers:
        cluster.stop(user)


def make_first_spawns_go_elsewhere(
    cluster: Cluster, home: str, prefix: str, start: Callable[[str], object]
) -> list[str]:
    """Start new users (`<prefix>0`, ...) until a first spawn would no longer be placed on
    node `home`, so a spawn that lands there was not simply a first spawn's choice."""
    nodes = [SwarmNode(node.node_id, ready=True, active=True) for node in cluster.swarm.nodes]
    newcomers: list[str] = []
    while node_for(None, nodes, Counter(running_homes(cluster))) == home:
        # Each lands on `home` (the first-spawn choice), which soon makes it the busier.
        assert len(newcomers) < 2 * len(nodes), Counter(running_homes(cluster))
        newcomers.append(f"{prefix}{len(newcomers)}")
        start(newcomers[-1])
    return newcomers


def running_homes(cluster: Cluster) -> list[str]:
    """The node of each running lab service, read from the manager (not from the spawner)."""
    names = cluster.swarm.manager.docker(
        "service", "ls", "--quiet", "--filter", f"label={OWNER_LABEL}"
    ).split()
    return [cluster.running_node(name) for name in names]


@pytest.mark.parametrize(
    ("attack", "container", "reason"),
    [
        ("host-bind", {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}, "no binds"),
        ("root", {"User": "0:0"}, "never root"),
        ("root-by-omission", {"User": None}, "never root"),
        (
            "volume-bound-to-the-host",
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": f"{PREFIX}-mallory",
                        "Target": "/home/jovyan",
                        "VolumeOptions": {
                            "DriverConfig": {
                                "Name": "local",
                                "Options": {"type": "none", "o": "bind", "device": "/"},
                            },
                        },
                    }
                ]
            },
            "VolumeOptions",
        ),
        ("capabilities", {"CapabilityAdd": ["SYS_ADMIN"]}, "CapabilityAdd"),
    ],
)
def test_the_proxy_refuses_a_dangerous_service_and_the_engine_never_sees_it(
    cluster: Cluster, attack: str, container: dict[str, Any], reason: str
) -> None:
    status, answer = raw_request(
        cluster.proxy_port, "POST", "/v1.41/services/create", service_body(**container)
    )
    assert status == 403, answer
    assert reason in answer
    services = cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}").split()
    assert f"{PREFIX}-mallory" not in services


def engine_networks(cluster: Cluster) -> list[str]:
    return cluster.swarm.manager.docker("network", "ls", "--format", "{{.Name}}").split()


@pytest.mark.parametrize(
    ("attack", "change", "reason"),
    [
        # Reachable from the users' nodes' LAN and the internet, no longer internal.
        ("not-internal", {"Internal": False}, "internal"),
        # A subnet over the hub's or the LAN's addresses.
        ("address-plan", {"IPAM": {"Config": [{"Subnet": "10.233.0.0/16"}]}}, "no ipam"),
        ("bob's-name", {"Name": user_network_name("bob", NETWORK)}, "not the network of"),
    ],
)
def test_the_proxy_refuses_a_network_beyond_the_users_own_and_the_engine_never_sees_it(
    cluster: Cluster, attack: str, change: dict[str, Any], reason: str
) -> None:
    before = engine_networks(cluster)
    status, answer = raw_request(
        cluster.proxy_port, "POST", "/v1.41/networks/create", network_body(**change)
    )
    assert status == 403 and reason in answer, answer
    assert engine_networks(cluster) == before


def test_only_a_frontend_is_connected_to_a_users_network_through_the_proxy(
    cluster: Cluster,
) -> None:
    cluster.start("alice")
    cluster.start("bob")
    bobs = user_network_name("bob", NETWORK)
    manager = cluster.swarm.manager
    # Alice's server's container, and a container on the manager that is not a frontend.
    _, alices_task = cluster.task_container("alice")
    manager.docker("run", "--detach", "--name", f"{NETWORK}-intruder", IMAGE, "sleep", "600")
    # A network named like a user's but not made by the spawner (no owner label).
    unlabelled = user_network_name("nobody", NETWORK)
    manager.docker("network", "create", "--driver", "overlay", "--attachable", unlabelled)
    try:
        for network, container, reason in (
            (bobs, alices_task, "only the frontends"),
            (bobs, f"{NETWORK}-intruder", "only the frontends"),
            (NETWORK, FRONTEND, "not a user's network"),
            (unlabelled, FRONTEND, "not a labhub user network"),
        ):
            body = json.dumps({"Container": container}).encode()
            status, answer = raw_request(
                cluster.proxy_port, "POST", f"/v1.41/networks/{network}/connect", body
            )
            assert status == 403 and reason in answer, (network, container, answer)
        joined = manager.docker("network", "inspect", "--format", "{{json .Containers}}", bobs)
        # Besides the frontend, only the engine's own endpoint of the network on this node
        # (and Bob's own server, when placement put it on the manager).
        names = {c["Name"] for c in json.loads(joined).values()}
        names -= {name for name in names if name.startswith(f"{PREFIX}-bob.")}
        assert names == {FRONTEND, f"{bobs}-endpoint"}
        assert "intruder" not in manager.docker("network", "inspect", unlabelled)
    finally:
        manager.docker("rm", "--force", f"{NETWORK}-intruder")
        manager.docker("network", "rm", unlabelled)


def test_the_same_service_without_the_attack_is_created_so_the_refusals_are_the_rules(
    cluster: Cluster,
) -> None:
    make_user_network(cluster.proxy_port)  # Mallory's own, as the spawner makes it
    status, answer = raw_request(
        cluster.proxy_port, "POST", "/v1.41/services/create", service_body()
    )
    assert status == 201, answer
    created = json.loads(answer)["ID"]
    try:
        assert cluster.swarm.manager.docker("service", "inspect", "--format", "{{.ID}}", created)
    finally:
        assert raw_request(cluster.proxy_port, "DELETE", f"/v1.41/services/{created}")[0] == 200


def test_the_hub_cannot_touch_a_service_that_is_not_a_users(cluster: Cluster) -> None:
    manager = cluster.swarm.manager
    manager.docker(
        "service", "create", "--detach", "--name", "lhswarm-infra", "--no-resolve-image",
        "--endpoint-mode", "dnsrr", IMAGE, "sleep", "600",
    )  # fmt: skip
    try:
        for method in ("GET", "DELETE"):
            status, answer = raw_request(
                cluster.proxy_port, method, "/v1.41/services/lhswarm-infra"
            )
            assert status == 403 and "not a labhub user service" in answer
        assert manager.docker("service", "ls", "--quiet", "--filter", "name=lhswarm-infra")
    finally:
        manager.docker("service", "rm", "lhswarm-infra")


# --- A real JupyterHub on the manager ---------------------------------------------------
# What the test sends the hub, from a container on the overlay network (the host has no
# way onto the nodes' networks): one request, its status and body as JSON.
HUB_CLIENT = """
import json, sys, urllib.error, urllib.request
method, url, token = sys.argv[1:4]
request = urllib.request.Request(
    url, method=method, data=b"" if method == "POST" else None,
    headers={"Authorization": "token " + token},
)
try:
    response = urllib.request.urlopen(request, timeout=30)
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code, "body": error.read().decode()}))
except OSError:  # not listening yet
    print(json.dumps({"status": 0, "body": ""}))
else:
    print(json.dumps({"status": response.status, "body": response.read().decode()}))
"""


@dataclass
class RunningHub:
    manager: Node
    client: str
    url: str
    token: str

    def request(self, method: str, path: str) -> tuple[int, str]:
        """(status, body) of one request to the hub's public port (status 0: refused)."""
        url = f"{self.url}{path}"
        output = self.manager.docker(
            "exec", self.client, "python", "-c", HUB_CLIENT, method, url, self.token
        )
        answer = json.loads(output)
        return answer["status"], answer["body"]

    def api(self, method: str, path: str) -> int:
        return self.request(method, f"/hub/api{path}")[0]

    def servers(self, user: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/hub/api/users/{user}")
        assert status == 200, body
        servers: dict[str, Any] = json.loads(body)["servers"]
        return servers

    def spawn(self, user: str) -> None:
        """Create the user if new, start their server, wait until the hub says it is ready."""
        assert self.api("POST", f"/users/{user}") in (201, 409)
        assert self.api("POST", f"/users/{user}/server") in (201, 202)
        wait_until(lambda: self.ready(user), 150, f"{user}'s server to be ready")

    def ready(self, user: str) -> bool:
        return bool(self.servers(user).get("", {}).get("ready"))


@pytest.fixture(scope="module")
def hub(cluster: Cluster) -> Iterator[RunningHub]:
    """JupyterHub (its config: tests/swarm-hub) in a container on the manager, on the lab's
    overlay network and, apart from it, on an internal network with labhub's Docker proxy,
    the only holder of the manager's socket, as in compose/docker-compose.yml."""
    manager = cluster.swarm.manager
    docker_api, proxy, hub_name = (
        f"{NETWORK}-docker-api",
        f"{NETWORK}-docker-proxy",
        f"{NETWORK}-hub",
    )
    source = ("-v", f"{CHECKOUT / 'hub'}:/src/hub:ro", "--env", "PYTHONPATH=/src/hub")
    manager.docker("network", "create", "--internal", docker_api)
    manager.docker(
        "run", "--detach", "--name", proxy, "--network", docker_api, "--user", "root",
        "-v", f"{manager.socket}:/var/run/docker.sock", *source,
        "--env", "PROXY_POLICY=swarm", "--env", f"ALLOWED_IMAGES={IMAGE}",
        "--env", f"DOCKER_NETWORK={NETWORK}", "--env", f"FRONTEND_CONTAINERS={hub_name}",
        HUB_IMAGE, "python", "-m", "labhub.dockerproxy",
    )  # fmt: skip
    token = secrets.token_hex(32)
    env = {
        **MINIMAL_ENV,
        "DOCKER_NETWORK": NETWORK,
        "WORKSPACE_IMAGE": IMAGE,
        "SWARM_TEST_DOCKER_URL": f"tcp://{proxy}:2375",
        "SWARM_TEST_SERVER_CMD": json.dumps(["perl", "-e", USER_HTTP_SERVER, "--"]),
        "SWARM_TEST_HUB_NAME": hub_name,
        "SWARM_TEST_TOKEN": token,
        "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
    }
    manager.docker(
        "create", "--name", hub_name, "--network", NETWORK, *source,
        "-v", f"{CHECKOUT / 'tests/swarm-hub/jupyterhub_config.py'}:/etc/jupyterhub_config.py:ro",
        *[arg for name, value in env.items() for arg in ("--env", f"{name}={value}")],
        HUB_IMAGE,
    )  # fmt: skip
    manager.docker("network", "connect", docker_api, hub_name)
    manager.docker("start", hub_name)
    client = f"{NETWORK}-hub-client"
    manager.docker(
        "run", "--detach", "--name", client, "--network", NETWORK, "--entrypoint", "sleep",
        HUB_IMAGE, "infinity",
    )  # fmt: skip
    running = RunningHub(manager, client, f"http://{hub_name}:8000", token)

    def answers() -> bool:
        return running.api("GET", "/") == 200

    try:
        wait_until(answers, 120, "JupyterHub on the manager to answer", interval=1)
        yield running
    finally:
        for name in (hub_name, proxy):  # shown when a test fails
            logs = subprocess.run(
                ["docker", "-H", f"unix://{manager.socket}", "logs", "--tail", "60", name],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            print(f"--- {name}\n{logs.stdout}{logs.stderr}")


def test_a_real_jupyterhub_spawns_users_on_the_swarm_through_the_proxy(
    cluster: Cluster, hub: RunningHub
) -> None:
    users = ("hubann", "hubben")
    for user in users:
        hub.spawn(user)
    nodes = {}
    for user in users:
        # Through the hub's proxy (CHP) to the service by name over the overlay.
        status, answer = hub.request("GET", f"/user/{user}/api")
        assert status == 200, answer
        assert json.loads(answer) == {"user": user, "path": f"/user/{user}/api"}
        nodes[user] = cluster.running_node(f"{PREFIX}-{user}")
        constraints = cluster.swarm.manager.docker(
            "service", "inspect", "--format", "{{json .Spec.TaskTemplate.Placement.Constraints}}",
            f"{PREFIX}-{user}",
        )  # fmt: skip
        assert json.loads(constraints) == [f"node.id=={nodes[user]}"]
    # Each server reaches the hub's API (the hub is on its network), not the other server.
    assert cluster.connects("hubann", f"{NETWORK}-hub", 8081) == "connected"
    assert cluster.connects("hubann", f"{PREFIX}-hubben", 8888).startswith("failed")
    # The hub holds no Docker socket: its only way to the engine is the proxy.
    manager = cluster.swarm.manager
    mounts = manager.docker("inspect", "--format", "{{json .Mounts}}", f"{NETWORK}-hub")
    assert "docker.sock" not in mounts
    # Stopped and started again through the hub: the same node (the state in its database).
    user = users[0]
    assert hub.api("DELETE", f"/users/{user}/server") in (202, 204)
    wait_until(lambda: not hub.servers(user), 60, f"{user}'s server to stop")
    assert not manager.docker("service", "ls", "--quiet", "--filter", f"name={PREFIX}-{user}")
    make_first_spawns_go_elsewhere(cluster, nodes[user], "hubnew", hub.spawn)
    hub.spawn(user)
    assert cluster.running_node(f"{PREFIX}-{user}") == nodes[user]


# --- HOME_NFS: the proxy's volume options at the engine, and a spawn config-checked ------
# No NFS client in this kernel (docs/scale-out.md): the volume's options are checked at
# the engine, and the mount's failure must reach the user as its cause. TEST-NET-1: no
# server answers there.
NFS_EXPORT = "192.0.2.7:/export/homes"


@pytest.fixture(scope="module")
def nfs_proxy(cluster: Cluster) -> Iterator[int]:
    """A second Swarm proxy in front of the same manager, with HOME_NFS (the frontend
    container is the cluster's)."""
    with running_proxy(
        PROXY_POLICY="swarm", ALLOWED_IMAGES=IMAGE, DOCKER_NETWORK=NETWORK,
        FRONTEND_CONTAINERS=FRONTEND, DOCKER_SOCKET=str(cluster.swarm.manager.socket),
        HOME_NFS=NFS_EXPORT,
    ) as port:  # fmt: skip
        yield port


def nfs_home_mount(user: str, options: dict[str, str]) -> dict[str, Any]:
    return {
        "Type": "volume",
        "Source": volume_name_for(user, NETWORK),
        "Target": "/home/jovyan",
        "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": options}},
    }


MALLORYS_NFS_HOME = nfs_home_options(NFS_EXPORT, volume_name_for("mallory", NETWORK))


@pytest.mark.parametrize(
    "options",
    [
        {"type": "none", "o": "bind", "device": "/"},  # the host's root, a bind in disguise
        {**MALLORYS_NFS_HOME, "o": "addr=198.51.100.9,nfsvers=4,nosuid,nodev"},  # another server
        {**MALLORYS_NFS_HOME, "device": f":/export/homes/{volume_name_for('bob', NETWORK)}"},
        {**MALLORYS_NFS_HOME, "o": "addr=192.0.2.7,nfsvers=4"},  # set-user-ID files allowed
    ],
    ids=["host-bind", "another-server", "bobs-folder", "suid"],
)
def test_the_nfs_proxy_refuses_any_other_volume_options_and_the_engine_never_sees_them(
    cluster: Cluster, nfs_proxy: int, options: dict[str, str]
) -> None:
    make_user_network(nfs_proxy)
    body = service_body(Mounts=[nfs_home_mount("mallory", options)])
    status, answer = raw_request(nfs_proxy, "POST", "/v1.41/services/create", body)
    assert status == 403 and "must be exactly its NFS home" in answer, answer
    assert (
        f"{PREFIX}-mallory"
        not in cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}").split()
    )
    for node in cluster.swarm.nodes:
        assert volume_name_for("mallory", NETWORK) not in node.docker("volume", "ls", "-q")


def test_the_same_service_with_exactly_its_nfs_home_is_created_so_the_refusals_are_the_rules(
    cluster: Cluster, nfs_proxy: int
) -> None:
    make_user_network(nfs_proxy)
    body = service_body(Mounts=[nfs_home_mount("mallory", MALLORYS_NFS_HOME)])
    status, answer = raw_request(nfs_proxy, "POST", "/v1.41/services/create", body)
    assert status == 201, answer
    created = json.loads(answer)["ID"]
    try:
        spec = cluster.swarm.manager.docker(
            "service", "inspect", "--format", "{{json .Spec}}", created
        )
        [mount] = json.loads(spec)["TaskTemplate"]["ContainerSpec"]["Mounts"]
        assert mount["VolumeOptions"]["DriverConfig"]["Options"] == MALLORYS_NFS_HOME
    finally:
        assert raw_request(nfs_proxy, "DELETE", f"/v1.41/services/{created}")[0] == 200


class NfsHomeSpawner(LabSwarmSpawner):  # type: ignore[misc]
    """LabSwarmSpawner with a Docker client of its own (through the HOME_NFS proxy)."""


def test_a_spawn_with_home_nfs_makes_the_nfs_volume_and_names_the_mount_failure(
    cluster: Cluster, nfs_proxy: int
) -> None:
    """Config-checked: the volume the node made has exactly the NFS options; the mount
    fails (no NFS client here) and the spawn says so, its service removed."""
    user, volume = "nfsuser", volume_name_for("nfsuser", NETWORK)
    settings = Settings.from_env(
        {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK, "WORKSPACE_IMAGE": IMAGE,
         "ENGINE": "swarm", "HOME_NFS": NFS_EXPORT}
    )  # fmt: skip
    spawner = NfsHomeSpawner(
        user=HubUser(user), hub=Hub(), cmd=["perl", "-e", "sleep 600", "--"],
        frontend_containers=[FRONTEND], **swarm_spawner_config(settings),
    )  # fmt: skip
    spawner.server = Server(base_url=f"/user/{user}/")
    with spawners_through(nfs_proxy, NfsHomeSpawner):
        try:
            with pytest.raises(web.HTTPError) as failed:
                asyncio.run(asyncio.wait_for(spawner.start(), 150))
            message = str(failed.value.log_message)
            print(f"the spawn's error: {message}")
            assert failed.value.status_code == 503, message
            assert (
                f"cannot mount the home 192.0.2.7:/export/homes/{volume} (HOME_NFS): check "
                "that the node has an NFS client"
            ) in message
            # The service is gone: the Swarm does not retry the task on.
            services = cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}")
            assert f"{PREFIX}-{user}" not in services.split()
            # The node that tried made the volume, with exactly the NFS options.
            made = [n for n in cluster.swarm.nodes if volume in n.docker("volume", "ls", "-q")]
            assert [n.node_id for n in made] == [message.split("node ")[1].split()[0]]
            inspected = json.loads(made[0].docker("volume", "inspect", volume))[0]
            assert inspected["Driver"] == "local"
            assert inspected["Options"] == {
                "type": "nfs",
                "o": "addr=192.0.2.7,nfsvers=4,nosuid,nodev",
                "device": f":/export/homes/{volume}",
            }
            assert HOME_NODE_STATE not in spawner.get_state()
        finally:
            asyncio.run(spawner.delete_forever())
            for node in cluster.swarm.nodes:
                remove_volume(node, volume)


def remove_volume(node: Node, volume: str) -> None:
    """Remove `volume` from `node` once the removed service's failed task container, which
    holds it, is gone too."""

    def gone() -> bool:
        node.docker("volume", "rm", "--force", volume, check=False)
        return volume not in node.docker("volume", "ls", "--quiet").split()

    wait_until(gone, 60, f"volume {volume} removed from {node.name}", interval=1)
