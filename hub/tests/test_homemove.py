"""Moving a home between Swarm nodes, without an engine: the tar checks (labhub.hometar),
the node proxy's rules (`check_node_request`), its strict chunked reader, the move's plan
and its switch in a real JupyterHub database. On a real Swarm: tests/test_swarm_move.py."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from docker.errors import APIError, NotFound
from jupyterhub import orm
from labhub import cli, homemove
from labhub.contract import quota_home_options
from labhub.diskquota import DiskQuotaError, Usage
from labhub.dockerpolicy import Policy, Refused, check_node_request
from labhub.dockerproxy import BadRequest, ChunkedBody, RequestHead, parse_head
from labhub.homemove import (
    HomeQuota,
    HomeRow,
    MoveFailed,
    MoveRefused,
    NodeEngine,
    archive_home,
    check_restore_node,
    home_node,
    plan_move,
    read_home,
    restore_home,
    restore_onto,
    switch_home,
)
from labhub.hometar import BadHomeArchive, Manifest, copy_helper, manifest_of, rewrite, under_top
from labhub.swarmplacement import SwarmNode
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner

from testsupport.archives import tar_of
from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

NETWORK = "lab"
IMAGE = "labhub/workspace:1"
POLICY = Policy(allowed_images=frozenset({IMAGE}), network=NETWORK)
HELPER = "lab-homecopy-0123456789abcdef"


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **fields: Any) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, 1000, 100
    for key, value in fields.items():
        setattr(info, key, value)
    return info


HOME = (
    (member("jovyan", tarfile.DIRTYPE, 0o6750), b""),  # docker-stacks sets g+s on folders
    (member("jovyan/notes.txt", mode=0o600), b"precious data\n"),
    (member("jovyan/link", tarfile.SYMTYPE, 0o777, linkname="notes.txt"), b""),
    (member("jovyan/hard", tarfile.LNKTYPE, linkname="jovyan/notes.txt"), b""),
    (member("jovyan/big.bin"), bytes(range(256)) * 5000),
)


def test_a_home_goes_through_unchanged_and_its_manifest_counts_every_member() -> None:
    sent = Manifest()
    copied = b"".join(rewrite(io.BytesIO(tar_of(*HOME)), sent))
    assert sent.bytes == 14 + 256 * 5000
    assert set(sent.entries) == {"jovyan", "jovyan/notes.txt", "jovyan/link", "jovyan/hard",
                                 "jovyan/big.bin"}  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(copied)) as archive:
        again = {m.name: (m.type, m.mode, m.uid, m.gid, m.linkname) for m in archive}
        data = archive.extractfile("jovyan/big.bin")
        assert data is not None and data.read() == bytes(range(256)) * 5000
    assert again["jovyan"] == (tarfile.DIRTYPE, 0o6750, 1000, 100, "")
    assert again["jovyan/link"] == (tarfile.SYMTYPE, 0o777, 1000, 100, "notes.txt")
    assert manifest_of(io.BytesIO(copied)).differences(sent) == []


def test_a_hard_link_compares_as_its_file_whichever_name_came_first() -> None:
    other_order = (
        HOME[0],
        (member("jovyan/hard", mode=0o600), b"precious data\n"),
        (member("jovyan/notes.txt", tarfile.LNKTYPE, linkname="jovyan/hard"), b""),
        *HOME[2:3],
        HOME[4],
    )
    assert manifest_of(io.BytesIO(tar_of(*other_order))).differences(
        manifest_of(io.BytesIO(tar_of(*HOME)))
    ) == []  # fmt: skip


def test_a_changed_byte_mode_or_missing_file_is_a_difference_by_name() -> None:
    sent = manifest_of(io.BytesIO(tar_of(*HOME)))
    changed = list(HOME)
    changed[1] = (member("jovyan/notes.txt", mode=0o600), b"PRECIOUS data\n")
    differences = manifest_of(io.BytesIO(tar_of(*changed))).differences(sent)
    assert [d.split(":")[0] for d in differences] == ["jovyan/hard", "jovyan/notes.txt"]
    changed[1] = (member("jovyan/notes.txt", mode=0o644), b"precious data\n")
    assert manifest_of(io.BytesIO(tar_of(*changed))).differences(sent)
    assert (
        manifest_of(io.BytesIO(tar_of(*HOME[:4]))).differences(sent)[0].startswith("jovyan/big.bin")
    )


@pytest.mark.parametrize(
    ("evil", "reason"),
    [
        (member("jovyan/sda", tarfile.BLKTYPE), "only files, folders and links"),
        (member("jovyan/null", tarfile.CHRTYPE), "only files, folders and links"),
        (member("jovyan/fifo", tarfile.FIFOTYPE), "only files, folders and links"),
        (member("jovyan/sh", mode=0o4755), "set-user/group-ID"),
        (member("jovyan/sg", mode=0o2755), "set-user/group-ID"),
        (member("jovyan/rootfile", uid=0), "owned by 0:100"),
        (member("jovyan/staff", gid=50), "owned by 1000:50"),
        (member("../etc/cron.d/x"), "not inside jovyan/"),
        (member("jovyan/../../etc/x"), "not inside jovyan/"),
        (member("/etc/x"), "not inside jovyan/"),
        (member("other/x"), "not inside jovyan/"),
        (member("jovyan/h", tarfile.LNKTYPE, linkname="/etc/shadow"), "not inside jovyan/"),
        (member("jovyan/h", tarfile.LNKTYPE, linkname="jovyan/later"), "not before it"),
        (member("jovyan/etc/passwd"), "below the symbolic link 'jovyan/etc'"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_a_member_no_lab_server_makes_stops_the_stream_before_it(evil: Any, reason: str) -> None:
    to_etc = member("jovyan/etc", tarfile.SYMTYPE, 0o777, linkname="/etc")
    chunks = rewrite(io.BytesIO(tar_of(HOME[0], (to_etc, b""), (evil, b"x"))))
    first = next(chunks)  # the folder before it passes
    assert b"jovyan" in first
    with pytest.raises(BadHomeArchive, match=reason):
        list(chunks)


def test_extended_attributes_such_as_file_capabilities_are_not_written_on() -> None:
    capable = member("jovyan/ping", mode=0o755)
    capable.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    copied = b"".join(rewrite(io.BytesIO(tar_of(HOME[0], (capable, b"#!")))))
    assert b"SCHILY" not in copied and b"capability" not in copied


@pytest.mark.parametrize("broken", [b"", b"not a tar" * 100, tar_of(*HOME)[:1500]])
def test_a_broken_or_empty_stream_is_refused(broken: bytes) -> None:
    with pytest.raises(BadHomeArchive):
        list(rewrite(io.BytesIO(broken)))


# --- The node proxy's rules -------------------------------------------------------------
def node(method: str, target: str, body: Any = None) -> Any:
    raw = json.dumps(body).encode() if body is not None else b""
    return check_node_request(POLICY, method, target, raw)


def test_a_move_gets_what_it_needs_from_a_node() -> None:
    assert node("GET", "/v1.41/info").target == "/v1.41/info"
    volume = {"Name": "lab-user-alice", "Driver": "local", "DriverOpts": {}, "Labels": None}
    assert node("POST", "/v1.41/volumes/create", volume).body
    assert node("GET", "/v1.41/volumes/lab-user-alice")
    assert node("DELETE", "/v1.41/volumes/lab-user-alice")
    created = node(
        "POST", f"/v1.41/containers/create?name={HELPER}", copy_helper(NETWORK, "alice", IMAGE)
    )
    assert json.loads(created.body)["HostConfig"]["Binds"] == [
        "lab-user-alice:/home/jovyan:rw,nocopy"
    ]
    read = node("GET", f"/v1.41/containers/{HELPER}/archive?path=%2Fhome%2Fjovyan")
    assert read.owned_container == HELPER and not read.tar_upload
    upload = node("PUT", f"/v1.41/containers/{HELPER}/archive?path=%2Fhome")
    assert upload.tar_upload and upload.owned_container == HELPER
    assert node("DELETE", f"/v1.41/containers/{HELPER}?v=False&link=False&force=True")


def changed_helper(**host: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy_helper(NETWORK, "alice", IMAGE)
    return {**body, "HostConfig": {**body["HostConfig"], **host}}


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", f"/containers/{HELPER}/start", None),
        ("POST", f"/containers/{HELPER}/exec", {"Cmd": ["sh"]}),
        ("POST", f"/containers/{HELPER}/attach", None),
        ("GET", f"/containers/{HELPER}/archive?path=/etc", None),
        ("GET", f"/containers/{HELPER}/archive?path=/home", None),
        ("PUT", f"/containers/{HELPER}/archive?path=/", None),
        ("PUT", f"/containers/{HELPER}/archive?path=/home&copyUIDGID=1", None),
        ("GET", "/containers/lab-user-alice.1.abc/archive?path=/home/jovyan", None),
        ("PUT", "/containers/lab-user-alice.1.abc/archive?path=/home", None),
        ("DELETE", "/containers/lab-user-alice.1.abc", None),
        ("POST", "/containers/create?name=lab-user-alice", copy_helper(NETWORK, "alice", IMAGE)),
        ("POST", f"/containers/create?name={HELPER}", changed_helper(Binds=["/:/home/jovyan"])),
        ("POST", f"/containers/create?name={HELPER}", changed_helper(Privileged=True)),
        ("POST", f"/containers/create?name={HELPER}", changed_helper(CapDrop=[])),
        ("POST", f"/containers/create?name={HELPER}", changed_helper(NetworkMode="host")),
        (
            "POST",
            f"/containers/create?name={HELPER}",
            changed_helper(Binds=["lab-user-bob:/home/jovyan:rw,nocopy"]),
        ),
        ("POST", f"/containers/create?name={HELPER}", copy_helper(NETWORK, "alice", "debian:13")),
        ("POST", f"/containers/create?name={HELPER}", copy_helper("other", "alice", IMAGE)),
        (
            "POST",
            "/volumes/create",
            {"Name": "lab-user-a", "DriverOpts": {"type": "none", "o": "bind", "device": "/"}},
        ),
        ("POST", "/volumes/create", {"Name": "hub-data"}),
        ("DELETE", "/volumes/hub-data", None),
        ("GET", "/containers/json", None),
        ("POST", "/services/create", {}),
        ("GET", "/nodes", None),
    ],
)
def test_everything_else_is_refused_by_a_nodes_proxy(method: str, target: str, body: Any) -> None:
    with pytest.raises(Refused):
        node(method, target, body)


# --- Its chunked reader -------------------------------------------------------------------
def read_chunked(raw: bytes) -> bytes:
    async def read() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        body = ChunkedBody(reader, asyncio.get_running_loop(), b"")
        return await asyncio.to_thread(body.read)

    return asyncio.run(read())


def test_a_chunked_body_is_read_whole() -> None:
    assert read_chunked(b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n") == b"hello!"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"5;ext=1\r\nhello\r\n0\r\n\r\n", "hex digits"),
        (b"+5\r\nhello\r\n0\r\n\r\n", "hex digits"),
        (b"5\nhello\r\n0\r\n\r\n", "hex digits"),
        (b"123456789\r\n", "hex digits"),
        (b"5\r\nhelloX\r\n0\r\n\r\n", "followed by CRLF"),
        (b"5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n", "no trailers"),
        (b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", "nothing after"),
        (b"5\r\nhel", "closed"),
    ],
)
def test_a_chunked_body_the_engine_could_read_differently_is_a_bad_request(
    raw: bytes, reason: str
) -> None:
    with pytest.raises(BadRequest, match=reason):
        read_chunked(raw)


def test_only_a_nodes_proxy_takes_a_chunked_head_and_only_without_a_length() -> None:
    head = b"PUT /containers/x/archive HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert parse_head(head, chunked_ok=True) == RequestHead("PUT", "/containers/x/archive", 0, True)
    with pytest.raises(BadRequest, match="Transfer-Encoding"):
        parse_head(head)
    for other in (
        b"gzip, chunked",
        b"chunked\r\nContent-Length: 5",
        b"chunked\r\nTransfer-Encoding: chunked",
    ):
        bad = head.replace(b"chunked", other)
        with pytest.raises(BadRequest, match=r"Transfer-Encoding|more than once"):
            parse_head(bad, chunked_ok=True)


# --- The plan and the switch --------------------------------------------------------------
PROXIES = {"nodeA": "tcp://a:2375", "nodeB": "tcp://b:2375"}
UP = [SwarmNode("nodeA", True, True), SwarmNode("nodeB", True, True)]


@pytest.mark.parametrize(
    ("row", "target", "reason"),
    [
        (None, "nodeB", "no server in the hub's database"),
        (HomeRow(1, True, {HOME_NODE_STATE: "nodeA"}), "nodeB", "server is running"),
        (HomeRow(1, False, {}), "nodeB", "no home node yet"),
        (HomeRow(1, False, {HOME_NODE_STATE: "nodeA"}), "nodeA", "already on node nodeA"),
        (HomeRow(1, False, {HOME_NODE_STATE: "nodeA"}), "nodeC", "no Docker proxy .* node nodeC"),
        (HomeRow(1, False, {HOME_NODE_STATE: "nodeZ"}), "nodeB", "no Docker proxy .* node nodeZ"),
    ],
)
def test_a_move_that_cannot_start_says_why(row: HomeRow | None, target: str, reason: str) -> None:
    with pytest.raises(MoveRefused, match=reason):
        plan_move("alice", target, row, PROXIES, NETWORK, UP)


def test_no_home_moves_onto_a_retiring_node() -> None:
    """The admin empties the node with the label (docs/scale-out.md): a move onto it would
    put a home back there."""
    row = HomeRow(1, False, {HOME_NODE_STATE: "nodeA"})
    nodes = [UP[0], SwarmNode("nodeB", True, True, retiring=True)]
    with pytest.raises(MoveRefused, match=r"node nodeB is retiring .* --label-rm"):
        plan_move("alice", "nodeB", row, PROXIES, NETWORK, nodes)
    # Off a retiring node is what the label is for.
    off = [SwarmNode("nodeA", True, True, retiring=True), UP[1]]
    assert plan_move("alice", "nodeB", row, PROXIES, NETWORK, off).target == "nodeB"


@pytest.fixture
def hub_db(tmp_path: Path) -> tuple[Path, Any]:
    path = tmp_path / "jupyterhub.sqlite"
    db = orm.new_session_factory(f"sqlite:///{path}")()
    user = orm.User(name="alice")
    db.add(user)
    db.add(orm.Spawner(user=user, name="", state={HOME_NODE_STATE: "nodeA", "other": 1}))
    db.commit()
    return path, db


def test_the_switch_writes_the_new_node_into_the_hubs_database_and_the_spawner_reads_it(
    hub_db: tuple[Path, Any],
) -> None:
    path, db = hub_db
    plan = plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, NETWORK, UP)
    spawner_row = orm.User.find(db, "alice").orm_spawners[""]
    spawner = LabSwarmSpawner(user=SimpleNamespace(name="alice"), orm_spawner=spawner_row)
    spawner.load_state(spawner_row.state)
    assert spawner.home_node == "nodeA"
    switch_home(path, "alice", HomeRow(plan.spawner_id, False, plan.state), plan.target)
    assert read_home(path, "alice") == HomeRow(
        plan.spawner_id, False, {HOME_NODE_STATE: "nodeB", "other": 1}
    )
    # The hub's own spawner (state loaded long ago) reads the switch at its next start.
    spawner.reload_home_node()
    assert spawner.home_node == "nodeB"


def test_a_server_started_during_the_copy_is_not_switched(hub_db: tuple[Path, Any]) -> None:
    path, db = hub_db
    plan = plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, NETWORK, UP)
    orm.User.find(db, "alice").orm_spawners[""].server = orm.Server()
    db.commit()
    with pytest.raises(MoveFailed, match="started during the copy"):
        switch_home(path, "alice", HomeRow(plan.spawner_id, False, plan.state), plan.target)
    with sqlite3.connect(path) as raw:
        [state] = raw.execute("SELECT state FROM spawners").fetchone()
    assert json.loads(state)[HOME_NODE_STATE] == "nodeA"


def test_the_command_refuses_with_the_reason_and_exit_2(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, db = hub_db
    for name, value in {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK}.items():
        monkeypatch.setenv(name, value)
    # The manager's node list, as the hub's Docker proxy gives it: nodeB retiring.
    monkeypatch.setattr(
        homemove, "swarm_nodes", lambda: [UP[0], SwarmNode("nodeB", True, True, retiring=True)]
    )
    proxies = [f"--proxy={node}={url}" for node, url in PROXIES.items()]
    assert cli.main(["move-home", "alice", "nodeB", "--proxy=nodeA", f"--db={path}"]) == 2
    assert "give NODE_ID=tcp://HOST:PORT" in capsys.readouterr().err
    assert cli.main(["move-home", "bob", "nodeB", *proxies, f"--db={path}"]) == 2
    assert "'bob' has no server in the hub's database" in capsys.readouterr().err
    orm.User.find(db, "alice").orm_spawners[""].server = orm.Server()
    db.commit()
    assert cli.main(["move-home", "alice", "nodeB", *proxies, f"--db={path}"]) == 2
    assert "refused: alice's server is running" in capsys.readouterr().err
    orm.User.find(db, "alice").orm_spawners[""].server = None
    db.commit()
    assert cli.main(["move-home", "alice", "nodeB", *proxies, f"--db={path}"]) == 2
    assert "refused: node nodeB is retiring" in capsys.readouterr().err


def test_without_proxies_the_commands_need_the_deployed_ones_and_name_what_is_missing(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = hub_db
    for name, value in {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NODE_PROXY_SERVICE", raising=False)
    assert cli.main(["move-home", "alice", "nodeB", f"--db={path}"]) == 2
    assert "NODE_PROXY_SERVICE is not set" in capsys.readouterr().err
    assert cli.main(["home-archive", "alice", f"--db={path}"]) == 2
    assert "NODE_PROXY_SERVICE is not set" in capsys.readouterr().err
    assert cli.main(["home-restore", "alice", "--check", f"--db={path}"]) == 2
    assert "refused: NODE_PROXY_SERVICE is not set" in capsys.readouterr().err


def test_a_home_archive_names_a_user_without_a_home_or_a_node_without_a_proxy(
    hub_db: tuple[Path, Any],
) -> None:
    path, _ = hub_db
    with pytest.raises(MoveRefused, match="'bob' has no home node yet"):
        archive_home("bob", path, PROXIES, NETWORK, IMAGE, io.BytesIO())
    with pytest.raises(MoveRefused, match="no Docker proxy answers for node nodeA"):
        archive_home("alice", path, {"nodeB": "tcp://b:2375"}, NETWORK, IMAGE, io.BytesIO())


class FakeNode:
    """One node's engine as restore_home uses it: volumes holding a home archive each."""

    def __init__(self, homes: dict[str, bytes], in_use: int = 0) -> None:
        self.homes, self.in_use, self.calls = dict(homes), in_use, []
        self.helpers: dict[str, str] = {}

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"NodeID": "nodeA"}}

    def inspect_volume(self, name: str) -> dict[str, str]:
        if name not in self.homes:
            raise NotFound("no such volume")
        return {"Name": name}

    def remove_volume(self, name: str, force: bool = False) -> None:
        self.calls.append("remove_volume")
        if self.in_use:
            self.in_use -= 1
            raise APIError("in use", SimpleNamespace(status_code=409))  # type: ignore[arg-type]
        del self.homes[name]

    def create_volume(self, name: str, driver: str) -> None:
        self.calls.append("create_volume")
        self.homes[name] = b""

    def create_container_from_config(self, config: dict[str, Any], name: str) -> None:
        assert config == copy_helper(NETWORK, "alice", IMAGE)
        self.helpers[name] = config["HostConfig"]["Binds"][0].split(":")[0]

    def remove_container(self, name: str, force: bool) -> None:
        del self.helpers[name]

    def put_archive(self, name: str, path: str, data: Any) -> None:
        assert path == "/home"
        self.calls.append("put_archive")
        self.homes[self.helpers[name]] += b"".join(data)

    def get_archive(self, name: str, path: str) -> tuple[Any, dict[str, Any]]:
        return iter([self.homes[self.helpers[name]]]), {}


