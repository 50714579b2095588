"""labhub on the test Swarm (tests/swarm.py): the Docker proxy in front of the manager and
LabSwarmSpawner through it, shared by tests/test_swarm.py and the cluster benchmark
(bench/cluster/).

`with lab_cluster(3) as cluster:` a cluster whose nodes hold the base image, the lab's
attachable overlay network, and labhub's Docker proxy (PROXY_POLICY=swarm) on loopback,
the only way LabSwarmSpawner reaches the manager. Users' servers are a one-line perl
server in the base image (the TensorFlow workspace image is not copied to the nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupyterhub.objects import Hub, Server
from labhub.contract import OWNER_LABEL, container_prefix, user_network_name
from labhub.settings import Settings
from labhub.swarmspawner import LabSwarmSpawner, swarm_spawner_config
from swarm import Node, Swarm

from testsupport.dockerproxy import raw_request, running_proxy
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser
from testsupport.waiting import wait_until

# Any image every node has; the base image is what every labhub image is built from.
IMAGE = "debian:trixie-slim"
# perl-base is in every Debian image: a one-line TCP server and client.
SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, "
    'ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c "hello from $ENV{NODE}\\n"; '
    "close $c }"
)


def client(host: str, port: int, tries: int, pause: float = 1) -> str:
    """A perl one-liner that prints the first line `host`:`port` answers, trying `tries`
    times `pause` seconds apart (exit 1 if it never does)."""
    return (
        f"use IO::Socket::INET; for (1..{tries}) {{ my $c = IO::Socket::INET->new("
        f"PeerAddr => '{host}', PeerPort => {port}, Timeout => 2); if ($c) {{ "
        f"print scalar <$c>; exit 0 }} select(undef, undef, undef, {pause}) }} exit 1"
    )


CLIENT = client("web", 8080, 60)

NETWORK = os.environ.get("LABHUB_TEST_STACK", "lhswarm")
PREFIX = container_prefix(NETWORK)
# One TCP connection attempt from inside a container: "connected" or why not.
CONNECT = (
    "use IO::Socket::INET; my $c = IO::Socket::INET->new(PeerAddr => $ARGV[0], "
    "PeerPort => $ARGV[1], Timeout => 3); print $c ? 'connected' : \"failed: $@\""
)
# The user's "server": answers one line naming the user on the port the hub expects;
# "--" ends perl's own options before the server arguments the spawner adds.
USER_SERVER = SERVER.replace("8080", "8888").replace("$ENV{NODE}", "$ENV{JUPYTERHUB_USER}")


def frontend_for(network: str) -> str:
    """The container on the manager that stands for the hub and CHP when spawners are
    driven from the test process: the one container connected to each user's network."""
    return f"{network}-frontend"


FRONTEND = frontend_for(NETWORK)


def client_for(host: str) -> str:
    """A perl one-liner that prints the first line `host`:8888 answers (exit 1 after 20 s)."""
    return client(host, 8888, 20)


def wait_for_running_task(swarm: Swarm, service: str, timeout: float = 120) -> str:
    """The node ID of the service's running task (node names are all this host's name)."""

    def running_node() -> str:
        tasks = swarm.manager.docker("service", "ps", "--quiet", "--no-trunc", service).split()
        states = swarm.manager.docker(
            "inspect", "--type", "task", "--format", "{{.Status.State}} {{.NodeID}}", *tasks
        )
        for line in states.splitlines():
            state, _, node_id = line.partition(" ")  # no node yet while pending
            if state == "running":
                return node_id
        return ""

    return wait_until(running_node, timeout, f"a running task of service {service}")


def running_container(node: Node, service: str) -> str:
    """The one running container of `service`'s task on `node` (once the container of a
    task stopped before is gone)."""

    def the_one() -> str:
        containers = node.docker(
            "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={service}"
        ).split()
        return containers[0] if len(containers) == 1 else ""

    return wait_until(the_one, 60, f"one running container of {service}")


@dataclass
class Cluster:
    swarm: Swarm
    proxy_port: int
    # Each user's spawner state, kept between spawns as the hub keeps it in its database.
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def spawner(self, user: str) -> LabSwarmSpawner:
        """A LabSwarmSpawner for `user` (with their saved state) whose Docker calls all go
        through the proxy."""
        settings = Settings.from_env(
            {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK, "WORKSPACE_IMAGE": IMAGE}
        )
        spawner = LabSwarmSpawner(
            user=HubUser(user), hub=Hub(), cmd=["perl", "-e", USER_SERVER, "--"],
            frontend_containers=[FRONTEND], **swarm_spawner_config(settings),
        )  # fmt: skip
        spawner.load_state(self.states.get(user, {}))
        spawner.server = Server(base_url=f"/user/{user}/")
        return spawner

    def start(self, user: str) -> LabSwarmSpawner:
        """Start `user`'s server unless it runs, and save the state, as the hub does."""
        spawner = self.spawner(user)
        if not asyncio.run(spawner.get_object()):
            assert_reached_on_its_network(asyncio.run(spawner.start()))
        self.states[user] = spawner.get_state()
        return spawner

    def stop(self, user: str) -> None:
        """Stop `user`'s server; the state left (the home node) is saved, as the hub does."""
        spawner = self.spawner(user)
        asyncio.run(spawner.stop())
        spawner.clear_state()
        self.states[user] = spawner.get_state()

    def running_node(self, service: str) -> str:
        return wait_for_running_task(self.swarm, service)

    def node(self, node_id: str) -> Node:
        return next(node for node in self.swarm.nodes if node.node_id == node_id)

    def task_container(self, user: str) -> tuple[Node, str]:
        """The node running `user`'s server and its task's container there (once the
        container of a task stopped before is gone)."""
        node = self.node(self.running_node(f"{PREFIX}-{user}"))
        return node, running_container(node, f"{PREFIX}-{user}")

    def connects(self, user: str, host: str, port: int) -> str:
        """What one TCP connect from inside `user`'s server to host:port gives."""
        node, container = self.task_container(user)
        return node.docker("exec", container, "perl", "-e", CONNECT, host, str(port), timeout=60)

    def from_frontend(self, user: str) -> str:
        """The line `user`'s server answers the frontend container with (by service name)."""
        return self.swarm.manager.docker(
            "exec", FRONTEND, "perl", "-e", client_for(f"{PREFIX}-{user}"), check=False
        ).strip()


