"""A Docker proxy on every node, deployed by `make up` with ENGINE=swarm, and what uses it.

On a two-engine test cluster (tests/swarmstack.py) the real `make up` starts a global
service of labhub's Docker proxy (PROXY_POLICY=node) on its own internal overlay network.
Every node shares this host's filesystem here, so `/var/run/docker.sock` would be this
host's engine on each: NODE_DOCKER_SOCKET names each node's socket by its node ID (a Swarm
mount template), through links this test makes. Proven: one proxy task per node, each
answering for its own engine; the hub's container reaches them and a user's server does
not; `make move-home` finds them by itself and moves a user's home, and the user's next
spawn through the hub runs on the new node with their file; `make backup` reads that home
on its node through them, and `make restore` (one user's files, then whole) writes it back
there, refused while the user's server runs; with the home node drained, `make restore
NODE=<the other node>` of a backup as one host writes it (members `./`) puts the home on
that node and records it there, where the next spawn runs with the files; `make down`
removes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from labhub.contract import volume_name_for
from labhub.hometar import TOP
from stacks import STACK
from swarmlab import CONNECT, running_container, wait_for_running_task
from swarmstack import (
    HUB_IMAGE,
    NODE_PROXIES,
    PREFIX,
    SwarmStack,
    make,
    swarm_stack_up,
)

from testsupport.hubclient import HubClient
from testsupport.waiting import wait_until

pytestmark = [pytest.mark.swarm, pytest.mark.e2e, pytest.mark.timeout(2400)]

HUB = f"{STACK}-hub"
USER = "nodemover"
# The node ID the engine behind a proxy gives, asked from inside the hub's container.
ASK_NODE = (
    "import json, sys, urllib.request; "
    "print(json.load(urllib.request.urlopen(f'http://{sys.argv[1]}:2375/info', timeout=10))"
    "['Swarm']['NodeID'])"
)


@pytest.fixture(scope="module")
def swarm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    # swarm_stack_up loads the hub image on every node and links each node's socket.
    with swarm_stack_up(tmp_path_factory.mktemp("swarm-nodes")) as running:
        yield running


@pytest.fixture(scope="module")
def proxy_addresses(swarm_stack: SwarmStack) -> list[str]:
    return proxies_answering(swarm_stack)


def proxies_answering(swarm_stack: SwarmStack) -> list[str]:
    """The node proxies' task addresses, as the hub's container resolves them (dnsrr)."""
    hosts = swarm_stack.manager.docker("exec", HUB, "getent", "ahostsv4", f"tasks.{NODE_PROXIES}")
    return sorted({line.split()[0] for line in hosts.splitlines()})


@pytest.fixture(scope="module")
def student(swarm_stack: SwarmStack) -> HubClient:
    client = swarm_stack.stack.client()
    login = client.login(USER, swarm_stack.stack.ensure_account(USER), follow=False)
    assert login.status_code == 302 and client.logged_in, login.text[:300]
    return client


def task_container(swarm_stack: SwarmStack, user: str) -> tuple[str, str]:
    """The node running `user`'s server and its task's container there."""
    node_id = wait_for_running_task(swarm_stack.swarm, f"{PREFIX}-{user}")
    return node_id, running_container(swarm_stack.node(node_id), f"{PREFIX}-{user}")


def test_make_up_runs_one_node_proxy_on_each_node_answering_for_its_own_engine(
    swarm_stack: SwarmStack, proxy_addresses: list[str]
) -> None:
    manager, nodes = swarm_stack.manager, {node.node_id for node in swarm_stack.swarm.nodes}
    tasks = manager.docker(
        "service", "ps", "--filter", "desired-state=running", "--format", "{{.ID}}", NODE_PROXIES
    ).split()
    states = manager.docker(
        "inspect", "--type", "task", "--format", "{{.Status.State}} {{.NodeID}}", *tasks
    ).splitlines()
    assert sorted(states) == sorted(f"running {node}" for node in nodes)
    spec = json.loads(manager.docker("service", "inspect", NODE_PROXIES))[0]["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert "PROXY_POLICY=node" in container["Env"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr" and not spec["EndpointSpec"].get("Ports")
    network = json.loads(manager.docker("network", "inspect", NODE_PROXIES))[0]
    assert network["Internal"] and network["Driver"] == "overlay"
    # From the hub's container, each task answers for the engine of the node it runs on.
    answers = {
        manager.docker("exec", HUB, "python3", "-c", ASK_NODE, address).strip()
        for address in proxy_addresses
    }
    assert len(proxy_addresses) == 2 and answers == nodes
    # Only the hub joins the node proxies' network on the manager (besides the proxies).
    joined = json.loads(manager.docker("network", "inspect", NODE_PROXIES))[0]["Containers"]
    others = {
        entry["Name"]
        for entry in joined.values()
        # The proxy's own task, and the network's load-balancer endpoint on this node.
        if not entry["Name"].startswith(f"{NODE_PROXIES}.")
        and entry["Name"] != f"{NODE_PROXIES}-endpoint"
    }
    assert others == {HUB}


def test_a_users_server_cannot_reach_the_node_proxies(
    swarm_stack: SwarmStack, student: HubClient, proxy_addresses: list[str]
) -> None:
    student.start_server(USER, timeout=600)
    node_id, container = task_container(swarm_stack, USER)
    node = swarm_stack.node(node_id)
    for address in proxy_addresses:
        tried = node.docker("exec", container, "perl", "-e", CONNECT, address, "2375", timeout=60)
        assert tried.startswith("failed"), (address, tried)
    by_name = node.docker(
        "exec", container, "getent", "hosts", f"tasks.{NODE_PROXIES}", check=False
    )
    assert not by_name.strip()
    # The hub reaches them all along.
    assert manager_asks(swarm_stack, proxy_addresses[0])


def manager_asks(swarm_stack: SwarmStack, address: str) -> str:
    return swarm_stack.manager.docker("exec", HUB, "python3", "-c", ASK_NODE, address).strip()


def test_make_move_home_finds_the_node_proxies_and_the_next_spawn_runs_there_with_the_file(
    swarm_stack: SwarmStack, student: HubClient
) -> None:
    student.start_server(USER, timeout=600)
    old_node, container = task_container(swarm_stack, USER)
    swarm_stack.node(old_node).docker(
        "exec", container, "sh", "-c", "echo 'kept across nodes' > /home/jovyan/moved.txt"
    )
    student.stop_server(USER)
    [new_node] = {node.node_id for node in swarm_stack.swarm.nodes} - {old_node}
    moved = make(
        "move-home", swarm_stack.env_file, swarm_stack.docker_host, f"USER={USER}",
        f"NODE={new_node}", timeout=600,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stdout[-3000:] + moved.stderr[-3000:]
    assert f"switched: {USER}'s home is now on node {new_node}" in moved.stdout
    volume = volume_name_for(USER, STACK)
    assert volume in swarm_stack.node(new_node).docker("volume", "ls", "--quiet").split()
    # The next spawn through the hub runs on the new node and finds the file there.
    student.start_server(USER, timeout=600)
    running_on, container = task_container(swarm_stack, USER)
    assert running_on == new_node
    text = swarm_stack.node(new_node).docker("exec", container, "cat", "/home/jovyan/moved.txt")
    assert text.strip() == "kept across nodes"
    student.stop_server(USER)


def test_make_backup_reads_each_home_on_its_node(
    swarm_stack: SwarmStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The user's home, on the node it was moved to, is read there through that node's
    proxy; the admin, never started, has no home to read and is skipped."""
    backup, folder = swarm_stack.backup_into(tmp_path_factory.mktemp("backups"))
    archive = folder / "volumes" / f"{volume_name_for(USER, STACK)}.tar.gz"
    with tarfile.open(archive) as tar:
        member = tar.extractfile("jovyan/moved.txt")
        assert member is not None and member.read() == b"kept across nodes\n"
        assert tar.getmember("jovyan").uid == 1000
    assert "1 volumes" in backup.stdout and "backup: admin skipped" in backup.stdout