OLD_HOME = tar_of(HOME[0], (member("jovyan/stale.txt"), b"not in the backup\n"))
VOLUME = "lab-user-alice"


def node_engine(fake: FakeNode) -> NodeEngine:
    engine = NodeEngine("nodeA", "tcp://a:2375", NETWORK, IMAGE)
    engine.api = fake  # type: ignore[assignment]
    return engine


def test_a_restored_home_holds_exactly_the_archives_files_checked_back() -> None:
    fake = FakeNode({VOLUME: OLD_HOME})
    written = restore_home("alice", node_engine(fake), io.BytesIO(tar_of(*HOME)), say=str)
    assert fake.calls == ["remove_volume", "create_volume", "put_archive"]
    assert manifest_of(io.BytesIO(fake.homes[VOLUME])).differences(written) == []
    assert "jovyan/stale.txt" not in written.entries and "jovyan/big.bin" in written.entries
    assert not fake.helpers  # every copy helper removed


def test_a_restore_check_or_refusal_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(homemove, "OLD_VOLUME_WAIT", -1.0)  # in use: no wait for it
    fake = FakeNode({VOLUME: OLD_HOME})
    checked = restore_home("alice", node_engine(fake), io.BytesIO(tar_of(*HOME)), True, str)
    assert len(checked.entries) == len(HOME) and fake.calls == []
    root_owned = member("jovyan/evil", uid=0)
    with pytest.raises(MoveRefused, match="'jovyan/evil' is owned by 0:100"):
        restore_home(
            "alice", node_engine(fake), io.BytesIO(tar_of(HOME[0], (root_owned, b""))), True
        )
    busy = FakeNode({VOLUME: OLD_HOME}, in_use=1)
    with pytest.raises(MoveRefused, match=r"could not be replaced .* still running there"):
        restore_home("alice", node_engine(busy), io.BytesIO(tar_of(*HOME)), say=str)
    assert busy.homes == {VOLUME: OLD_HOME} and fake.homes == {VOLUME: OLD_HOME}


