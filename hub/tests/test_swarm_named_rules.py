"""Named servers and DATASETS in Swarm mode, without a cluster: one home node per user,
the datasets mounted read-only, the Swarm proxy's rules for both, and the clear error of
a node without a dataset's folder. On a real cluster: tests/test_swarm_named.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub, Server
from labhub.contract import OWNER_LABEL, volume_name_for
from labhub.dockerpolicy import Policy, Refused, check_swarm_request
from labhub.dockerproxy import policy_from_env
from labhub.homemove import HomeRow, MoveFailed, MoveRefused, plan_move, read_home, switch_home
from labhub.settings import Settings
from labhub.swarmplacement import SwarmNode, pinned_node
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner, swarm_spawner_config
from sqlalchemy.orm import Session
from tornado import web

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser, SlowManager

pytestmark = pytest.mark.unit

DATASETS = [
    {"name": "mnist", "source": "/srv/datasets/mnist"},
    {"name": "scans", "source": "lab-scans"},
]
SETTINGS = Settings.from_env({**MINIMAL_ENV, "ENGINE": "swarm", "DATASETS": json.dumps(DATASETS)})
IMAGE = SETTINGS.workspace_image
FRONTENDS = ["labhub-hub", "labhub-proxy-chp"]
POLICY = Policy(
    allowed_images=frozenset({IMAGE}),
    network=SETTINGS.docker_network,
    frontend_containers=frozenset(FRONTENDS),
    dataset_binds=frozenset(d.bind for d in SETTINGS.datasets),
)
PREFIX = f"{POLICY.network}-user-"
CREATE = "/v1.41/services/create"
MISSING_FOLDER = (
    'invalid mount config for type "bind": bind source path does not exist: /srv/datasets/mnist'
)


@pytest.fixture
def db() -> Iterator[Session]:
    """A real (in-memory) JupyterHub database: a spawner's name and state are its rows."""
    session = orm.new_session_factory("sqlite://")()
    yield session
    session.close()


def spawner_for(db: Session, user: str, server: str = "") -> LabSwarmSpawner:
    """`user`'s server `server` ("" the default) with its row in `db`, as the hub makes it."""
    row = orm.User.find(db, user) or orm.User(name=user)
    db.add(row)
    orm_spawner = row.orm_spawners.get(server) or orm.Spawner(user=row, name=server)
    db.add(orm_spawner)
    db.commit()
    spawner = LabSwarmSpawner(
        user=HubUser(user), orm_spawner=orm_spawner, hub=Hub(), frontend_containers=FRONTENDS,
        **swarm_spawner_config(SETTINGS),
    )  # fmt: skip
    spawner.server = Server(base_url=f"/user/{user}/{server}/" if server else f"/user/{user}/")
    return spawner


def test_named_servers_and_datasets_are_accepted_with_engine_swarm() -> None:
    assert SETTINGS.engine == "swarm" and SETTINGS.named_servers > 0
    assert [d.name for d in SETTINGS.datasets] == ["mnist", "scans"]
    env = {"PROXY_POLICY": "swarm", "ALLOWED_IMAGES": IMAGE, "FRONTEND_CONTAINERS": "hub"}
    policy_from_env({**env, "DATASETS": json.dumps(DATASETS)})


def spawn(db: Session, manager: SlowManager, *servers: tuple[str, str]) -> list[LabSwarmSpawner]:
    """Start these (user, server) at once against `manager`, then record their state as
    the hub does; their spawners."""
    original = LabSwarmSpawner._client
    LabSwarmSpawner._client = manager
    spawners = [spawner_for(db, user, server) for user, server in servers]

    async def together() -> None:
        await asyncio.wait_for(asyncio.gather(*(s.start() for s in spawners)), 30)

    try:
        asyncio.run(together())
    finally:
        LabSwarmSpawner._client = original
    for spawner in spawners:
        spawner.orm_spawner.state = spawner.get_state()
    db.commit()
    return spawners


