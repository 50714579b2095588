"""The GPU mixin is wired into the lab's spawner through one GpuAllocator built from Settings."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest
from dockerspawner import DockerSpawner
from jupyterhub.objects import Hub, Server
from labhub.contract import GPU_STATUS_URL_ENV, chp_host_names
from labhub.egress import proxy_environment
from labhub.gpu.allocator import load_allocator
from labhub.gpu.inventory import Device
from labhub.gpu.scheduler import GpuRequest, Holder
from labhub.gpu.spawner import GpuSpawnerMixin
from labhub.settings import Settings, SettingsError
from labhub.spawner import LabSpawner, server_config, spawner_config
from traitlets.config import Config

from testsupport.minimal_env import MINIMAL_ENV

from .conftest import NOW

pytestmark = pytest.mark.unit

HUB_DIR = Path(__file__).resolve().parents[2]
ONE_GPU = '{"devices": [{"id": "0", "model": "Test", "memory_mib": 1024}]}'
PROFILES = {
    "profiles": [
        {"slug": "small", "display_name": "Small", "cpu_limit": 0.5, "mem_limit": "1G"},
        {"slug": "gpu", "display_name": "GPU", "gpu": 1, "groups": ["students"]},
    ]
}


def gpu_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A valid environment with a declared inventory and profiles file in ``tmp_path``."""
    (tmp_path / "gpus.json").write_text(ONE_GPU)
    (tmp_path / "profiles.json").write_text(json.dumps(PROFILES))
    return {
        **MINIMAL_ENV,
        "GPU_INVENTORY": str(tmp_path / "gpus.json"),
        "GPU_PROFILES": str(tmp_path / "profiles.json"),
        "GPU_DB": str(tmp_path / "gpu.sqlite"),
        "GPU_QUEUE": "true",
        "GPU_QUEUE_TIMEOUT": "300",
        "GPU_QUOTA_USER_HOURS": "10",
        "GPU_QUOTA_GROUP_HOURS": '{"students": 50}',
        **overrides,
    }


def test_mixin_comes_before_dockerspawner() -> None:
    mro = LabSpawner.__mro__
    assert mro.index(GpuSpawnerMixin) < mro.index(DockerSpawner)


def test_the_allocator_carries_every_gpu_setting(tmp_path: Path) -> None:
    settings = Settings.from_env(gpu_env(tmp_path))
    allocator = load_allocator(settings)
    assert allocator.inventory == (Device(id="0", model="Test", memory_mib=1024),)
    assert [p.slug for p in allocator.profiles] == ["small", "gpu"]
    assert allocator.store.path == tmp_path / "gpu.sqlite"
    assert (allocator.queue, allocator.queue_timeout) == (True, 300)
    assert allocator.quota.user_hours == 10.0
    assert allocator.quota.group_hours == {"students": 50.0}
    config = spawner_config(settings, allocator)
    assert config["remove"] is True
    assert config["gpu_allocator"] is allocator
    # A queued spawn waits inside start(): the start timeout leaves room for it.
    assert config["start_timeout"] == 180 + 300
    # Every key is a trait LabSpawner really has (a typo would be ignored by traitlets).
    assert set(config) <= set(LabSpawner.class_trait_names())
    # JupyterLab finds the GPU service's api/me, and its server's token may read it.
    assert config["environment"][GPU_STATUS_URL_ENV] == "http://proxy-chp:8000/services/gpus/api/me"
    # With subdomains, the service's own host (proxy-chp's alias), where the proxy routes it.
    subdomains = Settings.from_env(gpu_env(tmp_path, SUBDOMAINS="true", DOMAIN="lab.uni.edu"))
    assert spawner_config(subdomains, allocator)["environment"][GPU_STATUS_URL_ENV] == (
        "http://gpus--service.lab.uni.edu:8000/services/gpus/api/me"
    )
    assert "access:services!service=gpus" in config["server_token_scopes"]
    assert {"users:activity!user", "access:servers!server"} <= set(config["server_token_scopes"])


def test_every_spawner_of_the_hub_shares_the_one_allocator(tmp_path: Path) -> None:
    """traitlets deep-copies config values; a copy per spawner would reconcile once per
    spawner, releasing the records of spawns whose containers do not exist yet."""
    settings = Settings.from_env(gpu_env(tmp_path))
    allocator = load_allocator(settings)
    config = Config()
    config.LabSpawner.update(spawner_config(settings, allocator))
    spawners = [LabSpawner(config=config, user=_User(), hub=Hub()) for _ in range(2)]
    assert all(spawner.gpu_allocator is allocator for spawner in spawners)


