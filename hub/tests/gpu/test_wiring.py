"""The GPU mixin is wired into the lab's spawner, with every GPU_* setting as its trait."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import docker
import pytest
from dockerspawner import DockerSpawner
from jupyterhub.objects import Hub, Server
from labhub.gpu.spawner import GpuSpawnerMixin, load_context
from labhub.settings import Settings
from labhub.spawner import LabSpawner, spawner_config
from traitlets.config import Config

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

ENV = {
    **MINIMAL_ENV,
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
    url = "/user/ada/"
    admin = False
    groups: tuple[object, ...] = ()


def test_a_server_gone_behind_the_hubs_back_frees_its_gpu(tmp_path: object) -> None:
    """JupyterHub skips stop() for a dead container, but always runs the post-stop hook."""
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


class _RecordingDocker(docker.APIClient):
    """The Docker API at its edge: no containers yet, the workspace image, and every
    container create recorded instead of sent (host configs are built by docker-py)."""

    def __init__(self) -> None:
        super().__init__(base_url="unix:///nonexistent/docker.sock", version="1.41")
        self.created: list[dict[str, Any]] = []

    def containers(self, **_: object) -> list[dict[str, Any]]:
        return []

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {"Config": {"Entrypoint": ["tini", "-g", "--"], "Cmd": ["start-workspace.sh"]}}

    def create_container(self, **kwargs: Any) -> dict[str, str]:
        self.created.append(kwargs)
        return {"Id": "0123456789ab"}


def host_config_sent(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, Any]:
    """What the hub's LabSpawner, configured from `env` as jupyterhub_config.py does it, asks
    Docker for when a user starts a server without choosing a profile."""
    client = _RecordingDocker()
    monkeypatch.setattr(LabSpawner, "_client", client)
    monkeypatch.setattr(GpuSpawnerMixin, "_gpu_reconciled", False)
    config = Config()
    config.LabSpawner.update(spawner_config(Settings.from_env({**LAB_ENV, **env})))
    spawner = LabSpawner(config=config, user=_User(), hub=Hub(), server=Server(base_url="/u/"))

    async def spawn_request() -> None:
        await spawner.gpu_assign()
        await spawner.create_object()

    asyncio.run(spawn_request())
    [created] = client.created
    return dict(created["host_config"])


LAB_ENV = {
    **MINIMAL_ENV,
    "USER_CPU_LIMIT": "1.5",
    "USER_MEM_LIMIT": "3G",
}


def test_the_default_cpu_profile_keeps_the_lab_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No profiles file: the container gets USER_CPU_LIMIT and USER_MEM_LIMIT."""
    sent = host_config_sent(monkeypatch, {"GPU_DB": f"{tmp_path}/gpu.sqlite"})
    assert (sent["CpuQuota"], sent["CpuPeriod"]) == (150_000, 100_000)  # 1.5 CPUs
    assert sent["Memory"] == 3 * 1024**3
    assert not sent.get("DeviceRequests")  # and no GPU


def test_a_profile_with_its_own_limits_replaces_the_lab_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The contrast: the same request with a profile that sets limits gets those."""
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        '{"profiles": [{"slug": "small", "display_name": "Small", "cpu_limit": 0.5,'
        ' "mem_limit": "1G"}]}'
    )
    env = {"GPU_DB": f"{tmp_path}/gpu.sqlite", "GPU_PROFILES": str(profiles)}
    sent = host_config_sent(monkeypatch, env)
    assert (sent["CpuQuota"], sent["Memory"]) == (50_000, 1024**3)
