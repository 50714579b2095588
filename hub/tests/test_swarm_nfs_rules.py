"""HOME_NFS (Swarm mode): every home a folder of one NFS export, mounted by whichever node
runs the server.

One function (`labhub.contract.nfs_home_options`) writes the volume's options for the
spawner and for the Docker proxy. These tests drive the real LabSwarmSpawner against a
recording manager (testsupport.swarmstandins) and its body through the proxy's Swarm
rules: exactly the NFS home passes, every other option is refused (a host bind in
disguise, another server, another user's folder, an added mount option), the setting is
checked strictly, there is no home node, and a node that cannot mount the export ends the
spawn naming the export.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub, Server
from labhub import cli
from labhub.contract import OWNER_LABEL, nfs_export, nfs_home_options, volume_name_for
from labhub.dockerpolicy import Policy, Refused, check_swarm_request
from labhub.dockerproxy import policy_from_env
from labhub.settings import Settings, SettingsError
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner, swarm_spawner_config
from tornado import web

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.swarmstandins import HubUser, SlowManager

pytestmark = pytest.mark.unit

EXPORT = "nfs.lab.example.edu:/export/homes"
SWARM_NFS_ENV = {**MINIMAL_ENV, "ENGINE": "swarm", "HOME_NFS": EXPORT}
SETTINGS = Settings.from_env(SWARM_NFS_ENV)
IMAGE = SETTINGS.workspace_image
FRONTENDS = ["labhub-hub", "labhub-proxy-chp"]
NETWORK = SETTINGS.docker_network
POLICY = Policy(
    allowed_images=frozenset({IMAGE}),
    network=NETWORK,
    frontend_containers=frozenset(FRONTENDS),
    home_nfs=EXPORT,
)
CREATE = "/v1.41/services/create"
ALICES_HOME = volume_name_for("alice", NETWORK)
# What a node's engine (20.10) says when its kernel has no NFS client (seen on the test
# cluster, tests/test_swarm.py; flags 0x6: nosuid and nodev, as the kernel's mount flags).
NO_NFS_CLIENT = (
    "starting container failed: error while mounting volume '/var/lib/docker/volumes/"
    f"{ALICES_HOME}/_data': failed to mount local volume: mount :/export/homes/{ALICES_HOME}:"
    f"/var/lib/docker/volumes/{ALICES_HOME}/_data, flags: 0x6, data: addr=10.0.0.5,nfsvers=4: "
    "no such device"
)


def start(manager: SlowManager, user: str = "alice", state: dict[str, Any] | None = None) -> Any:
    """Start `user`'s server with HOME_NFS against `manager`; the spawner."""
    spawner = LabSwarmSpawner(
        user=HubUser(user), hub=Hub(), frontend_containers=FRONTENDS,
        **swarm_spawner_config(SETTINGS),
    )  # fmt: skip
    spawner.load_state(state or {})
    spawner.server = Server(base_url=f"/user/{user}/")
    original, LabSwarmSpawner._client = LabSwarmSpawner._client, manager
    try:
        asyncio.run(asyncio.wait_for(spawner.start(), 30))
    finally:
        LabSwarmSpawner._client = original
    return spawner


@pytest.fixture(scope="module")
def sent_body() -> dict[str, Any]:
    manager = SlowManager()
    start(manager)
    return manager.created[f"{NETWORK}-user-alice"]


def home_mount(body: dict[str, Any]) -> dict[str, Any]:
    mount: dict[str, Any] = body["TaskTemplate"]["ContainerSpec"]["Mounts"][0]
    return mount


def test_the_home_is_the_local_driver_with_exactly_the_nfs_options_and_passes(
    sent_body: dict[str, Any],
) -> None:
    assert home_mount(sent_body) == {
        "Target": "/home/jovyan",
        "Source": ALICES_HOME,
        "Type": "volume",
        "ReadOnly": False,
        "VolumeOptions": {
            "DriverConfig": {
                "Name": "local",
                "Options": {
                    "type": "nfs",
                    "o": "addr=nfs.lab.example.edu,nfsvers=4,nosuid,nodev",
                    "device": f":/export/homes/{ALICES_HOME}",
                },
            }
        },
    }
    allowed = check_swarm_request(POLICY, "POST", CREATE, json.dumps(sent_body).encode())
    assert json.loads(allowed.body) == sent_body
    # A proxy without HOME_NFS takes no volume options at all.
    without = Policy(POLICY.allowed_images, NETWORK, frontend_containers=POLICY.frontend_containers)
    with pytest.raises(Refused, match=r"VolumeOptions on .* are not allowed"):
        check_swarm_request(without, "POST", CREATE, json.dumps(sent_body).encode())