def test_first_spawns_of_two_servers_of_one_user_at_once_share_one_node(db: Session) -> None:
    """The old spawner placed each server by load: alice's two servers split over nodes."""
    manager = SlowManager()
    alice, alice_train, _ = spawn(db, manager, ("alice", ""), ("alice", "train"), ("bob", ""))
    nodes = {
        name: pinned_node(body["TaskTemplate"]["Placement"]["Constraints"])
        for name, body in manager.created.items()
    }
    assert set(nodes) == {f"{PREFIX}alice", f"{PREFIX}alice--train", f"{PREFIX}bob"}
    assert nodes[f"{PREFIX}alice"] == nodes[f"{PREFIX}alice--train"] != nodes[f"{PREFIX}bob"]
    assert alice.home_node == alice_train.home_node == nodes[f"{PREFIX}alice"]
    # Both mount alice's one home, and each body passes the proxy.
    for body in manager.created.values():
        mounts = body["TaskTemplate"]["ContainerSpec"]["Mounts"]
        owner = body["Labels"][OWNER_LABEL]
        assert mounts[0]["Source"] == volume_name_for(owner, POLICY.network)
        check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())


def test_a_named_server_started_later_goes_to_the_home_node_the_database_records(
    db: Session,
) -> None:
    """The default server ran (on the least busy node), then stopped: its node is in the
    hub's database. Named servers started later (two at once) go there, not by load."""
    manager = SlowManager()
    [alice] = spawn(db, manager, ("alice", ""))
    home = alice.home_node
    manager.created.clear()  # stopped: no service left to read the node from
    spawn(db, manager, ("bob", ""), ("carol", ""))  # the other nodes are now as busy
    named = spawn(db, manager, ("alice", "train"), ("alice", "eval"))
    assert [s.home_node for s in named] == [home, home]
    assert {
        pinned_node(
            manager.created[f"{PREFIX}alice--{s}"]["TaskTemplate"]["Placement"]["Constraints"]
        )
        for s in ("train", "eval")
    } == {home}
    # Recorded for each of them too, as for the default server.
    rows = orm.User.find(db, "alice").orm_spawners
    assert {name: row.state[HOME_NODE_STATE] for name, row in rows.items()} == {
        "": home, "train": home, "eval": home,
    }  # fmt: skip


def sent_service() -> dict[str, Any]:
    """What LabSwarmSpawner sends to create alice's server `train`, with the datasets."""
    manager = SlowManager()
    spawn(orm.new_session_factory("sqlite://")(), manager, ("alice", "train"))
    return manager.created[f"{PREFIX}alice--train"]


def test_a_named_server_mounts_the_datasets_read_only_and_passes_the_proxy() -> None:
    body = sent_service()
    assert body["Name"] == f"{POLICY.network}-user-alice--train"
    mounts = body["TaskTemplate"]["ContainerSpec"]["Mounts"]
    assert mounts[2:] == [
        {"Target": "/datasets/mnist", "Source": "/srv/datasets/mnist", "Type": "bind",
         "ReadOnly": True},
        {"Target": "/datasets/scans", "Source": "lab-scans", "Type": "volume", "ReadOnly": True},
    ]  # fmt: skip
    check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())


def _changed(change: Any) -> dict[str, Any]:
    body = sent_service()
    change(body, body["TaskTemplate"]["ContainerSpec"]["Mounts"])
    return body


BEYOND = {
    "dataset-writable": (lambda b, m: m[2].update(ReadOnly=False), "read-only"),
    "dataset-readonly-unset": (lambda b, m: m[2].pop("ReadOnly"), "read-only"),
    "dataset-elsewhere": (lambda b, m: m[2].update(Target="/home/jovyan/x"), "not allowed"),
    "dataset-as-volume": (lambda b, m: m[2].update(Type="volume"), "not as declared"),
    "other-bind": (
        lambda b, m: m[2].update(Source="/var/run", Target="/datasets/mnist"),
        "not allowed",
    ),
    "undeclared-bind-read-only": (
        lambda b, m: m.append({"Target": "/x", "Source": "/etc", "Type": "bind", "ReadOnly": True}),
        "Mounts: the user's volume",
    ),
    "another-users-home": (
        lambda b, m: m[0].update(Source=volume_name_for("bob", POLICY.network)),
        "mounts only its own home",
    ),
    "another-users-home-read-only": (
        lambda b, m: m[3].update(Source=volume_name_for("bob", POLICY.network), ReadOnly=True),
        "mounts only its own home",
    ),
    "named-for-another-user": (
        lambda b, m: b.update(Name=f"{POLICY.network}-user-bob--train"),
        "is not a server of its owner",
    ),
    "named-with-a-suffix": (
        lambda b, m: b.update(Name=f"{POLICY.network}-user-alicex"),
        "is not a server of its owner",
    ),
}