@contextlib.contextmanager
def spawners_through(
    port: int, spawner_class: type[LabSwarmSpawner] = LabSwarmSpawner
) -> Iterator[None]:
    """Every `spawner_class`'s Docker calls go to the proxy on `port` until the block ends
    (DockerSpawner keeps one client per class: it is closed, with its kept-alive
    connections, afterwards)."""
    spawner_class._client = None
    spawner_class.client_kwargs = {"base_url": f"tcp://127.0.0.1:{port}"}
    try:
        yield
    finally:
        if spawner_class._client is not None:
            spawner_class._client.close()
        spawner_class._client = None


@contextlib.contextmanager
def swarm_proxy(
    swarm: Swarm, network: str = NETWORK, image: str = IMAGE, **settings: str
) -> Iterator[int]:
    """labhub's Docker proxy (PROXY_POLICY=swarm) on loopback in front of the manager's
    socket, for the lab's `network` (which must exist), with the frontend container
    (`frontend_for(network)`, from `image`, which the proxy admits unless `settings` say
    ALLOWED_IMAGES) running on the manager."""
    frontend = frontend_for(network)
    swarm.manager.docker(
        "run", "--detach", "--name", frontend, "--network", network, image, "sleep", "infinity"
    )  # fmt: skip
    defaults = {
        "PROXY_POLICY": "swarm",
        "ALLOWED_IMAGES": image,
        "DOCKER_NETWORK": network,
        "FRONTEND_CONTAINERS": frontend,
        "DOCKER_SOCKET": str(swarm.manager.socket),
    }
    with running_proxy(**{**defaults, **settings}) as port:
        yield port


@contextlib.contextmanager
def lab_cluster(size: int, manager_images: Sequence[str] = ()) -> Iterator[Cluster]:
    """`size` engines, the lab's attachable overlay network, and labhub's Docker proxy
    (PROXY_POLICY=swarm) on loopback in front of the manager's socket."""
    with Swarm(size, images=[IMAGE], manager_images=manager_images) as swarm:
        swarm.manager.docker("network", "create", "--driver", "overlay", "--attachable", NETWORK)
        with swarm_proxy(swarm) as port, spawners_through(port):
            yield Cluster(swarm, port)


def service_body(
    user: str = "mallory",
    *,
    image: str = IMAGE,
    network: str = NETWORK,
    node_id: str = "x" * 25,
    visible: str = "void",
    labels: dict[str, str] | None = None,
    **container: Any,
) -> bytes:
    """A service create body as LabSwarmSpawner sends it for `user` (every lab service
    names its GPUs, `void` for none), with `container` merged into its ContainerSpec: what
    an attacker holding the hub's access to the proxy would start from."""
    spec = {
        "Image": image, "Args": ["sleep", "600"], "User": "1000:100",
        "Labels": {OWNER_LABEL: user}, "CapabilityDrop": ["ALL"],
        "Env": [f"NVIDIA_VISIBLE_DEVICES={visible}"],
        **container,
    }  # fmt: skip
    return json.dumps(
        {
            "Name": f"{container_prefix(network)}-{user}",
            "Labels": {OWNER_LABEL: user, **(labels or {})},
            "TaskTemplate": {
                "ContainerSpec": spec,
                "Resources": {"Limits": {"NanoCPUs": 10**9, "MemoryBytes": 1 << 28, "Pids": 64}},
                "Placement": {"Constraints": [f"node.id=={node_id}"]},
                "Networks": [{"Target": user_network_name(user, network)}],
            },
            "EndpointSpec": {"Mode": "dnsrr"},
        }
    ).encode()


def assert_reached_on_its_network(address: tuple[str, int]) -> None:
    """What a started LabSwarmSpawner gives the hub: its task's address on the user's own
    network (an IP, not the service's name) and the server's port."""
    ip, port = address
    assert ipaddress.ip_address(ip) and port == 8888, address


def network_body(user: str = "mallory", network: str = NETWORK, **change: Any) -> bytes:
    """`user`'s own network as LabSwarmSpawner makes it, with `change` merged in."""
    body = {
        "Name": user_network_name(user, network), "Driver": "overlay", "Internal": True,
        "Attachable": True, "Labels": {OWNER_LABEL: user}, "CheckDuplicate": True,
        **change,
    }  # fmt: skip
    return json.dumps(body).encode()


def make_user_network(port: int, user: str = "mallory", network: str = NETWORK) -> None:
    """`user`'s network made through the proxy on `port` unless it exists (409), as the
    spawner makes it before a service (a service may join its owner's network only)."""
    body = network_body(user, network)
    status, answer = raw_request(port, "POST", "/v1.41/networks/create", body)
    assert status in (201, 409), answer