def _options(**change: str) -> Any:
    def mutate(mount: dict[str, Any]) -> None:
        mount["VolumeOptions"]["DriverConfig"]["Options"].update(change)

    return mutate


BOBS_HOME = volume_name_for("bob", NETWORK)
# Each takes the spawner's own home mount one step beyond what it sends.
BEYOND = {
    "host-bind-in-disguise": (
        _options(type="none", o="bind", device="/"),
        "must be exactly its NFS home",
    ),
    "another-server": (
        _options(o="addr=evil.example.org,nfsvers=4,nosuid,nodev"),
        "must be exactly its NFS home",
    ),
    "another-users-folder": (
        _options(device=f":/export/homes/{BOBS_HOME}"),
        "must be exactly its NFS home",
    ),
    "the-whole-export": (_options(device=":/export/homes"), "must be exactly its NFS home"),
    "set-user-id-allowed": (
        _options(o="addr=nfs.lab.example.edu,nfsvers=4,nodev"),
        "must be exactly its NFS home",
    ),
    "an-added-option": (_options(uid="0"), "must be exactly its NFS home"),
    "another-driver": (
        lambda m: m["VolumeOptions"]["DriverConfig"].update(Name="rclone"),
        "must be exactly its NFS home",
    ),
    "no-copy-and-labels": (
        lambda m: m["VolumeOptions"].update(NoCopy=True, Labels={"x": "y"}),
        "must be exactly its NFS home",
    ),
    "a-node-local-home": (lambda m: m.pop("VolumeOptions"), "must be exactly its NFS home"),
    "bobs-home-with-its-own-options": (
        lambda m: m.update(
            Source=BOBS_HOME,
            VolumeOptions={
                "DriverConfig": {"Name": "local", "Options": nfs_home_options(EXPORT, BOBS_HOME)}
            },
        ),
        "mounts only its own home",
    ),
}


@pytest.mark.parametrize(("change", "reason"), BEYOND.values(), ids=BEYOND)
def test_each_volume_option_beyond_the_users_nfs_home_is_refused(
    sent_body: dict[str, Any], change: Any, reason: str
) -> None:
    body = copy.deepcopy(sent_body)
    change(home_mount(body))
    with pytest.raises(Refused, match=reason):
        check_swarm_request(POLICY, "POST", CREATE, json.dumps(body).encode())


def test_there_is_no_home_node_a_server_goes_to_the_least_busy_node() -> None:
    """Without HOME_NFS a recorded home node wins over load (test_swarm_rules)."""
    manager = SlowManager()
    busy = {"Labels": {OWNER_LABEL: "x"}}
    for name, node in (("x1", "n1"), ("x2", "n1"), ("x3", "n2")):
        manager.created[name] = {
            **busy,
            "TaskTemplate": {"Placement": {"Constraints": [f"node.id=={node}"]}},
        }
    spawner = start(manager, state={HOME_NODE_STATE: "n1"})
    body = manager.created[f"{NETWORK}-user-alice"]
    assert body["TaskTemplate"]["Placement"]["Constraints"] == ["node.id==n3"]
    assert HOME_NODE_STATE not in spawner.get_state()


def test_a_node_that_cannot_mount_the_export_ends_the_spawn_naming_it() -> None:
    manager = SlowManager(task_error=NO_NFS_CLIENT, task_state="failed")
    with pytest.raises(web.HTTPError) as failed:
        start(manager)
    assert failed.value.status_code == 503
    message = str(failed.value.log_message)
    assert (
        f"node n1 cannot mount the home nfs.lab.example.edu:/export/homes/{ALICES_HOME} "
        "(HOME_NFS): check that the node has an NFS client"
    ) in message
    # The service is removed: the Swarm would retry the task on and on.
    assert [(m, p) for m, p, _, _ in manager.sent if m == "DELETE"] == [("DELETE", "/services/svc")]