def test_a_restore_waits_for_the_stopped_servers_task_to_free_the_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(homemove.time, "sleep", lambda seconds: None)
    fake = FakeNode({VOLUME: OLD_HOME}, in_use=2)
    written = restore_home("alice", node_engine(fake), io.BytesIO(tar_of(*HOME)), say=str)
    assert fake.calls[:3] == ["remove_volume"] * 3 and "jovyan/stale.txt" not in written.entries


def test_a_restore_that_breaks_after_the_old_volume_went_fails_for_the_put_back() -> None:
    fake, whole = FakeNode({VOLUME: OLD_HOME}), tar_of(*HOME)
    with pytest.raises(MoveFailed, match="alice's home on node nodeA: not a whole tar stream"):
        restore_home("alice", node_engine(fake), io.BytesIO(whole[: len(whole) // 2]), say=str)
    # The old volume is gone: scripts/restore.sh puts the saved home back (exit 1).
    assert fake.calls[:2] == ["remove_volume", "create_volume"]


@pytest.mark.parametrize(
    ("row", "proxies", "reason"),
    [
        (None, PROXIES, r"'alice' has no home node yet .* Start alice's server once"),
        (HomeRow(1, False, {}), PROXIES, "no home node yet"),
        (HomeRow(1, False, {HOME_NODE_STATE: "nodeZ"}), PROXIES, "node nodeZ, where alice's"),
    ],
)
def test_a_restore_names_a_home_without_a_known_node_and_the_fix(
    row: HomeRow | None, proxies: dict[str, str], reason: str
) -> None:
    with pytest.raises(MoveRefused, match=reason):
        home_node("alice", row, proxies, ". Start alice's server once")
    row = HomeRow(1, False, {HOME_NODE_STATE: "nodeA"})
    assert home_node("alice", row, PROXIES) == "nodeA"


# --- make restore NODE=: onto a node the admin chose ------------------------------------
NODES = [SwarmNode("nodeA", True, False), SwarmNode("nodeB", True, True)]
STOPPED = HomeRow(1, False, {HOME_NODE_STATE: "nodeA"})


@pytest.mark.parametrize(
    ("row", "node", "nodes", "proxies", "holding", "reason"),
    [
        (None, "nodeB", NODES, PROXIES, (), "'alice' has no server .* log in once"),
        (HomeRow(1, True, {}), "nodeB", NODES, PROXIES, (), "server is running .* then restore"),
        (STOPPED, "nodeC", NODES, PROXIES, (), "no node nodeC in the swarm: NODE= takes"),
        (STOPPED, "nodeB", [NODES[0], SwarmNode("nodeB", False, True)], PROXIES, (), "down"),
        (STOPPED, "nodeB", [NODES[0], SwarmNode("nodeB", True, False)], PROXIES, (), "drained"),
        (
            STOPPED, "nodeB", [NODES[0], SwarmNode("nodeB", True, True, retiring=True)],
            PROXIES, (), "node nodeB is retiring",
        ),
        (STOPPED, "nodeB", NODES, {"nodeA": "tcp://a"}, (), "no Docker proxy .* node nodeB"),
        # A home volume on a node that answers: restore there and move it, or remove it.
        (STOPPED, "nodeB", NODES, PROXIES, ("nodeA",), "is on node nodeA: .*make move-home"),
        (HomeRow(1, False, {}), "nodeB", NODES, PROXIES, ("nodeB",), "recorded on no node"),
        # A ready node that cannot be asked may hold it, unless it is the home node itself.
        (
            HomeRow(1, False, {}), "nodeB", [*NODES, SwarmNode("nodeC", True, True)],
            {"nodeB": "b"}, (), "cannot tell whether node nodeA, nodeC holds",
        ),
    ],
)  # fmt: skip
def test_a_restore_onto_a_chosen_node_that_could_lose_or_hide_files_says_why(
    row: HomeRow | None, node: str, nodes: list[SwarmNode], proxies: dict[str, str],
    holding: tuple[str, ...], reason: str,
) -> None:  # fmt: skip
    with pytest.raises(MoveRefused, match=reason):
        check_restore_node("alice", node, row, nodes, proxies, holding, VOLUME)


def test_a_restore_onto_a_chosen_node_switches_unless_it_is_the_home_node_already() -> None:
    # The home node nodeA drained: no proxy runs there, its volume cannot be asked about.
    drained_home = {"nodeB": "tcp://b:2375"}
    assert check_restore_node("alice", "nodeB", STOPPED, NODES, drained_home, (), VOLUME)
    up = [SwarmNode("nodeA", True, True), NODES[1]]
    assert check_restore_node("alice", "nodeB", STOPPED, up, PROXIES, (), VOLUME)
    home = HomeRow(1, False, {HOME_NODE_STATE: "nodeB"})
    assert not check_restore_node("alice", "nodeB", home, NODES, PROXIES, ("nodeB",), VOLUME)
    # A home restored where it is stays there, on a retiring node too, until it is moved.
    retiring = [NODES[0], SwarmNode("nodeB", True, True, retiring=True)]
    assert not check_restore_node("alice", "nodeB", home, retiring, PROXIES, ("nodeB",), VOLUME)


@pytest.fixture
def onto_b(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, FakeNode, list[str]]:
    """alice's home recorded on nodeA, drained; nodeB ready with no volume of hers."""
    path, _ = hub_db
    fake, said = FakeNode({}), []
    monkeypatch.setattr(homemove, "holders", lambda proxies, volume: frozenset())
    monkeypatch.setattr(homemove, "NodeEngine", lambda *args: node_engine(fake))
    fake.info = lambda: {"Swarm": {"NodeID": "nodeA"}}  # type: ignore[method-assign]
    return path, fake, said


def restore_alice_onto_b(path: Path, archive: bytes, said: list[str], check: bool = False) -> None:
    restore_onto(
        "alice", "nodeB", path, {"nodeB": "tcp://b:2375"}, NODES, NETWORK, IMAGE,
        io.BytesIO(archive), check, said.append,
    )  # fmt: skip


def test_a_restore_onto_a_chosen_node_writes_the_home_there_then_records_it(
    onto_b: tuple[Path, FakeNode, list[str]],
) -> None:
    path, fake, said = onto_b
    restore_alice_onto_b(path, tar_of(*HOME), said, check=True)
    assert fake.calls == [] and read_home(path, "alice") == STOPPED_IN_DB
    assert said[-1] == "alice: the home node would become node nodeB"
    restore_alice_onto_b(path, tar_of(*HOME), said)
    assert fake.calls == ["create_volume", "put_archive"]
    assert manifest_of(io.BytesIO(fake.homes[VOLUME])) == manifest_of(io.BytesIO(tar_of(*HOME)))
    assert read_home(path, "alice") == HomeRow(1, False, {HOME_NODE_STATE: "nodeB", "other": 1})
    assert "switched: alice's home is now on node nodeB" in said
    assert "on node nodeA, alice's home before, is no longer used" in said[-1]


STOPPED_IN_DB = HomeRow(1, False, {HOME_NODE_STATE: "nodeA", "other": 1})


def test_a_restore_onto_a_chosen_node_that_fails_removes_what_it_wrote_and_switches_nothing(
    onto_b: tuple[Path, FakeNode, list[str]],
) -> None:
    path, fake, said = onto_b
    whole = tar_of(*HOME)
    with pytest.raises(MoveFailed, match="Nothing switched: alice's home node is still nodeA"):
        restore_alice_onto_b(path, whole[: len(whole) // 2], said)
    assert fake.homes == {} and read_home(path, "alice") == STOPPED_IN_DB


def test_home_restore_takes_the_node_and_refuses_a_drained_one(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = hub_db
    for name, value in {**MINIMAL_ENV, "DOCKER_NETWORK": NETWORK}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "_deployed_node_proxies", lambda settings, how: PROXIES)
    monkeypatch.setattr(homemove, "swarm_nodes", lambda: NODES)
    monkeypatch.setattr(homemove, "holders", lambda proxies, volume: frozenset())
    assert cli.main(["home-restore", "alice", "--check", "--node=nodeA", f"--db={path}"]) == 2
    assert "refused: node nodeA is drained or paused" in capsys.readouterr().err


# --- A backup made on one host: members `.` and `./...` ---------------------------------
def one_host(*members: tuple[Any, bytes]) -> bytes:
    """The same home as `tar -C <volume> .` on one host names it (scripts/backup.sh)."""
    renamed = []
    for info, data in members:
        copy = info.replace(name="./" + info.name.removeprefix("jovyan").lstrip("/"))
        if copy.islnk():
            copy.linkname = "./" + info.linkname.removeprefix("jovyan/")
        renamed.append((copy, data))
    return tar_of(*renamed)


def test_a_one_host_backup_restores_as_the_same_home() -> None:
    assert [under_top(name) for name in (".", "./", "./a/b", "jovyan/c", "x")] == [
        "jovyan", "jovyan", "jovyan/a/b", "jovyan/c", "x",
    ]  # fmt: skip
    fake = FakeNode({VOLUME: OLD_HOME})
    written = restore_home("alice", node_engine(fake), io.BytesIO(one_host(*HOME)), say=str)
    assert written == manifest_of(io.BytesIO(tar_of(*HOME)))
    assert manifest_of(io.BytesIO(fake.homes[VOLUME])) == written
    # Only a restore renames: a node's proxy and a move still take `jovyan/` members only.
    with pytest.raises(BadHomeArchive, match=r"member '\.' is not inside jovyan/"):
        manifest_of(io.BytesIO(one_host(HOME[0], HOME[1])))
    with pytest.raises(MoveRefused, match=r"'jovyan/\.\./x' is not inside jovyan/"):
        restore_home("alice", node_engine(fake), io.BytesIO(tar_of(*one_host_escape())), True, str)


def one_host_escape() -> tuple[tuple[Any, bytes], ...]:
    return ((member(".", tarfile.DIRTYPE, 0o755), b""), (member("./../x"), b"out\n"))


# --- With disk quotas (QUOTA_ROOT): each copy a subvolume made and deleted on its node ---
QUOTA = HomeQuota("/srv/homes", 5 * 2**30)


class QuotaNode(FakeNode):
    """A node with disk quotas: its home folders (subvolumes), which its proxy's diskquota
    routes make and delete (`quota_routes`), and its engine's volumes."""

    def __init__(self, node: str, homes: dict[str, bytes], folders: set[str]) -> None:
        super().__init__(homes)
        self.node, self.folders = node, set(folders)

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"NodeID": self.node}}

    def create_volume(self, name: str, driver: str, driver_opts: Any = None) -> None:
        self.calls.append(f"create_volume {driver_opts}")
        self.homes[name] = b""


def quota_routes(monkeypatch: pytest.MonkeyPatch, nodes: dict[str, QuotaNode]) -> None:
    """The proxies' diskquota routes as the node proxy answers them (by proxy URL): a
    folder is deleted only once its node has no volume of that name."""

    def made(url: str, volume: str, limit: int) -> None:
        nodes[url].calls.append(f"make folder {limit}")
        nodes[url].folders.add(volume)

    def deleted(url: str, volume: str) -> bool:
        assert volume not in nodes[url].homes, "the node proxy answers 409"
        nodes[url].calls.append("delete folder")
        found = volume in nodes[url].folders
        nodes[url].folders.discard(volume)
        return found

    monkeypatch.setattr(homemove, "request_home_through", made)
    monkeypatch.setattr(homemove, "request_removal_through", deleted)
    monkeypatch.setattr(
        homemove, "usage_through", lambda url: dict.fromkeys(nodes[url].folders, Usage(0, 0))
    )


def quota_engine(fake: QuotaNode) -> NodeEngine:
    engine = NodeEngine(fake.node, PROXIES[fake.node], NETWORK, IMAGE, QUOTA)
    engine.api = fake  # type: ignore[assignment]
    return engine


def test_a_quota_home_moves_into_a_new_folder_with_its_limit_and_the_old_folder_goes(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = hub_db
    a = QuotaNode("nodeA", {VOLUME: tar_of(*HOME)}, {VOLUME})
    b = QuotaNode("nodeB", {}, set())
    quota_routes(monkeypatch, {PROXIES["nodeA"]: a, PROXIES["nodeB"]: b})
    plan = plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, NETWORK, UP)
    said: list[str] = []
    homemove.move_home(plan, quota_engine(a), quota_engine(b), path, say=said.append)
    options = quota_home_options(QUOTA.root, VOLUME)
    assert b.calls == [f"make folder {QUOTA.limit}", f"create_volume {options}", "put_archive"]
    assert b.folders == {VOLUME} and manifest_of(io.BytesIO(b.homes[VOLUME])) == manifest_of(
        io.BytesIO(tar_of(*HOME))
    )
    assert a.calls == ["remove_volume", "delete folder"] and a.folders == set() and a.homes == {}
    assert "deleted its home folder on node nodeA, and its quota" in said
    assert read_home(path, "alice") == HomeRow(1, False, {HOME_NODE_STATE: "nodeB", "other": 1})


def test_an_old_quota_folder_not_deleted_after_a_move_is_named_for_the_admin(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move is done; the old node's diskquota service fails: the admin is told which
    folder to delete there, by its path under that node's QUOTA_ROOT."""
    path, _ = hub_db
    a = QuotaNode("nodeA", {VOLUME: tar_of(*HOME)}, {VOLUME})
    b = QuotaNode("nodeB", {}, set())
    quota_routes(monkeypatch, {PROXIES["nodeA"]: a, PROXIES["nodeB"]: b})

    def refused(url: str, volume: str) -> bool:
        raise DiskQuotaError("no diskquota service")

    monkeypatch.setattr(homemove, "request_removal_through", refused)
    plan = plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, NETWORK, UP)
    said: list[str] = []
    homemove.move_home(plan, quota_engine(a), quota_engine(b), path, say=said.append)
    assert said[-1].endswith(f"(btrfs subvolume delete /srv/homes/{VOLUME})"), said[-1]
    assert read_home(path, "alice").state[HOME_NODE_STATE] == "nodeB"


def test_a_quota_home_is_not_moved_into_a_folder_of_that_name_already_there(
    hub_db: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = hub_db
    a = QuotaNode("nodeA", {VOLUME: tar_of(*HOME)}, {VOLUME})
    b = QuotaNode("nodeB", {}, {VOLUME})  # an earlier copy's folder, its volume removed
    quota_routes(monkeypatch, {PROXIES["nodeA"]: a, PROXIES["nodeB"]: b})
    plan = plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, NETWORK, UP)
    with pytest.raises(
        MoveRefused, match=f"node nodeB already has a home folder /srv/homes/{VOLUME}"
    ):
        homemove.move_home(plan, quota_engine(a), quota_engine(b), path, say=str)
    assert a.calls == b.calls == [] and read_home(path, "alice") == STOPPED_IN_DB


def test_a_quota_home_restored_is_a_new_folder_once_the_old_one_went_with_its_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = QuotaNode("nodeA", {VOLUME: OLD_HOME}, {VOLUME})
    quota_routes(monkeypatch, {PROXIES["nodeA"]: a})
    written = restore_home("alice", quota_engine(a), io.BytesIO(tar_of(*HOME)), say=str)
    options = quota_home_options(QUOTA.root, VOLUME)
    assert a.calls == [
        "remove_volume", "delete folder", f"make folder {QUOTA.limit}",
        f"create_volume {options}", "put_archive",
    ]  # fmt: skip
    assert "jovyan/stale.txt" not in written.entries and a.folders == {VOLUME}
