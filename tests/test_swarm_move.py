"""Moving a user's home between Swarm nodes, on a real two-engine Swarm (tests/swarm.py).

Each node's engine is behind labhub's Docker proxy with `PROXY_POLICY=node` (here on
loopback, in front of that node's socket); the manager's too, with `PROXY_POLICY=swarm`,
for LabSwarmSpawner. The hub's database is a real JupyterHub database (its ORM, in a
file) that the spawner reads its state from and `labhub move-home` writes to, as in the
hub container. A user writes files on their home node, stops, is moved, starts: the
server runs on the new node with the same files, modes, links and owner. A move while
the server runs is refused; a copy that does not match what was sent is not switched to.
With disk quotas each node has its own btrfs at QUOTA_ROOT (tests/swarm.py) and its own
diskquota service: a home moves into a new subvolume with its limit on the new node, and
the old one is deleted on the old node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from labhub import diskquota, homemove
from labhub.contract import container_prefix, quota_home_options, volume_name_for
from labhub.hometar import copy_helper, copy_helper_prefix
from labhub.settings import Settings
from labhub.swarmplacement import RETIRING_LABEL
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner, swarm_spawner_config
from swarm import Node, Swarm, run
from swarmlab import frontend_for, spawners_through, swarm_proxy

from testsupport.archives import tar_of
from testsupport.dockerproxy import raw_request, running_proxy
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser
from testsupport.waiting import wait_until

pytestmark = [pytest.mark.swarm, pytest.mark.integration]

NETWORK = os.environ.get("LABHUB_TEST_STACK", "lhswmove")
PREFIX = container_prefix(NETWORK)
TAG = f"{os.getpid() % 10000:04d}"
# The base image with the workspace's home folder, owned as in the workspace image. It
# stands for the workspace image and for the hub image (LABHUB_VERSION below), which the
# nodes' proxies run and whose copy helpers `labhub move-home` makes
# (Settings.copy_helper_image): both must be on every node.
HUB_VERSION = f"swarmmove-{TAG}"
IMAGE = f"labhub/hub:{HUB_VERSION}"
DOCKERFILE = (
    "FROM debian:trixie-slim\n"
    "RUN mkdir -p /home/jovyan && chown 1000:100 /home/jovyan && chmod 0750 /home/jovyan\n"
)
# The user's "server": sleeps until stopped (perl-base is in every Debian image; as PID 1 it
# needs its own TERM handler; `--` ends perl's options before the spawner's arguments).
SERVER_CMD = ["perl", "-e", "$SIG{TERM} = sub { exit 0 }; sleep", "--"]
HUB_SRC = str(Path(__file__).parents[1] / "hub")
# What a user makes in their home: a folder, a private file, a symbolic and a hard link,
# and 3 MB of random bytes.
WRITE_FILES = (
    "cd /home/jovyan && mkdir -p work/deep && printf 'precious data\\n' > work/notes.txt && "
    "chmod 600 work/notes.txt && ln -s work/notes.txt link && ln work/notes.txt hard && "
    "head -c 3000000 /dev/urandom > work/deep/big.bin && chmod 700 work/deep"
)
# Each node's own btrfs is mounted here, in its engine's mount namespace only (tests/swarm.py).
QUOTA_ROOT = Path(f"/srv/{NETWORK}-homes-{TAG}")
DISK_QUOTA = 40 * 2**20
# Every entry with its type, mode, numeric owner, size and link target; every file's digest.
LIST_FILES = (
    "cd /home/jovyan && find . -printf '%P %y %m %U:%G %s %l\\n' | sort && "
    "find . -type f -exec sha256sum {} + | sort"
)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    run("docker", "build", "--quiet", "--tag", IMAGE, "-", input=DOCKERFILE, timeout=300)
    try:
        yield IMAGE
    finally:
        run("docker", "image", "rm", IMAGE, check=False)


def node_proxy(node: Node, quotas: bool = False) -> contextlib.AbstractContextManager[int]:
    """labhub's Docker proxy for a node's engine on loopback in front of `node`'s socket;
    with `quotas`, in the node's mount namespace with QUOTA_ROOT, as `make up` deploys it
    there (it relays to the node's diskquota service's sockets)."""
    return running_proxy(
        wrap=node.mounts() if quotas else (),
        PROXY_POLICY="node",
        ALLOWED_IMAGES=IMAGE,
        DOCKER_NETWORK=NETWORK,
        DOCKER_SOCKET=str(node.socket),
        QUOTA_ROOT=str(QUOTA_ROOT) if quotas else "",
    )


@contextlib.contextmanager
def diskquota_service(node: Node) -> Iterator[None]:
    """labhub's diskquota service of `node`, in its mount namespace (its own btrfs at
    QUOTA_ROOT, its own sockets' folder), as the global service runs on a real node."""
    socket = diskquota.NODE_USAGE_SOCKET  # in the node's own sockets' folder
    process = subprocess.Popen(
        [*node.mounts(), sys.executable, "-m", "labhub.diskquota", "run", "--usage-socket", socket],
        env={**os.environ, "PYTHONPATH": HUB_SRC, "QUOTA_ROOT": str(QUOTA_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def serving() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"diskquota exited: {process.communicate()[0].decode()}")
        return subprocess.run([*node.mounts(), "test", "-S", socket], check=False).returncode == 0

    try:
        wait_until(serving, 30, f"node {node.name}'s diskquota service", interval=0.2)
        yield
    finally:
        process.terminate()
        print(process.communicate(timeout=30)[0].decode(errors="replace")[-4000:])


@dataclass
class Lab:
    """The cluster, its proxies and the hub's database, driven as the hub drives them."""

    swarm: Swarm
    manager_port: int
    node_ports: dict[str, int]
    db_path: Path
    db: Any

    def orm_spawner(self, user: str) -> orm.Spawner:
        found = orm.User.find(self.db, user)
        if found is None:
            found = orm.User(name=user)
            self.db.add(found)
            self.db.add(orm.Spawner(user=found, name=""))
            self.db.commit()
        spawner: orm.Spawner = found.orm_spawners[""]
        return spawner

    def spawner(self, user: str) -> LabSwarmSpawner:
        settings = Settings.from_env(
            {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK, "WORKSPACE_IMAGE": IMAGE}
        )
        row = self.orm_spawner(user)
        spawner = LabSwarmSpawner(
            user=HubUser(user), hub=Hub(), orm_spawner=row, cmd=SERVER_CMD,
            frontend_containers=[frontend_for(NETWORK)], **swarm_spawner_config(settings),
        )  # fmt: skip
        spawner.load_state(row.state or {})
        return spawner

    def start(self, user: str) -> str:
        """Start `user`'s server as the hub does (the row marks it running); its node."""
        row = self.orm_spawner(user)
        row.server = orm.Server(base_url=f"/user/{user}/")
        self.db.commit()
        spawner = self.spawner(user)
        asyncio.run(spawner.start())
        row.state = spawner.get_state()
        self.db.commit()
        return self.running_node(f"{PREFIX}-{user}")

    def stop(self, user: str) -> None:
        row = self.orm_spawner(user)
        spawner = self.spawner(user)
        asyncio.run(spawner.stop())
        spawner.clear_state()
        row.state, row.server = spawner.get_state(), None
        self.db.commit()

    def home_node(self, user: str) -> str:
        self.db.expire_all()
        return str(self.orm_spawner(user).state[HOME_NODE_STATE])

    def running_node(self, service: str) -> str:
        return self.running_task(service)[0]

    def running_task(self, service: str) -> tuple[str, str]:
        """(node ID, task ID) of the service's running task."""

        def running() -> tuple[str, str] | None:
            tasks = self.swarm.manager.docker("service", "ps", "-q", "--no-trunc", service).split()
            states = self.swarm.manager.docker(
                "inspect", "--type", "task", "--format", "{{.Status.State}} {{.NodeID}} {{.ID}}",
                *tasks,
            )  # fmt: skip
            found = [
                line.split()[1:] for line in states.splitlines() if line.startswith("running ")
            ]
            return (found[0][0], found[0][1]) if found else None

        found = wait_until(running, 120, f"a running task of {service}")
        assert found is not None
        return found

    def node(self, node_id: str) -> Node:
        return next(node for node in self.swarm.nodes if node.node_id == node_id)

    def in_server(self, user: str, script: str) -> str:
        """Run `script` in `user`'s running server (as the server's user, 1000:100)."""
        node_id, task = self.running_task(f"{PREFIX}-{user}")
        node = self.node(node_id)
        label = f"label=com.docker.swarm.task.id={task}"
        container = wait_until(
            lambda: node.docker("ps", "--quiet", "--filter", label).strip(), 60, "the task"
        )
        return node.docker("exec", container, "sh", "-c", script)

    def volume_nodes(self, user: str) -> set[str]:
        volume = volume_name_for(user, NETWORK)
        return {n.node_id for n in self.swarm.nodes if volume in n.docker("volume", "ls", "-q")}

    def move_home(
        self, user: str, node: str, ports: dict[str, int] | None = None, **settings: str
    ) -> subprocess.CompletedProcess[str]:
        """`labhub move-home` as an admin runs it in the hub container, through the nodes'
        proxies at `ports` (by default the module's), with `settings` added."""
        env = {
            **MINIMAL_ENV, "PATH": os.environ["PATH"], "PYTHONPATH": HUB_SRC,
            "DOCKER_NETWORK": NETWORK, "WORKSPACE_IMAGE": IMAGE, "LABHUB_VERSION": HUB_VERSION,
            # The swarm's nodes, through the manager's proxy, as the hub container lists them.
            "DOCKER_HOST": f"tcp://127.0.0.1:{self.manager_port}", **settings,
        }  # fmt: skip
        proxies = [
            f"--proxy={n}=tcp://127.0.0.1:{p}" for n, p in (ports or self.node_ports).items()
        ]
        command = [sys.executable, "-m", "labhub.cli", "move-home", user, node, *proxies]
        command.append(f"--db={self.db_path}")
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def lab(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with (
        Swarm(2, images=[image], quota_root=QUOTA_ROOT) as swarm,
        contextlib.ExitStack() as stack,
    ):
        swarm.manager.docker("network", "create", "--driver", "overlay", "--attachable", NETWORK)
        manager_port = stack.enter_context(swarm_proxy(swarm, NETWORK, image))
        ports = {node.node_id: stack.enter_context(node_proxy(node)) for node in swarm.nodes}
        db_path = tmp_path_factory.mktemp("hub") / "jupyterhub.sqlite"
        db = orm.new_session_factory(f"sqlite:///{db_path}")()
        stack.enter_context(spawners_through(manager_port))
        stack.callback(db.close)
        yield Lab(swarm, manager_port, ports, db_path, db)


def test_a_moved_home_has_the_same_files_and_owner_and_the_server_follows_it(lab: Lab) -> None:
    old = lab.start("alice")
    lab.in_server("alice", WRITE_FILES)
    before = lab.in_server("alice", LIST_FILES)
    assert "work/notes.txt f 600 1000:100 14" in before and "link l 777" in before
    [new] = [node.node_id for node in lab.swarm.nodes if node.node_id != old]

    running = lab.move_home("alice", new)
    assert running.returncode == 2, running.stderr
    assert "alice's server is running" in running.stderr
    assert lab.volume_nodes("alice") == {old}

    lab.stop("alice")
    moved = lab.move_home("alice", new)
    assert moved.returncode == 0, moved.stderr
    assert "checked: " in moved.stdout and f"now on node {new}" in moved.stdout, moved.stdout
    assert lab.home_node("alice") == new
    assert lab.volume_nodes("alice") == {new}  # the old volume is removed

    assert lab.start("alice") == new
    after = lab.in_server("alice", LIST_FILES)
    assert after == before
    # The volume's root too: the server's user owns it, with its mode (0750 in the image).
    assert lab.in_server("alice", "stat -c '%u:%g %a' /home/jovyan").strip() == "1000:100 750"
    lab.stop("alice")


def test_a_copy_that_differs_from_what_was_sent_is_not_switched_to(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = lab.start("carol")
    lab.in_server("carol", WRITE_FILES)
    before = lab.in_server("carol", LIST_FILES)
    lab.stop("carol")
    [new] = [node.node_id for node in lab.swarm.nodes if node.node_id != old]
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{lab.manager_port}")
    plan = homemove.plan_move(
        "carol", new, homemove.read_home(lab.db_path, "carol"),
        {node: f"tcp://127.0.0.1:{port}" for node, port in lab.node_ports.items()}, NETWORK,
        homemove.swarm_nodes(),
    )  # fmt: skip
    source = homemove.NodeEngine(old, plan.source_proxy, NETWORK, IMAGE)
    target = homemove.NodeEngine(new, plan.target_proxy, NETWORK, IMAGE)
    upload = target.api.put_archive

    def corrupted(container: str, path: str, data: Iterator[bytes]) -> bool:
        """The upload with one file's content changed on the way (same length)."""
        return bool(upload(container, path, (c.replace(b"precious", b"PRECIOUS") for c in data)))

    target.api.put_archive = corrupted  # type: ignore[method-assign]
    monkeypatch.setattr(homemove, "PROGRESS_EVERY", 1 << 20)
    said: list[str] = []
    with pytest.raises(homemove.MoveFailed, match="differs") as failed:
        homemove.move_home(plan, source, target, lab.db_path, say=said.append)
    # A progress line once a MiB was copied (every 256 MiB in a real move).
    assert any(line.startswith("copying carol's home: 2 MiB, ") for line in said), said
    assert f"still {volume_name_for('carol', NETWORK)} on node {old}" in str(failed.value)
    assert "work/notes.txt" in str(failed.value)
    assert lab.home_node("carol") == old
    assert lab.volume_nodes("carol") == {old}
    assert lab.start("carol") == old
    assert lab.in_server("carol", LIST_FILES) == before
    lab.stop("carol")


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 1000) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, 100
    return info


def test_the_node_proxy_refuses_what_a_move_never_sends_before_the_engine_sees_it(
    lab: Lab,
) -> None:
    node = lab.swarm.workers[0]
    port = lab.node_ports[node.node_id]
    volume = volume_name_for("mallory", NETWORK)
    helper = copy_helper_prefix(NETWORK) + "0123456789abcdef"
    body: dict[str, Any] = copy_helper(NETWORK, "mallory", IMAGE)
    host = body["HostConfig"]
    for attack in (
        {**body, "HostConfig": {**host, "Binds": ["/:/home/jovyan"]}},
        {**body, "HostConfig": {**host, "Privileged": True}},
    ):
        status, answer = raw_request(
            port, "POST", f"/v1.41/containers/create?name={helper}", json.dumps(attack).encode()
        )
        assert status == 403, answer
    assert helper not in node.docker("ps", "-a", "--format", "{{.Names}}")
    # The copy helper itself is created, and can never be started.
    status, answer = raw_request(
        port, "POST", f"/v1.41/containers/create?name={helper}", json.dumps(body).encode()
    )
    assert status == 201, answer
    try:
        assert raw_request(port, "POST", f"/v1.41/containers/{helper}/start")[0] == 403
        assert "running" not in node.docker("inspect", "--format", "{{.State.Status}}", helper)
        for evil, why in (
            (member("jovyan/disk", tarfile.BLKTYPE), "only files, folders and links"),
            (member("jovyan/sh", mode=0o4755, uid=1000), "set-user/group-ID"),
            (member("jovyan/rootfile", uid=0), "owned by 0:100"),
            (member("../../etc/evil"), "not inside jovyan/"),
        ):
            upload = tar_of((member("jovyan", tarfile.DIRTYPE, 0o755), b""), (evil, b"x"))
            target = f"/v1.41/containers/{helper}/archive?path=%2Fhome"
            status, answer = raw_request(port, "PUT", target, upload, chunked=True)
            assert status == 403 and why in answer, answer
        listing = node.docker(
            "run", "--rm", "-v", f"{volume}:/v", IMAGE, "find", "/v", "-mindepth", "1"
        )
        assert listing == ""
    finally:
        raw_request(port, "DELETE", f"/v1.41/containers/{helper}?force=1")
        node.docker("volume", "rm", volume, check=False)


def test_a_retiring_node_takes_no_first_home_and_no_moved_home(lab: Lab) -> None:
    """The admin empties a node with the label (docs/scale-out.md#taking-a-node-out): a new
    student's first server goes to the other node though it is busier, and `labhub
    move-home` onto it is refused with nothing written there."""
    busy = lab.start("erin")
    [retiring] = [node.node_id for node in lab.swarm.nodes if node.node_id != busy]
    manager = lab.swarm.manager
    manager.docker("node", "update", "--label-add", f"{RETIRING_LABEL}=true", retiring)
    try:
        assert lab.start("dave") == busy  # the least-loaded node would be the retiring one
        lab.stop("dave")
        moved = lab.move_home("dave", retiring)
        assert moved.returncode == 2, moved.stderr
        assert f"node {retiring} is retiring" in moved.stderr, moved.stderr
        assert lab.home_node("dave") == busy
        assert lab.volume_nodes("dave") == {busy}
    finally:
        manager.docker("node", "update", "--label-rm", RETIRING_LABEL, retiring)
        lab.stop("erin")


def test_a_quota_home_moves_into_a_new_subvolume_with_its_limit_on_the_new_node(
    lab: Lab,
) -> None:
    """QUOTA_ROOT, each node with its own disk there: `labhub move-home` makes the home's
    subvolume with the user's limit on the new node through its diskquota service, binds
    the volume onto it, copies, and deletes the old volume and then the old subvolume on
    the old node. The files are the same, the new node's kernel enforces the limit, and
    the old node keeps no copy of the home."""
    user = "quinn"
    volume = volume_name_for(user, NETWORK)
    source, target = lab.swarm.nodes
    with contextlib.ExitStack() as stack:
        for node in lab.swarm.nodes:
            stack.enter_context(diskquota_service(node))
        ports = {
            n.node_id: stack.enter_context(node_proxy(n, quotas=True)) for n in lab.swarm.nodes
        }
        url = {node: f"tcp://127.0.0.1:{port}" for node, port in ports.items()}
        # The user's home on the source node, made as their first spawn makes it there.
        quota = homemove.HomeQuota(str(QUOTA_ROOT), DISK_QUOTA)
        engine = homemove.NodeEngine(source.node_id, url[source.node_id], NETWORK, IMAGE, quota)
        engine.make_home(volume)
        row = lab.orm_spawner(user)
        row.state = {HOME_NODE_STATE: source.node_id}
        lab.db.commit()
        home = ("--rm", "--network", "none", "--user", "1000:100", "-v", f"{volume}:/home/jovyan")
        source.docker("run", *home, IMAGE, "sh", "-c", WRITE_FILES)
        before = source.docker("run", *home, IMAGE, "sh", "-c", LIST_FILES)
        assert "work/notes.txt f 600 1000:100 14" in before

        moved = lab.move_home(
            user, target.node_id, ports, QUOTA_ROOT=str(QUOTA_ROOT), DISK_QUOTA="40M"
        )
        assert moved.returncode == 0, moved.stderr
        assert f"now on node {target.node_id}" in moved.stdout, moved.stdout
        assert f"deleted its home folder on node {source.node_id}" in moved.stdout, moved.stdout
        assert lab.home_node(user) == target.node_id
        assert lab.volume_nodes(user) == {target.node_id}
        # The new node: a subvolume of its own btrfs with the limit, the volume bound onto
        # it, the same files; the old node: no subvolume left. Read at each node's disk.
        assert target.in_mounts("btrfs", "subvolume", "show", f"{QUOTA_ROOT}/{volume}")
        subvolumes = source.in_mounts("btrfs", "subvolume", "list", str(QUOTA_ROOT))
        assert volume not in subvolumes, subvolumes
        assert diskquota.usage_through(url[target.node_id])[volume].limit == DISK_QUOTA
        assert volume not in diskquota.usage_through(url[source.node_id])
        options = target.docker("volume", "inspect", "--format", "{{json .Options}}", volume)
        assert json.loads(options) == quota_home_options(str(QUOTA_ROOT), volume)
        assert target.docker("run", *home, IMAGE, "sh", "-c", LIST_FILES) == before
        full = subprocess.run(
            ["docker", "-H", f"unix://{target.socket}", "run", *home, IMAGE, "sh", "-c",
             "dd if=/dev/zero of=/home/jovyan/big bs=1M count=60 2>&1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert full.returncode != 0 and "Disk quota exceeded" in full.stdout, full.stdout
        # The host's own QUOTA_ROOT folder is only the nodes' mount point: nothing in it.
        assert list(QUOTA_ROOT.iterdir()) == []
        target.docker("volume", "rm", volume)
        assert diskquota.request_removal_through(url[target.node_id], volume)