@pytest.mark.parametrize(
    "raw",
    [
        "nfs.lab.example.edu:/export/homes,suid",  # a comma adds a mount option
        "nfs.lab.example.edu:/export/homes/../..",
        "nfs.lab.example.edu:export/homes",  # a relative path
        "nfs.lab.example.edu:/export homes",
        "nfs=x:/export",
        "nfs.lab.example.edu,port=1:/export",
        "nfs.lab.example.edu:/export/",
        "nfs.lab.example.edu",
        ":/export",
        "2001:db8::5:/export",  # IPv6 without brackets
        "[2001:db8::5%eth0]:/export",
        "[nfs.lab.example.edu]:/export",
        "-o.example:/export",
    ],
)
def test_home_nfs_is_refused_unless_a_host_and_an_absolute_plain_path(raw: str) -> None:
    with pytest.raises(ValueError, match="is not an NFS export: give <server>:/absolute/path"):
        nfs_export(raw)
    with pytest.raises(SettingsError, match=r"HOME_NFS.*is not an NFS export"):
        Settings.from_env({**SWARM_NFS_ENV, "HOME_NFS": raw})
    env = {"PROXY_POLICY": "swarm", "ALLOWED_IMAGES": IMAGE, "FRONTEND_CONTAINERS": "hub"}
    with pytest.raises(SystemExit, match=r"HOME_NFS=.* is not an NFS export"):
        policy_from_env({**env, "HOME_NFS": raw})


@pytest.mark.parametrize(
    ("raw", "addr", "device"),
    [
        ("10.0.0.5:/homes", "10.0.0.5", ":/homes/h"),
        ("[2001:db8::5]:/homes", "2001:db8::5", ":/homes/h"),
        ("nfs:/", "nfs", ":/h"),  # an NFSv4 server's pseudo-root
    ],
)
def test_an_address_or_a_root_export_gives_the_mounts_addr_and_device(
    raw: str, addr: str, device: str
) -> None:
    assert nfs_home_options(raw, "h") == {
        "type": "nfs",
        "o": f"addr={addr},nfsvers=4,nosuid,nodev",
        "device": device,
    }


def test_home_nfs_is_for_swarm_mode_only() -> None:
    with pytest.raises(SettingsError, match="HOME_NFS is only for ENGINE=swarm"):
        Settings.from_env({**MINIMAL_ENV, "ENGINE": "docker", "HOME_NFS": EXPORT})
    for kind in ("hub", "node"):
        env = {"PROXY_POLICY": kind, "ALLOWED_IMAGES": IMAGE, "HOME_NFS": EXPORT}
        with pytest.raises(SystemExit, match="HOME_NFS is only for PROXY_POLICY=swarm"):
            policy_from_env(env)


def test_move_home_home_archive_and_home_restore_say_the_homes_are_on_the_nfs_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jupyterhub.sqlite"
    db = orm.new_session_factory(f"sqlite:///{path}")()
    db.add(orm.Spawner(user=orm.User(name="alice"), name="", state={HOME_NODE_STATE: "n1"}))
    db.commit()
    for name, value in SWARM_NFS_ENV.items():
        monkeypatch.setenv(name, value)
    proxy = ["--proxy=n1=tcp://a:2375", "--proxy=n2=tcp://b:2375"]
    assert cli.main(["move-home", "alice", "n2", *proxy, f"--db={path}"]) == 2
    assert f"refused: the homes are on the NFS server ({EXPORT}, HOME_NFS)" in (
        capsys.readouterr().err
    )
    assert cli.main(["home-archive", "alice", f"--db={path}"]) == 2
    assert f"alice's home is on the NFS server ({EXPORT}, HOME_NFS)" in capsys.readouterr().err
    assert cli.main(["home-restore", "alice", f"--db={path}"]) == 2
    assert f"refused: alice's home is on the NFS server ({EXPORT}" in capsys.readouterr().err
    assert orm.User.find(db, "alice").orm_spawners[""].state == {HOME_NODE_STATE: "n1"}