@pytest.mark.parametrize(("change", "reason"), BEYOND.values(), ids=BEYOND)
def test_each_step_beyond_a_named_server_with_datasets_is_refused(change: Any, reason: str) -> None:
    body = json.dumps(_changed(change)).encode()
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, "POST", CREATE, body)


def test_a_node_without_a_datasets_folder_ends_the_spawn_naming_the_node_and_the_path(
    db: Session,
) -> None:
    """The old spawner waited out start_timeout while the Swarm retried the task."""
    manager = SlowManager(task_error=MISSING_FOLDER)
    spawner = spawner_for(db, "alice", "")
    original, LabSwarmSpawner._client = LabSwarmSpawner._client, manager
    try:
        with pytest.raises(web.HTTPError) as failed:
            asyncio.run(asyncio.wait_for(spawner.start(), 30))
        # The service is removed: its task is not retried on while the hub counts it stopped.
        removals = [(m, p) for m, p, _, _ in manager.sent if m == "DELETE"]
        assert removals == [("DELETE", "/services/svc")]
        assert failed.value.status_code == 503
        assert "node n1 has no folder /srv/datasets/mnist for a dataset" in str(
            failed.value.log_message
        )
        # The hub then stops the same spawner: it must not remove the service again (the
        # engine answers 404, the proxy 403 for want of an owner label: the stop would fail).
        asyncio.run(spawner.stop())
    finally:
        LabSwarmSpawner._client = original
    assert [(m, p) for m, p, _, _ in manager.sent if m == "DELETE"] == removals


@pytest.fixture
def hub_file(tmp_path: Path) -> tuple[Path, Session]:
    """A JupyterHub database file: alice's default server stopped on nodeA, and her named
    server `train`."""
    path = tmp_path / "jupyterhub.sqlite"
    session = orm.new_session_factory(f"sqlite:///{path}")()
    user = orm.User(name="alice")
    session.add(user)
    session.add(orm.Spawner(user=user, name="", state={HOME_NODE_STATE: "nodeA"}))
    session.add(orm.Spawner(user=user, name="train", state={HOME_NODE_STATE: "nodeA"}))
    session.commit()
    return path, session


PROXIES = {"nodeA": "tcp://a:2375", "nodeB": "tcp://b:2375"}
NODES = [SwarmNode("nodeA", True, True), SwarmNode("nodeB", True, True)]


def test_move_home_is_refused_while_a_named_server_of_the_user_runs(
    hub_file: tuple[Path, Session],
) -> None:
    """The old check looked at the default server only: the home was copied under a running
    named server, which kept writing to the old copy."""
    path, session = hub_file
    plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, POLICY.network, NODES)
    orm.User.find(session, "alice").orm_spawners["train"].server = orm.Server()
    session.commit()
    with pytest.raises(MoveRefused, match="or a named server of theirs: stop them first"):
        plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, POLICY.network, NODES)


def test_a_named_server_started_during_the_copy_stops_the_switch(
    hub_file: tuple[Path, Session],
) -> None:
    path, session = hub_file
    plan = plan_move("alice", "nodeB", read_home(path, "alice"), PROXIES, POLICY.network, NODES)
    orm.User.find(session, "alice").orm_spawners["train"].server = orm.Server()
    session.commit()
    with pytest.raises(MoveFailed, match="started during the copy"):
        switch_home(path, plan.user, HomeRow(plan.spawner_id, False, plan.state), plan.target)
    assert read_home(path, "alice") == HomeRow(plan.spawner_id, True, {HOME_NODE_STATE: "nodeA"})