def test_no_inventory_means_cpu_profile_only(tmp_path: Path) -> None:
    settings = Settings.from_env({**MINIMAL_ENV, "GPU_DB": f"{tmp_path}/gpu.sqlite"})
    allocator = load_allocator(settings)
    assert allocator.inventory == ()
    assert [p.slug for p in allocator.profiles] == ["cpu"]
    # No GPU service: JupyterLab is told nothing and says "CPU only".
    config = spawner_config(settings, allocator)
    assert GPU_STATUS_URL_ENV not in config["environment"]
    assert "server_token_scopes" not in config


def test_quotas_without_gpus_still_run_the_service_for_the_home_usage(tmp_path: Path) -> None:
    """QUOTA_ROOT, no GPUs: the gpus service runs (api/me carries the home's usage), and
    JupyterLab is told where it is, with a token that may read it."""
    env = {**MINIMAL_ENV, "GPU_DB": f"{tmp_path}/gpu.sqlite", "QUOTA_ROOT": "/srv/homes"}
    settings = Settings.from_env(env)
    config = spawner_config(settings, load_allocator(settings))
    assert config["environment"][GPU_STATUS_URL_ENV].endswith("/services/gpus/api/me")
    assert "access:services!service=gpus" in config["server_token_scopes"]
    loader = (
        "from traitlets.config import Config\n"
        "c = Config()\n"
        f"exec(compile(open({str(HUB_DIR / 'jupyterhub_config.py')!r}).read(), 'cfg', 'exec'))\n"
        "print([s['name'] for s in c.JupyterHub.services])"
    )
    for quota_root, runs in (("/srv/homes", True), ("", False)):
        done = subprocess.run(
            [sys.executable, "-c", loader],
            env={**os.environ, **env, "QUOTA_ROOT": quota_root, "HUB_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert ("'gpus'" in done.stdout) is runs, (quota_root, done.stdout)


@pytest.mark.parametrize(
    ("broken", "content", "expected"),
    [
        ("profiles.json", "{not json", "not valid JSON"),
        ("profiles.json", '{"profiles": [{"slug": "x"}]}', "display_name"),
        ("gpus.json", '{"devices": [{"id": "0", "model": "T"}]}', "memory_mib"),
    ],
    ids=["profiles-syntax", "profiles-schema", "inventory-schema"],
)
def test_a_broken_gpu_file_names_its_variable_file_and_problem(
    tmp_path: Path, broken: str, content: str, expected: str
) -> None:
    env = gpu_env(tmp_path)
    (tmp_path / broken).write_text(content)
    variable = "GPU_PROFILES" if broken == "profiles.json" else "GPU_INVENTORY"
    with pytest.raises(SettingsError) as error:
        load_allocator(Settings.from_env(env))
    [problem] = error.value.problems
    assert problem.startswith(f"{variable}={tmp_path / broken}: ")
    assert expected in problem


def test_a_missing_profiles_file_stops_the_hub_at_start_up(tmp_path: Path) -> None:
    """jupyterhub_config.py as the hub loads it: exit 2 and the message, before any spawn."""
    env = gpu_env(tmp_path, GPU_PROFILES=str(tmp_path / "nowhere.json"))
    loader = (
        "from traitlets.config import Config\n"
        "c = Config()\n"
        f"exec(compile(open({str(HUB_DIR / 'jupyterhub_config.py')!r}).read(), 'cfg', 'exec'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", loader],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"GPU_PROFILES={tmp_path / 'nowhere.json'}: " in done.stderr
    assert "no such file" in done.stderr
    assert "Traceback" not in done.stderr


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


def test_a_server_gone_behind_the_hubs_back_frees_its_gpu(tmp_path: Path) -> None:
    """JupyterHub skips stop() for a dead container, but always runs the post-stop hook."""

    class Spawner(GpuSpawnerMixin, _Base):  # type: ignore[misc]
        pass

    allocator = load_allocator(Settings.from_env(gpu_env(tmp_path)))
    spawner = Spawner(gpu_allocator=allocator)
    spawner.user, spawner.name, spawner.remove, spawner.object_id = _User(), "", True, "abc"
    allocator.store.allocate(allocator.inventory, Holder("ada"), GpuRequest(whole=1), NOW)
    assert allocator.store.allocations()[0].device_ids == ("0",)

    asyncio.run(spawner.run_post_stop_hook())

    assert spawner.calls == ["remove", "post_stop_hook"]
    assert allocator.store.allocations() == []
    assert allocator.store.audit()[0].detail["reason"] == "server gone"


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


class _Group:
    name = "students"


class _Student(_User):
    groups = (_Group(),)


LAB_ENV = {
    **MINIMAL_ENV,
    "USER_CPU_LIMIT": "1.5",
    "USER_MEM_LIMIT": "3G",
}


def lab_spawner(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], user: object = None
) -> tuple[LabSpawner, _RecordingDocker]:
    """The hub's LabSpawner, configured from `env` as jupyterhub_config.py does it."""
    client = _RecordingDocker()
    monkeypatch.setattr(LabSpawner, "_client", client)
    settings = Settings.from_env({**LAB_ENV, **env})
    config = Config()
    config.LabSpawner.update(spawner_config(settings, load_allocator(settings)))
    spawner = LabSpawner(
        config=config, user=user or _User(), hub=Hub(), server=Server(base_url="/u/")
    )
    return spawner, client


def spawn(spawner: LabSpawner, client: _RecordingDocker, profile: str | None) -> dict[str, Any]:
    """The container create request of one spawn with ``profile`` (None: no choice)."""
    spawner.user_options = {"profile": profile} if profile else {}

    async def spawn_request() -> None:
        await spawner.gpu_assign()
        await spawner.create_object()

    asyncio.run(spawn_request())
    return client.created[-1]


def test_the_default_cpu_profile_keeps_the_lab_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No profiles file: the container gets USER_CPU_LIMIT and USER_MEM_LIMIT."""
    spawner, client = lab_spawner(monkeypatch, {"GPU_DB": f"{tmp_path}/gpu.sqlite"})
    sent = spawn(spawner, client, None)["host_config"]
    assert (sent["CpuQuota"], sent["CpuPeriod"]) == (150_000, 100_000)  # 1.5 CPUs
    assert sent["Memory"] == 3 * 1024**3
    assert not sent.get("DeviceRequests")  # and no GPU


def test_a_profile_with_its_own_limits_replaces_the_lab_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The contrast: the same request with a profile that sets limits gets those."""
    spawner, client = lab_spawner(monkeypatch, gpu_env(tmp_path))
    created = spawn(spawner, client, "small")
    sent = created["host_config"]
    assert (sent["CpuQuota"], sent["Memory"]) == (50_000, 1024**3)
    # what jupyter-resource-usage shows the user is the profile's limit, not the lab's
    assert (created["environment"]["CPU_LIMIT"], created["environment"]["MEM_LIMIT"]) == (
        "0.5",
        str(1024**3),
    )


def test_a_respawn_with_another_profile_keeps_nothing_of_the_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One spawner object, a GPU spawn then a CPU one: devices, labels, visible devices and
    limits all follow the current allocation, and no trait of the spawner is rewritten."""
    spawner, client = lab_spawner(monkeypatch, gpu_env(tmp_path), _Student())
    configured = (spawner.cpu_limit, spawner.mem_limit, dict(spawner.environment))

    gpu = spawn(spawner, client, "gpu")
    [request] = gpu["host_config"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["0"]
    assert gpu["labels"]["labhub.gpu.holder"] == "ada"
    assert gpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0"
    assert gpu["host_config"]["Memory"] == 3 * 1024**3  # the gpu profile sets no limits

    asyncio.run(spawner.gpu_release("stopped"))
    cpu = spawn(spawner, client, "small")
    assert cpu["host_config"]["DeviceRequests"] == []
    assert not any(label.startswith("labhub.gpu.") for label in cpu["labels"])
    assert cpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert cpu["host_config"]["Memory"] == 1024**3
    assert (spawner.cpu_limit, spawner.mem_limit, dict(spawner.environment)) == configured


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_wrong_gpu_cull_every_names_its_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=f"GPU_CULL_EVERY='{value}' is not valid"):
        Settings.from_env({**MINIMAL_ENV, "GPU_CULL_EVERY": value})
    assert Settings.from_env({**MINIMAL_ENV, "GPU_CULL_EVERY": "15"}).gpu_cull_every == 15


TORCH = "labhub/workspace-torch:0.1.0"


def environments_env(tmp_path: Path, image: str = TORCH) -> dict[str, str]:
    """The lab's two environments: the workspace image (cpu) and a profile naming `image`."""
    profiles = {
        "profiles": [
            {"slug": "cpu", "display_name": "TensorFlow"},
            {"slug": "torch", "display_name": "PyTorch", "image": image},
        ]
    }
    (tmp_path / "profiles.json").write_text(json.dumps(profiles))
    return {
        "GPU_PROFILES": str(tmp_path / "profiles.json"),
        "GPU_DB": f"{tmp_path}/gpu.sqlite",
        "WORKSPACE_IMAGES": TORCH,
    }


def test_each_profile_spawns_its_own_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spawner, client = lab_spawner(monkeypatch, environments_env(tmp_path))
    assert spawn(spawner, client, "torch")["image"] == TORCH
    asyncio.run(spawner.gpu_release("stopped"))
    assert spawn(spawner, client, "cpu")["image"] == "labhub/workspace:0.1.0"


def test_a_request_naming_an_image_itself_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only a profile picks the image (and profiles are per group): DockerSpawner's own
    user_options "image" gets a 400, even for an image on the allow-list."""
    from tornado import web

    spawner, client = lab_spawner(monkeypatch, environments_env(tmp_path))
    spawner.user_options = {"profile": "cpu", "image": TORCH}
    with pytest.raises(web.HTTPError) as error:
        asyncio.run(spawner.start())
    assert error.value.status_code == 400
    assert client.created == []
    assert spawner.gpu_allocator is not None and spawner.gpu_allocator.store.allocations() == []


def test_a_profile_naming_an_image_off_the_list_stops_the_hub(tmp_path: Path) -> None:
    env = {**LAB_ENV, **environments_env(tmp_path, image="labhub/hub:0.1.0")}
    with pytest.raises(SettingsError) as error:
        load_allocator(Settings.from_env(env))
    [problem] = error.value.problems
    assert problem.startswith(
        f"GPU_PROFILES={tmp_path / 'profiles.json'}: profile 'torch' names the image "
        "'labhub/hub:0.1.0', which is not on the allow-list"
    )
    assert "add it to WORKSPACE_IMAGES" in problem


def test_in_swarm_mode_jupyterlab_asks_the_proxy_by_its_container_name() -> None:
    """A user's own overlay network has configurable-http-proxy by its container name only
    (compose's alias proxy-chp is on the lab's network): the name the egress proxy's
    no_proxy also holds, so the request goes straight there."""
    env = {**MINIMAL_ENV, "ENGINE": "swarm", "QUOTA_ROOT": "/srv/homes",
           "CHP_CONTAINER": "lab-proxy-chp", "HUB_CONTAINER": "lab-hub",
           "EGRESS_CONTAINER": "lab-egress"}  # fmt: skip
    settings = Settings.from_env(env)
    url = server_config(settings)["environment"][GPU_STATUS_URL_ENV]
    assert url == "http://lab-proxy-chp:8000/services/gpus/api/me"
    # As jupyterhub_config.py gives the spawner its frontends (the hub's, CHP's).
    direct = proxy_environment("lab-egress", ["lab-hub", "lab-proxy-chp"])["no_proxy"]
    assert urlsplit(url).hostname in direct.split(",")


def test_with_subdomains_on_a_swarm_jupyterlab_asks_the_gpu_services_own_host() -> None:
    """CHP routes by host name there: its container name would reach the hub, which
    answers 302. The spawner puts this name in the server's /etc/hosts (test_swarm_rules)."""
    env = {**MINIMAL_ENV, "ENGINE": "swarm", "QUOTA_ROOT": "/srv/homes",
           "CHP_CONTAINER": "lab-proxy-chp", "DOMAIN": "lab.example.edu",
           "SUBDOMAINS": "true"}  # fmt: skip
    url = server_config(Settings.from_env(env))["environment"][GPU_STATUS_URL_ENV]
    assert url == "http://gpus--service.lab.example.edu:8000/services/gpus/api/me"
    assert urlsplit(url).hostname in chp_host_names("lab.example.edu", True)