def home_on_its_node(swarm_stack: SwarmStack, node_id: str) -> dict[str, str]:
    """Every path in the user's volume on that node, read at the engine: `owner kind
    sha256` (the SHA-256 for files only)."""
    listed = swarm_stack.node(node_id).docker(
        "run", "--rm", "--network", "none", "--entrypoint", "", "-v",
        f"{volume_name_for(USER, STACK)}:/h:ro", HUB_IMAGE, "sh", "-c",
        "cd /h && find . -mindepth 1 -printf '%P\\t%U:%G %y\\n' && "
        "find . -type f -exec sha256sum {} +",
    )  # fmt: skip
    found: dict[str, str] = {}
    for line in listed.splitlines():
        if "\t" in line:
            name, _, value = line.partition("\t")
            found[name] = found.get(name, "") + value
        else:
            digest, _, name = line.partition("  ./")
            found[name] = found[name] + " " + digest
    return found


def home_in_the_backup(archive: Path) -> dict[str, str]:
    """The same listing for the home in a backup's archive (a hard link is its file)."""
    kinds = {tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l"}
    found: dict[str, str] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            name = member.name.removeprefix(f"{TOP}/")
            if member.name == TOP:
                continue
            if member.islnk():
                found[name] = found[member.linkname.removeprefix(f"{TOP}/")]
                continue
            found[name] = f"{member.uid}:{member.gid} {kinds.get(member.type, 'f')}"
            if member.isreg():
                data = tar.extractfile(member)
                assert data is not None
                found[name] += " " + hashlib.sha256(data.read()).hexdigest()
    return found


# In the user's server: the backed-up file's text, the deleted file back, the new one gone.
AS_BACKED_UP = "cat ~/kept.txt && test -f ~/moved.txt && test ! -e ~/new.txt && echo as-backed-up"


def test_make_restore_writes_the_backup_back_on_the_home_node_and_refuses_a_running_server(
    swarm_stack: SwarmStack, student: HubClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Backed up, then changed: a restore while the server runs is refused and changes
    nothing; stopped, ONLY_USERS and then a whole restore make the volume on the home node
    exactly the backup's files again, which the next spawn there sees."""
    student.start_server(USER, timeout=600)
    home, container = task_container(swarm_stack, USER)
    on_node = swarm_stack.node(home)
    on_node.docker("exec", container, "sh", "-c", "echo v1 > /home/jovyan/kept.txt")
    student.stop_server(USER)
    _, folder = swarm_stack.backup_into(tmp_path_factory.mktemp("restore"))
    backed_up = home_in_the_backup(folder / "volumes" / f"{volume_name_for(USER, STACK)}.tar.gz")
    v1 = hashlib.sha256(b"v1\n").hexdigest()
    assert backed_up["kept.txt"] == f"1000:100 f {v1}" and "moved.txt" in backed_up

    def change_the_home(restored: bool = False) -> str:
        """Start the server (on the home node: seeing the backed-up files, once restored),
        then change, delete and add a file."""
        student.start_server(USER, timeout=600)
        running_on, container = task_container(swarm_stack, USER)
        assert running_on == home
        if restored:
            seen = on_node.docker("exec", container, "sh", "-c", AS_BACKED_UP).split()
            assert seen == ["v1", "as-backed-up"]
        on_node.docker(
            "exec", container, "sh", "-c",
            "cd /home/jovyan && echo v2 > kept.txt && rm moved.txt && echo x > new.txt",
        )  # fmt: skip
        return container

    def restore(*only: str) -> Any:
        return make(
            "restore", swarm_stack.env_file, swarm_stack.docker_host, f"BACKUP={folder}",
            *only, timeout=900,
        )  # fmt: skip

    change_the_home()
    refused = restore(f"ONLY_USERS={USER}")
    assert refused.returncode != 0 and f"of {USER} is running: stop it first" in refused.stderr
    changed = home_on_its_node(swarm_stack, home)
    assert changed["kept.txt"] != backed_up["kept.txt"] and "new.txt" in changed
    assert "moved.txt" not in changed
    student.stop_server(USER)
    restored = restore(f"ONLY_USERS={USER}")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert home_on_its_node(swarm_stack, home) == backed_up
    # The next spawn on the home node sees those files; changed again, then a whole restore.
    change_the_home(restored=True)
    student.stop_server(USER)
    whole = restore()
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert "restore: databases and 1 volumes restored" in whole.stdout
    assert home_on_its_node(swarm_stack, home) == backed_up
    wait_until(lambda: hub_answers(student), 180, "the hub back after the whole restore")
    student.start_server(USER, timeout=600)
    running_on, container = task_container(swarm_stack, USER)
    assert running_on == home
    assert on_node.docker("exec", container, "sh", "-c", AS_BACKED_UP).split() == [
        "v1",
        "as-backed-up",
    ]
    student.stop_server(USER)


def as_one_host_wrote_it(folder: Path, volume: str) -> None:
    """Make the backup's archive of `volume` what scripts/backup.sh writes on one host
    (`tar -C <volume> .`: members `./` and `./...`), and its checksums again."""
    archive = folder / "volumes" / f"{volume}.tar.gz"
    members = []
    with tarfile.open(archive) as tar:
        for info in tar:
            data = tar.extractfile(info) if info.isreg() else None
            members.append((info, data.read() if data is not None else b""))
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            info.name = "./" + info.name.removeprefix(TOP).lstrip("/")
            if info.islnk():
                info.linkname = "./" + info.linkname.removeprefix(f"{TOP}/")
            tar.addfile(info, io.BytesIO(data))
    subprocess.run(
        "find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS",
        shell=True, cwd=folder, check=True,
    )  # fmt: skip


def test_make_restore_node_puts_the_home_on_that_node_when_its_node_is_drained(
    swarm_stack: SwarmStack, student: HubClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A backup as one host writes it, restored with NODE=<the other node>: refused while
    the home node is active and holds the home (nothing written there), then, the home
    node drained (its proxy gone), written on the other node and recorded as the home
    node: the next spawn is pinned there and sees the backed-up files."""
    student.start_server(USER, timeout=600)
    home, container = task_container(swarm_stack, USER)
    swarm_stack.node(home).docker("exec", container, "sh", "-c", "echo onto > ~/onto.txt")
    student.stop_server(USER)
    volume = volume_name_for(USER, STACK)
    _, folder = swarm_stack.backup_into(tmp_path_factory.mktemp("restore-node"))
    backed_up = home_in_the_backup(folder / "volumes" / f"{volume}.tar.gz")
    assert backed_up["onto.txt"].startswith("1000:100 f")
    as_one_host_wrote_it(folder, volume)
    [other] = {node.node_id for node in swarm_stack.swarm.nodes} - {home}
    manager, on_other = swarm_stack.manager, swarm_stack.node(other)

    def restore_onto_other() -> Any:
        return make(
            "restore", swarm_stack.env_file, swarm_stack.docker_host, f"BACKUP={folder}",
            f"ONLY_USERS={USER}", f"NODE={other}", timeout=900,
        )  # fmt: skip

    refused = restore_onto_other()
    assert refused.returncode != 0 and f"{volume} is on node {home}" in refused.stderr
    assert "make move-home" in refused.stderr
    assert volume not in on_other.docker("volume", "ls", "--quiet").split()
    manager.docker("node", "update", "--availability", "drain", home)
    try:
        # A drained node runs no task: its proxy's address leaves tasks.<service>.
        wait_until(
            lambda: len(proxies_answering(swarm_stack)) == 1, 120, "the drained node's proxy to go"
        )
        restored = restore_onto_other()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
        assert f"switched: {USER}'s home is now on node {other}" in restored.stderr
        assert home_on_its_node(swarm_stack, other) == backed_up
        student.start_server(USER, timeout=600)
        running_on, container = task_container(swarm_stack, USER)
        assert running_on == other
        constraints = manager.docker(
            "service", "inspect", f"{PREFIX}-{USER}", "--format",
            "{{json .Spec.TaskTemplate.Placement.Constraints}}",
        )  # fmt: skip
        assert json.loads(constraints) == [f"node.id=={other}"]
        assert on_other.docker("exec", container, "cat", "/home/jovyan/onto.txt").strip() == "onto"
        student.stop_server(USER)
    finally:
        manager.docker("node", "update", "--availability", "active", home)


def hub_answers(client: HubClient) -> bool:
    try:
        return client.api("GET", f"/users/{USER}").status_code == 200
    except requests.RequestException:
        return False


def test_make_move_home_names_its_arguments(swarm_stack: SwarmStack) -> None:
    missing = make("move-home", swarm_stack.env_file, swarm_stack.docker_host, f"USER={USER}")
    assert missing.returncode == 2 and "usage: make move-home USER=" in missing.stderr


def test_make_down_removes_the_node_proxies_and_their_network(swarm_stack: SwarmStack) -> None:
    manager = swarm_stack.manager
    down = swarm_stack.make("down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert NODE_PROXIES not in manager.docker("service", "ls", "--format", "{{.Name}}").split()
    assert NODE_PROXIES not in manager.docker("network", "ls", "--format", "{{.Name}}").split()
    # Each node's proxy container is gone from its node.
    wait_until(
        lambda: all(
            not node.docker("ps", "--quiet", "--filter", f"name={NODE_PROXIES}")
            for node in swarm_stack.swarm.nodes
        ),
        60,
        "the node proxies' containers to stop",
    )
