"""The test cluster the Swarm mode is built on: real engines, one overlay network.

These prove the ground the scale-out work stands on (tests/swarm.py): engines in their
own network namespaces form one Swarm, a task is placed on the node a constraint names,
and a container on the manager reaches it over an attachable overlay network in
`dnsrr` mode, with no registry and nothing leaving the machine. The Swarm mode of
labhub itself is not built yet (docs/scale-out.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from swarm import Swarm, run

from testsupport.waiting import wait_until

pytestmark = pytest.mark.integration

# Any image every node has; the base image is what every labhub image is built from.
IMAGE = "debian:trixie-slim"
# perl-base is in every Debian image: a one-line TCP server and client.
SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, "
    'ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c "hello from $ENV{NODE}\\n"; '
    "close $c }"
)
CLIENT = (
    "use IO::Socket::INET; for (1..60) { my $c = IO::Socket::INET->new(PeerAddr => 'web', "
    "PeerPort => 8080, Timeout => 2); if ($c) { print scalar <$c>; exit 0 } sleep 1 } exit 1"
)


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
    assert "labhub-test-swarm/" not in Path("/proc/self/mounts").read_text()
