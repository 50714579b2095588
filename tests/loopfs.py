"""A btrfs filesystem with quotas on, made on a loop device for a test and always removed,
and a test stack whose homes have quotas on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from stacks import Stack, launched_stack


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def btrfs_with_quotas(size: str = "512M") -> Iterator[Path]:
    """A mounted btrfs of ``size`` with `btrfs quota enable` done; a folder readable by all."""
    if os.geteuid() != 0:
        pytest.skip("needs root: losetup and mount")
    assert shutil.which("mkfs.btrfs"), "install btrfs-progs (apt-get install btrfs-progs)"
    base = Path(run("mktemp", "-d", "/tmp/labhub-quota.XXXXXX"))
    base.chmod(0o755)  # the student's uid must reach the homes below it
    image, mount = base / "fs.img", base / "homes"
    mount.mkdir()
    run("truncate", "-s", size, str(image))
    run("mkfs.btrfs", "-q", str(image))
    device = run("losetup", "--find", "--show", str(image))
    try:
        run("mount", device, str(mount))
        try:
            run("btrfs", "quota", "enable", str(mount))
            yield mount
        finally:
            run("umount", "--lazy", str(mount))
    finally:
        run("losetup", "-d", device)
        shutil.rmtree(base)


@contextlib.contextmanager
def stack_with_quotas(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    https_port: int,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[Stack, Path]]:
    """`launched_stack` with QUOTA_ROOT on a btrfs made here and DISK_QUOTA=100M (and
    `extra_env` on top); yields the running stack and the quota root."""
    with btrfs_with_quotas() as root:
        extra = {"QUOTA_ROOT": str(root), "DISK_QUOTA": "100M", **(extra_env or {})}
        with launched_stack(tmp_path_factory, name, https_port, extra) as stack:
            yield stack, root
