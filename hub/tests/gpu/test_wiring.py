"""The GPU mixin is wired into the lab's spawner, with every GPU_* setting as its trait."""

from __future__ import annotations

import pytest
from dockerspawner import DockerSpawner
from labhub.gpu.spawner import GpuSpawnerMixin, load_context
from labhub.settings import Settings
from labhub.spawner import LabSpawner, spawner_config

pytestmark = pytest.mark.unit

ENV = {
    "CONFIGPROXY_AUTH_TOKEN": "a" * 64,
    "ADMIN_USERS": "teacher",
    "ADMIN_INITIAL_PASSWORD": "i" * 24,
    "GPU_INVENTORY": "/srv/labhub/gpus.json",
    "GPU_PROFILES": "/srv/labhub/profiles.json",
    "GPU_QUEUE": "true",
    "GPU_QUEUE_TIMEOUT": "300",
    "GPU_QUOTA_USER_HOURS": "10",
    "GPU_QUOTA_GROUP_HOURS": '{"students": 50}',
}


def test_mixin_comes_before_dockerspawner() -> None:
    mro = LabSpawner.__mro__
    assert mro.index(GpuSpawnerMixin) < mro.index(DockerSpawner)


def test_spawner_config_carries_every_gpu_setting() -> None:
    config = spawner_config(Settings.from_env(ENV))
    assert config["remove"] is True
    assert config["gpu_inventory"] == "/srv/labhub/gpus.json"
    assert config["gpu_profiles"] == "/srv/labhub/profiles.json"
    assert config["gpu_db"] == "/srv/jupyterhub/gpu.sqlite"
    assert config["gpu_queue"] is True
    assert config["gpu_queue_timeout"] == 300
    assert config["gpu_quota_user_hours"] == 10.0
    assert config["gpu_quota_group_hours"] == {"students": 50.0}
    # A queued spawn waits inside start(): the start timeout leaves room for it.
    assert config["start_timeout"] == 180 + 300
    # Every key is a trait LabSpawner really has (a typo would be ignored by traitlets).
    assert set(config) <= set(LabSpawner.class_trait_names())


def test_no_inventory_means_cpu_profile_only(tmp_path: object) -> None:
    ctx = load_context("none", "", f"{tmp_path}/gpu.sqlite")
    assert ctx.inventory == ()
    assert [p.slug for p in ctx.profiles] == ["cpu"]


class _Base:
    """What the mixin uses of DockerSpawner, recorded."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.calls: list[str] = []

    async def remove_object(self) -> None:
        self.calls.append("remove")

    def run_post_stop_hook(self) -> None:
        self.calls.append("post_stop_hook")


class _User:
    name = "ada"
    admin = False
    groups: tuple[object, ...] = ()


def test_a_server_gone_behind_the_hubs_back_frees_its_gpu(tmp_path: object) -> None:
    """JupyterHub skips stop() for a dead container, but always runs the post-stop hook."""
    import asyncio

    from labhub.gpu.inventory import Device
    from labhub.gpu.scheduler import GpuRequest, Holder
    from labhub.gpu.store import Store

    from .conftest import NOW

    class Spawner(GpuSpawnerMixin, _Base):  # type: ignore[misc]
        pass

    db = f"{tmp_path}/gpu.sqlite"
    inventory = tmp_path / "gpus.json"  # type: ignore[operator]
    inventory.write_text('{"devices": [{"id": "0", "model": "Test", "memory_mib": 1024}]}')
    spawner = Spawner(gpu_inventory=str(inventory), gpu_db=db)
    spawner.user, spawner.name, spawner.remove, spawner.object_id = _User(), "", True, "abc"
    store = Store(db)
    devices = (Device(id="0", model="Test", memory_mib=1024),)
    store.allocate(
        devices,
        Holder("ada"),
        GpuRequest(whole=1),
        NOW,
    )
    assert store.allocations()[0].device_ids == ("0",)

    asyncio.run(spawner.run_post_stop_hook())

    assert spawner.calls == ["remove", "post_stop_hook"]
    assert store.allocations() == []
    assert store.audit()[0].detail["reason"] == "server gone"


def test_the_default_cpu_profile_keeps_the_lab_limits() -> None:
    """USER_CPU_LIMIT / USER_MEM_LIMIT still apply when no profiles file is given."""
    from labhub.gpu.profiles import default_profiles

    [cpu] = default_profiles(())
    assert (cpu.slug, cpu.cpu_limit, cpu.mem_limit) == ("cpu", None, None)
