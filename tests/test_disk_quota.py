"""Disk quotas enforced by the kernel, on a btrfs filesystem this test makes on a loop device.

The diskquota service (`python -m labhub.diskquota run`, as its compose service runs it)
serves a QUOTA_ROOT on that filesystem; LabSpawner starts servers through our own
instance of the Docker socket proxy (with QUOTA_ROOT set, as compose sets it). Inside a
server, as the student's uid, a write past the quota fails with "Disk quota exceeded",
the server keeps running, and another student's home is not affected. The proxy is
also asked for volumes bound anywhere else; the engine is asked afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from labhub.contract import OWNER_LABEL, quota_home_options, volume_name_for
from labhub.diskquota import DiskQuotaError, ensure_home, request_home, request_removal, usage
from labhub.spawner import LabSpawner
from labhub.volumes import remove_user_volume
from loopfs import btrfs_with_quotas
from stacks import STACK

from testsupport.dockerproxy import running_proxy
from testsupport.images import ensure_base_image
from testsupport.spawners import proxied_spawner

pytestmark = pytest.mark.integration
MIB = 1024**2


@pytest.fixture(scope="module")
def btrfs_root() -> Iterator[Path]:
    with btrfs_with_quotas() as root:
        yield root


@pytest.fixture(scope="module")
def service(btrfs_root: Path) -> Iterator[str]:
    """The diskquota service serving btrfs_root on sockets of its own (the hub's, and the
    usage socket beside it), with the capabilities its container has (CAP_SYS_ADMIN and
    CAP_CHOWN only: no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH to open a student's home);
    yields the hub's socket."""
    socket_path = str(btrfs_root.parent / "diskquota.sock")
    usage_path = str(btrfs_root.parent / "usage.sock")
    process = subprocess.Popen(
        [
            "setpriv",
            "--bounding-set=-all,+sys_admin,+chown",
            sys.executable,
            "-m",
            "labhub.diskquota",
            "run",
            "--socket",
            socket_path,
            "--usage-socket",
            usage_path,
        ],
        env={**os.environ, "QUOTA_ROOT": str(btrfs_root), "DISK_QUOTA_MAX": "100M"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(socket_path):
            assert process.poll() is None and time.monotonic() < deadline, "service did not start"
            time.sleep(0.1)
        yield socket_path
    finally:
        process.terminate()
        print(process.communicate(timeout=30)[0])


@pytest.fixture(scope="module")
def world(btrfs_root: Path, service: str) -> Iterator[dict[str, Any]]:
    engine = docker.from_env()
    network = f"{STACK}-quotatest-{uuid.uuid4().hex[:6]}"
    net = engine.networks.create(network, internal=True, labels={"labhub.test": "disk-quota"})
    image = ensure_base_image()
    try:
        with running_proxy(
            ALLOWED_IMAGES=image, DOCKER_NETWORK=network, QUOTA_ROOT=str(btrfs_root)
        ) as port:
            yield {"network": network, "image": image, "port": port, "socket": service}
    finally:
        for container in engine.containers.list(all=True, filters={"network": network}):
            container.remove(force=True)
        net.remove()
        for volume in engine.volumes.list(filters={"name": network}):
            volume.remove(force=True)


@contextlib.contextmanager
def server_of(
    world: dict[str, Any],
    btrfs_root: Path,
    tmp_path: Path,
    groups: tuple[str, ...] = (),
    username: str = "",
) -> Iterator[str]:
    """A user's server started by LabSpawner through the proxy; yields its container id."""
    username = username or f"quota{uuid.uuid4().hex[:6]}"

    spawner = proxied_spawner(
        world["port"], world["image"], world["network"], tmp_path, username, groups,
        env={
            "QUOTA_ROOT": str(btrfs_root),
            "DISK_QUOTA": "20M",
            "DISK_QUOTA_GROUPS": '{"thesis": "60M"}',
        },
        diskquota_socket=world["socket"],
    )  # fmt: skip
    engine = docker.from_env()
    try:
        asyncio.run(spawner.start())
        yield spawner.container_id
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(spawner.stop())
        LabSpawner._client = None
        for leftover in engine.api.containers(
            all=True, filters={"label": f"{OWNER_LABEL}={username}"}
        ):
            # AutoRemove may be removing it already (404 or 409).
            with contextlib.suppress(docker.errors.APIError):
                engine.api.remove_container(leftover["Id"], force=True)


def as_student(container: str, script: str) -> tuple[int, str]:
    code, output = (
        docker.from_env().containers.get(container).exec_run(["sh", "-c", script], user="1000:100")
    )
    return code, output.decode()


def test_a_write_past_the_quota_fails_and_the_server_stays_up(
    world: dict[str, Any], btrfs_root: Path, tmp_path: Path
) -> None:
    with (
        server_of(world, btrfs_root, tmp_path) as mine,
        server_of(world, btrfs_root, tmp_path) as other,
    ):
        code, out = as_student(mine, "dd if=/dev/zero of=/home/jovyan/big bs=1M count=40")
        assert code != 0 and "Disk quota exceeded" in out, out
        # The engine reports the home bound onto its folder under QUOTA_ROOT.
        [home] = [
            m
            for m in docker.from_env().api.inspect_container(mine)["Mounts"]
            if m["Destination"] == "/home/jovyan"
        ]
        folder = btrfs_root / home["Name"]
        assert folder.is_dir() and home["RW"]
        subprocess.run(["sync"], check=True)
        used = usage(folder)
        assert used.limit == 20 * MIB and 15 * MIB < used.used <= 20 * MIB
        # Still running, still usable once space is freed; the other home is untouched.
        assert docker.from_env().containers.get(mine).status == "running"
        code, out = as_student(mine, "rm /home/jovyan/big && echo ok > /home/jovyan/note")
        assert code == 0, out
        code, out = as_student(other, "dd if=/dev/zero of=/home/jovyan/f bs=1M count=15")
        assert code == 0, out
        # The admin's view: both homes, each with its usage and its 20 MiB limit.
        subprocess.run(["sync"], check=True)
        listed = subprocess.run(
            [sys.executable, "-m", "labhub.diskquota", "report"],
            env={**os.environ, "QUOTA_ROOT": str(btrfs_root)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        rows = {line.split()[0]: line.split()[1:] for line in listed[1:]}
        assert rows[home["Name"]][1] == "20.0" and float(rows[home["Name"]][0]) < 1
        assert len(rows) == 2 and all(limit == "20.0" for _, limit in rows.values())


def test_a_group_limit_raises_the_default(
    world: dict[str, Any], btrfs_root: Path, tmp_path: Path
) -> None:
    with server_of(world, btrfs_root, tmp_path, groups=("thesis",)) as mine:
        code, out = as_student(mine, "dd if=/dev/zero of=/home/jovyan/f bs=1M count=40")
        assert code == 0, out
        code, out = as_student(mine, "dd if=/dev/zero of=/home/jovyan/g bs=1M count=40")
        assert code != 0 and "Disk quota exceeded" in out, out


def test_a_home_made_before_quotas_is_refused_not_used_without_a_limit(
    world: dict[str, Any], btrfs_root: Path, tmp_path: Path
) -> None:
    username = f"old{uuid.uuid4().hex[:6]}"
    docker.from_env().volumes.create(volume_name_for(username, world["network"]))
    with (
        pytest.raises(DiskQuotaError, match="predates QUOTA_ROOT"),
        server_of(world, btrfs_root, tmp_path, username=username),
    ):
        pass


def test_removing_a_deleted_users_volume_removes_their_home_too(
    btrfs_root: Path, service: str, tmp_path: Path
) -> None:
    engine = docker.from_env()
    network = f"{STACK}-quotarm"
    username = f"gone{uuid.uuid4().hex[:6]}"
    volume = volume_name_for(username, network)
    asyncio.run(request_home(volume, 10 * MIB, service))
    engine.volumes.create(
        volume, driver="local", driver_opts=quota_home_options(str(btrfs_root), volume)
    )
    (btrfs_root / volume / "notes.txt").write_text("thesis draft\n")
    (btrfs_root / volume).chmod(0o700)  # as the student's server leaves it (owner 1000:100)
    report = remove_user_volume(username, network, tmp_path / "no.sqlite", engine, service)
    assert report == f"removed {volume} ({username!r}); removed its home under QUOTA_ROOT"
    assert not (btrfs_root / volume).exists()
    assert not engine.api.volumes(filters={"name": volume})["Volumes"]
    # Again: nothing left anywhere, said so.
    again = remove_user_volume(username, network, tmp_path / "no.sqlite", engine, service)
    assert again == f"no volume {volume} for {username!r}: nothing to remove"


def test_the_service_takes_only_user_volumes_and_bounded_limits(
    btrfs_root: Path, service: str
) -> None:
    for volume, limit, reason in [
        ("../../etc", MIB, "not a user volume"),
        ("hub-data", MIB, "not a user volume"),
        ("labhub-user-alice", 101 * MIB, "DISK_QUOTA_MAX"),
        ("labhub-user-alice", 0, "DISK_QUOTA_MAX"),
    ]:
        with pytest.raises(DiskQuotaError, match=reason):
            asyncio.run(request_home(volume, limit, service))
    assert not (btrfs_root / "labhub-user-alice").exists()
    for volume in ("..", "../homes", "hub-data"):
        with pytest.raises(DiskQuotaError, match="not a user volume"):
            asyncio.run(request_removal(volume, service))
    assert btrfs_root.is_dir()
    with pytest.raises(DiskQuotaError, match="not a user volume"):
        ensure_home(btrfs_root, "x/../../y", MIB)


@pytest.mark.parametrize(
    "device",
    ["/", "/etc", "{root}", "{root}/{other}", "{root}/{volume}/..", "/var/run/docker.sock"],
)
def test_a_volume_bound_anywhere_but_its_own_quota_folder_is_refused(
    world: dict[str, Any], btrfs_root: Path, device: str
) -> None:
    volume = f"{world['network']}-user-attack{uuid.uuid4().hex[:6]}"
    other = f"{world['network']}-user-victim"
    proxied = docker.APIClient(base_url=f"tcp://127.0.0.1:{world['port']}", version="1.41")
    opts = {
        "type": "none",
        "o": "bind",
        "device": device.format(root=btrfs_root, other=other, volume=volume),
    }
    with pytest.raises(docker.errors.APIError) as error:
        proxied.create_volume(volume, driver="local", driver_opts=opts)
    assert error.value.status_code == 403 and "driver options" in str(error.value)
    assert not docker.from_env().api.volumes(filters={"name": volume})["Volumes"]
