"""Disk quotas: who gets which limit, what the settings accept, what the proxy lets the hub
create (the kernel's enforcement is tests/test_disk_quota.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub import diskquota
from labhub.contract import quota_home_options, volume_name_for
from labhub.diskquota import DiskQuotas, Usage, is_home_volume
from labhub.dockerpolicy import Policy, Refused, check_request
from labhub.settings import Settings, SettingsError

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit
G = 1024**3
QUOTAS = DiskQuotas("/srv/homes", 10 * G, {"thesis": 50 * G, "staff": 20 * G}, {"bob": 1 * G})


@pytest.mark.parametrize(
    ("user", "groups", "limit"),
    [
        ("alice", (), 10 * G),
        ("alice", ("students",), 10 * G),
        ("alice", ("staff", "thesis"), 50 * G),
        ("bob", ("thesis",), 1 * G),
    ],
    ids=["default", "group-without-limit", "largest-group-limit", "user-override-wins"],
)
def test_a_users_own_limit_wins_then_their_largest_groups_then_the_default(
    user: str, groups: tuple[str, ...], limit: int
) -> None:
    assert QUOTAS.limit_for(user, groups) == limit


def test_the_settings_read_the_quotas_and_name_each_mistake() -> None:
    env = {
        **MINIMAL_ENV,
        "QUOTA_ROOT": "/srv/homes",
        "DISK_QUOTA": "10G",
        "DISK_QUOTA_GROUPS": '{"thesis": "50G", "staff": "20G"}',
        "DISK_QUOTA_USERS": '{"bob": "1G"}',
    }
    assert Settings.from_env(env).disk_quotas == QUOTAS
    assert Settings.from_env(MINIMAL_ENV).disk_quotas.root == ""
    bad = {
        **env,
        "QUOTA_ROOT": "srv/homes",
        "DISK_QUOTA": "0G",
        "DISK_QUOTA_GROUPS": '{"thesis": 50}',
        "DISK_QUOTA_USERS": "[]",
    }
    with pytest.raises(SettingsError) as error:
        Settings.from_env(bad)
    for name in ("QUOTA_ROOT=", "DISK_QUOTA=", "DISK_QUOTA_GROUPS=", "DISK_QUOTA_USERS="):
        assert name in str(error.value)


POLICY = Policy(allowed_images=frozenset({"img"}), network="labhub", quota_root="/srv/homes")
CREATE = "/v1.41/volumes/create"


def volume_create(name: str, options: dict[str, str] | None) -> bytes:
    return json.dumps({"Name": name, "Driver": "local", "DriverOpts": options}).encode()


def test_a_quota_home_volume_passes_bound_onto_its_own_folder_only() -> None:
    name = "labhub-user-alice"
    allowed = check_request(
        POLICY, "POST", CREATE, volume_create(name, quota_home_options("/srv/homes", name))
    )
    assert json.loads(allowed.body)["DriverOpts"]["device"] == "/srv/homes/labhub-user-alice"
    for options in (
        quota_home_options("/srv/homes", "labhub-user-bob"),
        quota_home_options("/", name),
        {**quota_home_options("/srv/homes", name), "o": "bind,rw,suid"},
        {**quota_home_options("/srv/homes", name), "device": "/srv/homes/labhub-user-alice/.."},
    ):
        with pytest.raises(Refused, match="driver options"):
            check_request(POLICY, "POST", CREATE, volume_create(name, options))
    without_quotas = Policy(allowed_images=frozenset({"img"}), network="labhub")
    with pytest.raises(Refused, match="driver options"):
        body = volume_create(name, quota_home_options("", name))
        check_request(without_quotas, "POST", CREATE, body)


@given(
    username=st.text(min_size=1, max_size=300),
    network=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", fullmatch=True),
)
def test_the_service_accepts_every_user_volume_name(username: str, network: str) -> None:
    """The diskquota service makes homes for any username the hub has, in any stack."""
    assert is_home_volume(volume_name_for(username, network))


@pytest.mark.parametrize("name", ["..", "../labhub-user-a", "labhub-user-a/b", "hub-data", ""])
def test_no_other_name_is_a_home(name: str) -> None:
    assert not is_home_volume(name)


# btrfs-progs 6.14's answers on a QUOTA_ROOT (one home, 30 MiB of 100 MiB; names shortened).
SUBVOLUMES = "ID 256 gen 13 top level 5 path lab-user-ada\n"
QGROUPS = """\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/5              16384        16384            none           none   <toplevel>
0/256         31526912     31526912       104857600           none   lab-user-ada
0/257             16384        16384            none           none   not-a-home
"""


def test_the_homes_usage_is_read_from_the_root_not_from_each_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A home is 0700 to its student: only QUOTA_ROOT itself is given to btrfs."""
    calls = []

    def btrfs(*args: str) -> str:
        calls.append(args)
        return SUBVOLUMES if args[0] == "subvolume" else QGROUPS

    monkeypatch.setattr(diskquota, "_btrfs", btrfs)
    found = diskquota.homes_usage(Path("/srv/homes"))
    assert found == {"lab-user-ada": Usage(31526912, 104857600)}
    assert {args[-1] for args in calls} == {"/srv/homes"}


def test_an_existing_home_gets_its_limit_by_qgroup_id_on_the_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A second start: the home exists and is 0700 to the student, so no btrfs call may
    name it (the service cannot open it)."""
    (tmp_path / "lab-user-ada").mkdir(mode=0o700)
    calls = []

    def btrfs(*args: str) -> str:
        calls.append(args)
        return SUBVOLUMES if args[0] == "subvolume" else QGROUPS

    monkeypatch.setattr(diskquota, "_btrfs", btrfs)
    assert diskquota.ensure_home(tmp_path, "lab-user-ada", 104857600).used == 31526912
    assert ("qgroup", "limit", "104857600", "0/256", str(tmp_path)) in calls
    assert {args[-1] for args in calls} == {str(tmp_path)}


def test_the_admins_table_puts_the_most_used_home_first_and_names_each_node() -> None:
    rows = [
        ("lab-user-ada", "gpu-a", Usage(10 * 2**20, 0)),
        ("lab-user-bob", "gpu-b", Usage(30 * 2**20, 40 * 2**20)),
        ("lab-user-ada", "gpu-b", Usage(10 * 2**20, 40 * 2**20)),  # an old copy
    ]
    header, *lines = diskquota.usage_table(rows, nodes=True).splitlines()
    assert header.split() == ["home", "volume", "node", "used", "MiB", "limit", "MiB"]
    assert [line.split() for line in lines] == [
        ["lab-user-bob", "gpu-b", "30.0", "40.0"],
        ["lab-user-ada", "gpu-a", "10.0", "none"],
        ["lab-user-ada", "gpu-b", "10.0", "40.0"],
    ]
    # One host: no node column.
    one_host = diskquota.usage_table([(v, "", u) for v, _, u in rows[:2]])
    assert [line.split() for line in one_host.splitlines()[1:]] == [
        ["lab-user-bob", "30.0", "40.0"],
        ["lab-user-ada", "10.0", "none"],
    ]
