"""ENGINE=swarm with GPUs, as `make up` starts the hub: the settings accept an inventory whose
devices name their nodes, jupyterhub_config.py picks LabSwarmGpuSpawner with the process's
allocator, and the GPU record stays readable by the Docker proxy's read-only mount."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from labhub.gpu.allocator import load_allocator
from labhub.gpu.scheduler import GpuRequest, Holder
from labhub.gpu.store import booked_devices
from labhub.settings import Settings, SettingsError

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

HUB_DIR = Path(__file__).resolve().parents[1]
INVENTORY = {"devices": [{"id": "0", "model": "Test", "memory_mib": 1024, "node": "gpu-a"}]}


def swarm_gpu_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """ENGINE=swarm, a declared inventory naming node gpu-a, the record in HUB_DATA_DIR."""
    (tmp_path / "gpus.json").write_text(json.dumps(INVENTORY))
    return {
        **MINIMAL_ENV,
        "ENGINE": "swarm",
        "NAMED_SERVERS": "0",
        "GPU_INVENTORY": str(tmp_path / "gpus.json"),
        "HUB_DATA_DIR": str(tmp_path),
        "GPU_DB": str(tmp_path / "gpu.sqlite"),
        "HUB_CONTAINER": "lab-hub",
        "CHP_CONTAINER": "lab-proxy-chp",
        **overrides,
    }


def test_swarm_mode_takes_an_inventory_whose_devices_name_their_nodes(tmp_path: Path) -> None:
    settings = Settings.from_env(swarm_gpu_env(tmp_path))
    assert [d.key for d in load_allocator(settings).inventory] == ["0@gpu-a"]


def test_a_gpu_record_outside_the_hub_data_volume_is_refused_in_swarm_mode(
    tmp_path: Path,
) -> None:
    """The Docker proxy reads the record through a mount of the hub's data volume only."""
    env = swarm_gpu_env(tmp_path, GPU_DB="/var/lib/gpu.sqlite")
    with pytest.raises(SettingsError, match=r"GPU_DB=/var/lib/gpu.sqlite: with ENGINE=swarm"):
        Settings.from_env(env)
    # Without GPUs the record is not read by the proxy: any place will do.
    Settings.from_env({**env, "GPU_INVENTORY": "none"})


def configured_spawner(env: dict[str, str]) -> str:
    """The spawner class jupyterhub_config.py configures for `env`."""
    loader = (
        "from traitlets.config import Config\n"
        "c = Config()\n"
        f"exec(compile(open({str(HUB_DIR / 'jupyterhub_config.py')!r}).read(), 'cfg', 'exec'))\n"
        "print(c.JupyterHub.spawner_class)\n"
        "print(c.LabSwarmSpawner.frontend_containers)\n"
        "print(bool(c.LabSwarmGpuSpawner.gpu_allocator))"
    )
    done = subprocess.run(
        [sys.executable, "-c", loader],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_hub_spawns_with_the_gpu_swarm_spawner_when_there_are_gpus(tmp_path: Path) -> None:
    spawner, frontends, allocator = configured_spawner(swarm_gpu_env(tmp_path)).split("\n")[:3]
    assert spawner == "labhub.swarmgpu.LabSwarmGpuSpawner"
    # LabSwarmSpawner's settings reach its GPU subclass (traitlets config by class).
    assert frontends == "['lab-hub', 'lab-proxy-chp']" and allocator == "True"
    without = configured_spawner(swarm_gpu_env(tmp_path, GPU_INVENTORY="none"))
    assert without.split("\n")[0] == "labhub.swarmspawner.LabSwarmSpawner"


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="a read-only bind mount needs root"
)
def test_the_record_is_readable_through_a_read_only_mount_while_the_hub_holds_it(
    tmp_path: Path,
) -> None:
    """SQLite opens a WAL database on a read-only mount only while its -wal and -shm files
    exist, i.e. while someone holds it open: in Swarm mode the hub's allocator does."""
    record, mount = tmp_path / "data", tmp_path / "ro"
    record.mkdir()
    mount.mkdir()
    allocator = load_allocator(Settings.from_env(swarm_gpu_env(record)))
    probe = (
        f"mount --bind {record} {mount} && mount -o remount,ro,bind {mount} && "
        f"{sys.executable} -c 'import sys; from labhub.gpu.store import booked_devices; "
        f'print(booked_devices(sys.argv[1], "ann"))\' {mount}/gpu.sqlite'
    )

    def proxy_reads() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", probe],
            env={**os.environ, "PYTHONPATH": str(HUB_DIR)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    gc.collect()  # no connection left open by chance: only the one the store holds
    # A booking made after the proxy's mount was set up is read (a current booking).
    before = proxy_reads()
    assert before.stdout.strip() == "None", before.stderr
    allocator.store.allocate(
        allocator.inventory, Holder("ann"), GpuRequest(whole=1), allocator.clock()
    )
    assert booked_devices(record / "gpu.sqlite", "ann") == ("0@gpu-a",)
    gc.collect()
    read = proxy_reads()
    assert read.stdout.strip() == "('0@gpu-a',)", read.stderr
