"""The Zero to JupyterHub values labhub writes: checked by the chart's own values schema,
by the real KubeSpawner applying our profiles, and by Kubernetes' schemas for the pod."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_asyncio.config import kube_config as kube_config_module
from kubespawner import KubeSpawner
from labhub import cli
from labhub.auth import authenticator_config, discover_endpoints
from labhub.gpu.inventory import Device
from labhub.gpu.profiles import Profile, default_profiles
from labhub.gpu.scheduler import GpuRequest
from labhub.settings import NetworkSettings, Settings, parse_memory
from labhub.z2jh import PROFILES_BY_GROUP, WORKSPACE_COMMAND, quantity, to_yaml, values
from traitlets.config import Config

from testsupport.minimal_env import MINIMAL_ENV, NETWORK_ENV
from testsupport.pushed import PUSHED, REGISTRY, TORCH, WORKSPACE, swarm_registry_env

pytestmark = pytest.mark.unit

CHART_SCHEMA = Path(__file__).resolve().parents[2].parent / "shared/z2jh/values.schema.json"
KUBERNETES = "1.33"
INVENTORY = (
    Device(id="0", model="NVIDIA A100 80GB", memory_mib=81920),
    Device(id="1:0", model="NVIDIA A100 80GB MIG 1g.10gb", memory_mib=10240),
    Device(
        id="2", model="NVIDIA T4", memory_mib=16384, policy="shared", max_holders=4,
        memory_cap_mib=4000,
    ),
)  # fmt: skip
PROFILES = (
    Profile("cpu", "CPU only"),
    Profile("shared", "Shared slice", gpu=GpuRequest(shared=True), groups=frozenset({"cs101"})),
    Profile("gpu-1", "One GPU", gpu=GpuRequest(whole=1), cpu_limit=8, mem_limit=parse_memory("32G"),
            groups=frozenset({"research"})),
)  # fmt: skip
DISCOVERY = {
    "issuer": "https://sso.uni.example/realms/lab",
    "authorization_endpoint": "https://sso.uni.example/auth",
    "token_endpoint": "https://sso.uni.example/token",
    "userinfo_endpoint": "https://sso.uni.example/userinfo",
}
AUTH_ENVS = {
    "native": {},
    "github": {"AUTH": "github", "ADMIN_USERS": "prof-lee", "GITHUB_ALLOWED_ORGS": "uni-lab"},
    "google": {
        "AUTH": "google", "ADMIN_USERS": "lee@uni.example", "GOOGLE_HOSTED_DOMAINS": "uni.example",
    },
    "generic": {
        "AUTH": "generic", "ADMIN_USERS": "", "OIDC_ISSUER": DISCOVERY["issuer"],
        "ALLOWED_GROUPS": "students", "ADMIN_GROUPS": "staff",
    },
    "cilogon": {
        "AUTH": "cilogon", "ADMIN_USERS": "lee@uni.example",
        "CILOGON_IDP": "https://idp.uni.example/idp/shibboleth",
    },
}  # fmt: skip


def lab_values(auth: str = "native", **extra: str) -> dict[str, Any]:
    env = {**MINIMAL_ENV, **NETWORK_ENV, **AUTH_ENVS[auth], **extra}
    if auth != "native":
        env.update(OAUTH_CLIENT_ID="labhub", OAUTH_CLIENT_SECRET="s" * 32)
    settings = Settings.from_env(env)
    oidc = None
    if settings.oauth is not None and settings.auth == "generic":
        oidc = discover_endpoints(settings.oauth, "", fetch=lambda issuer, ca: DISCOVERY)
    _, traits = authenticator_config(settings, oidc=oidc)
    return values(settings, NetworkSettings.from_env(env), PROFILES, INVENTORY, traits)


def without_required(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [without_required(item) for item in node]
    return node


def chart_schema() -> dict[str, Any]:
    """The chart's schema minus its `required` lists: helm validates our values merged
    with the chart's defaults, which supply every key we leave alone. Every key we do
    write is still checked: its name (no additional properties), type and enum."""
    if not CHART_SCHEMA.is_file():
        pytest.skip(f"the chart's values schema is not beside the checkout ({CHART_SCHEMA})")
    schema: dict[str, Any] = without_required(json.loads(CHART_SCHEMA.read_text()))
    return schema


@pytest.mark.parametrize("auth", sorted(AUTH_ENVS))
def test_the_values_pass_the_charts_schema_for_every_login(auth: str) -> None:
    generated = lab_values(auth)
    jsonschema.validate(generated, chart_schema())
    # What helm reads is YAML: the values survive a round trip unchanged.
    assert yaml.safe_load(to_yaml(generated)) == generated


@pytest.mark.parametrize(
    ("path", "misspelt"),
    [
        ("singleuser.memory.limit", "limmit"),
        ("hub.allowNamedServers", "allowNamedServer"),
        ("hub.namedServerLimitPerUser", "namedServersLimitPerUser"),
        ("singleuser.storage.capacity", "capacitty"),
    ],
)
def test_a_misspelt_key_fails_the_charts_schema(path: str, misspelt: str) -> None:
    """The schema check can fail: each key we write, misspelt, is refused, as helm would."""
    broken = copy.deepcopy(lab_values(QUOTA_ROOT="/srv/labhub-homes"))
    *parents, key = path.split(".")
    node = broken
    for parent in parents:
        node = node[parent]
    node[misspelt] = node.pop(key)
    with pytest.raises(jsonschema.ValidationError, match=misspelt):
        jsonschema.validate(broken, chart_schema())


def test_login_rules_keep_their_meaning_upstream() -> None:
    generic = lab_values("generic")["hub"]["config"]
    assert generic["JupyterHub"]["authenticator_class"].endswith("GenericOAuthenticator")
    oauth = generic["GenericOAuthenticator"]
    assert oauth["allowed_groups"] == ["students"] and oauth["admin_groups"] == ["staff"]
    assert oauth["manage_groups"] is True and oauth["allow_all"] is False
    assert oauth["token_url"] == DISCOVERY["token_endpoint"]
    github = lab_values("github")["hub"]["config"]["GitHubOAuthenticator"]
    assert github["allowed_organizations"] == ["uni-lab"] and github["admin_users"] == ["prof-lee"]
    assert "admins_by_name" not in github  # a labhub-only trait, renamed for upstream
    native = lab_values()["hub"]["config"]["NativeAuthenticator"]
    assert "admin_initial_password" not in native and "signup_code" not in native


def test_limits_network_and_culling_follow_the_settings() -> None:
    generated = lab_values(
        USER_MEM_LIMIT="6G", USER_SHM_SIZE="512M", IDLE_TIMEOUT="900",
        USER_LAN_ACCESS="true", USER_INTERNET="false", USER_EGRESS_ALLOW="10.1.2.3",
    )  # fmt: skip
    single = generated["singleuser"]
    assert single["memory"]["limit"] == 6 * 1024**3
    volumes = {v["name"]: v["emptyDir"] for v in single["storage"]["extraVolumes"]}
    assert volumes["shm"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    rules = single["networkPolicy"]["egressAllowRules"]
    assert rules["privateIPs"] is True and rules["nonPrivateIPs"] is False
    assert single["networkPolicy"]["egress"] == [{"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]}]
    assert generated["cull"] == {"enabled": True, "timeout": 900, "every": 60}


def test_named_servers_tmp_and_home_size_follow_the_settings() -> None:
    generated = lab_values(
        NAMED_SERVERS="3",
        USER_MEM_LIMIT="3G",
        USER_TMP_SIZE="2G",
        QUOTA_ROOT="/srv/labhub-homes",
        DISK_QUOTA="20G",
    )
    jsonschema.validate(generated, chart_schema())
    hub, storage = generated["hub"], generated["singleuser"]["storage"]
    assert (hub["allowNamedServers"], hub["namedServerLimitPerUser"]) == (True, 3)
    # /tmp in memory as on Docker, cut to half the smallest memory limit (USER_MEM_LIMIT 3G
    # here; the profiles' 32G is larger).
    tmp = {v["name"]: v["emptyDir"] for v in storage["extraVolumes"]}["tmp"]
    assert tmp == {"medium": "Memory", "sizeLimit": "1536Mi"}
    assert {"name": "tmp", "mountPath": "/tmp"} in storage["extraVolumeMounts"]
    assert storage["capacity"] == "20Gi"
    # Named servers off; no quota root: the chart's own PVC size.
    plain = lab_values(NAMED_SERVERS="0")
    assert plain["hub"]["allowNamedServers"] is False
    assert "namedServerLimitPerUser" not in plain["hub"]
    assert "capacity" not in plain["singleuser"]["storage"]


def test_a_users_named_servers_share_their_home() -> None:
    generated = lab_values(NAMED_SERVERS="2")

    async def claims() -> set[str]:
        return {spawner_for(generated, [], False, server).pvc_name for server in ("", "gpu")}

    assert asyncio.run(claims()) == {"claim-alice"}


def test_quantity_uses_binary_units() -> None:
    assert quantity(4 * 1024**3) == "4Gi"
    assert quantity(1536 * 1024**2) == "1536Mi"
    assert quantity(1000) == "1000"


@pytest.fixture(autouse=True)
def kube_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner loads a client configuration when it is made; it never connects here
    (no pod is created), so the cluster address is a closed loopback port."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "unused"}}],
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(kube_config_module, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def spawner_for(
    generated: dict[str, Any], groups: list[str], admin: bool, server: str = ""
) -> KubeSpawner:
    """A real KubeSpawner configured the way the chart's hub runs hub.extraConfig.

    Call it inside a running event loop: KubeSpawner makes its API client there."""

    def get_config(key: str, default: Any = None) -> Any:
        node: Any = generated
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    config = Config()
    # What the chart's jupyterhub_config.py makes of the singleuser keys we write...
    single = generated["singleuser"]
    config.KubeSpawner.image = f"{single['image']['name']}:{single['image']['tag']}"
    config.KubeSpawner.cmd = single["cmd"]
    config.KubeSpawner.volumes = single["storage"]["extraVolumes"]
    config.KubeSpawner.volume_mounts = single["storage"]["extraVolumeMounts"]
    config.KubeSpawner.pvc_name_template = single["storage"]["dynamic"]["pvcNameTemplate"]
    # ...then hub.config, then hub.extraConfig.
    for section, traits in generated["hub"]["config"].items():
        config[section].update(traits)
    exec(PROFILES_BY_GROUP, {"c": config, "get_config": get_config})
    user = SimpleNamespace(
        name="alice", id=1, url="/user/alice/", admin=admin,
        groups=[SimpleNamespace(name=name) for name in groups],
    )  # fmt: skip
    # A named server's name comes from its database row.
    named = {"orm_spawner": SimpleNamespace(name=server, server=None)} if server else {}
    return KubeSpawner(config=config, user=user, _mock=True, **named)


async def with_profile(
    generated: dict[str, Any], groups: list[str], slug: str, admin: bool = False
) -> KubeSpawner:
    spawner = spawner_for(generated, groups, admin)
    spawner.user_options = {"profile": slug}
    await spawner.load_user_options()
    return spawner


async def offered(generated: dict[str, Any], groups: list[str], admin: bool) -> list[str]:
    spawner = spawner_for(generated, groups, admin)
    return [profile["slug"] for profile in spawner.profile_list(spawner)]


def test_kubespawner_offers_only_the_profiles_open_to_the_users_groups() -> None:
    generated = lab_values()
    assert asyncio.run(offered(generated, ["cs101"], admin=False)) == ["cpu", "shared"]
    assert asyncio.run(offered(generated, [], admin=False)) == ["cpu"]
    everything = [p["slug"] for p in generated["custom"]["labhub"]["profiles"]]
    assert asyncio.run(offered(generated, [], admin=True)) == everything


def test_kubespawner_refuses_a_profile_outside_the_users_groups() -> None:
    with pytest.raises(ValueError, match="gpu-1-gpu"):
        asyncio.run(with_profile(lab_values(), ["cs101"], "gpu-1-gpu"))


def test_gpu_profiles_ask_the_device_plugin_for_the_same_devices() -> None:
    generated = lab_values()
    whole = asyncio.run(with_profile(generated, ["research"], "gpu-1-gpu"))
    assert whole.extra_resource_limits == {"nvidia.com/gpu": "1"}
    assert (whole.cpu_limit, whole.mem_limit) == (8, 32 * 1024**3)
    mig = asyncio.run(with_profile(generated, ["research"], "gpu-1-mig-1g-10gb"))
    assert mig.extra_resource_limits == {"nvidia.com/mig-1g.10gb": "1"}
    shared = asyncio.run(with_profile(generated, ["cs101"], "shared"))
    assert shared.extra_resource_limits == {"nvidia.com/gpu.shared": "1"}
    assert shared.environment["GPU_MEMORY_LIMIT_MB"] == "4000"


async def pod_manifest(generated: dict[str, Any], slug: str) -> dict[str, Any]:
    """The pod KubeSpawner would create from the values (the home's PVC aside)."""
    spawner = await with_profile(generated, [], slug, admin=True)
    pod = await spawner.get_pod_manifest()
    manifest: dict[str, Any] = spawner.api.api_client.sanitize_for_serialization(pod)
    return manifest


@pytest.mark.parametrize("slug", ["cpu", "shared", "gpu-1-gpu", "gpu-1-mig-1g-10gb"])
def test_the_pod_kubespawner_makes_passes_kubernetes_schemas(slug: str) -> None:
    manifest = asyncio.run(pod_manifest(lab_values(), slug))
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    container = manifest["spec"]["containers"][0]
    assert set(container["resources"]["limits"]) >= {"cpu", "memory"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # As on Docker: a read-only root, no capabilities, /tmp the one writable place besides
    # the home and /dev/shm, and jupyter-server's kernel culling.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "--MappingKernelManager.cull_idle_timeout=1800" in container["args"]
    assert "--MappingKernelManager.cull_busy=False" in container["args"]


def test_a_broken_pod_fails_kubernetes_schemas() -> None:
    """The Kubernetes check can fail: a misspelt field and a wrong type are refused."""
    manifest = asyncio.run(pod_manifest(lab_values(), "cpu"))
    manifest["spec"]["containers"][0]["resources"]["limitz"] = {"memory": "1Gi"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    manifest = asyncio.run(pod_manifest(lab_values(), "cpu"))
    manifest["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    manifest = asyncio.run(pod_manifest(lab_values(), "cpu"))
    security = manifest["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_pods_command_is_the_workspace_images() -> None:
    """KubeSpawner passes options (kernel culling) only with a command set; the image's own
    command is the one that puts the workspace into the home."""
    dockerfile = Path(__file__).resolve().parents[2] / "images/workspace/Dockerfile"
    [cmd] = [line for line in dockerfile.read_text().splitlines() if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == WORKSPACE_COMMAND


def test_kernel_culling_off_leaves_the_servers_args_alone() -> None:
    assert lab_values(KERNEL_IDLE_TIMEOUT="0")["hub"]["config"]["KubeSpawner"]["args"] == []


def test_a_profiles_image_from_workspace_images_is_its_pods_image() -> None:
    env = {**MINIMAL_ENV, **NETWORK_ENV, "WORKSPACE_IMAGES": "labhub/workspace-torch:0.1.0"}
    settings = Settings.from_env(env)
    torch = Profile("torch", "PyTorch", image="labhub/workspace-torch:0.1.0")
    generated = values(settings, NetworkSettings.from_env(env), (*PROFILES, torch), INVENTORY, {})
    jsonschema.validate(generated, chart_schema())
    manifest = asyncio.run(pod_manifest(generated, "torch"))
    assert manifest["spec"]["containers"][0]["image"] == "labhub/workspace-torch:0.1.0"
    assert asyncio.run(pod_manifest(generated, "cpu"))["spec"]["containers"][0]["image"] == (
        settings.workspace_image
    )


def test_a_swarm_labs_registry_images_and_pull_login_carry_over() -> None:
    """A Swarm lab with REGISTRY (and a pull login) moving to Kubernetes: every pod runs the
    digest `make push` recorded, pulled with the same login, which the chart turns into a
    pull secret of every pod; before, its settings did not even pass without the record."""
    login = {"REGISTRY_USERNAME": "robot$lab", "REGISTRY_PASSWORD": "t0k3n"}
    env = swarm_registry_env(**NETWORK_ENV, **login)
    settings = Settings.from_env(env)
    profile = Profile("torch", "PyTorch", image=TORCH)
    generated = values(settings, NetworkSettings.from_env(env), (*PROFILES, profile), INVENTORY, {})
    jsonschema.validate(generated, chart_schema())
    assert generated["imagePullSecret"] == {
        "create": True, "registry": REGISTRY.partition("/")[0],
        "username": "robot$lab", "password": "t0k3n",
    }  # fmt: skip
    for slug, image in (("cpu", WORKSPACE), ("torch", TORCH)):
        manifest = asyncio.run(pod_manifest(generated, slug))
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
        name, _, digest = PUSHED[image].partition("@")
        # The pinned digest, under the tag it was pushed as (the chart joins name:tag).
        expected = f"{name}:0.1.0@{digest}" if image == WORKSPACE else PUSHED[image]
        assert manifest["spec"]["containers"][0]["image"] == expected
    # Without a login, no pull secret.
    anonymous = {k: v for k, v in env.items() if not k.startswith("REGISTRY_")}
    plain = values(Settings.from_env(anonymous), NetworkSettings.from_env(anonymous), PROFILES,
                   INVENTORY, {})  # fmt: skip
    assert "imagePullSecret" not in plain


def test_default_profiles_map_too() -> None:
    env = {**MINIMAL_ENV, **NETWORK_ENV}
    settings = Settings.from_env(env)
    generated = values(
        settings, NetworkSettings.from_env(env), default_profiles(INVENTORY), INVENTORY, {}
    )
    jsonschema.validate(generated, chart_schema())
    assert [p["slug"] for p in generated["custom"]["labhub"]["profiles"]] == [
        "cpu", "gpu-shared", "gpu-1-gpu", "gpu-1-mig-1g-10gb",
    ]  # fmt: skip


def test_cli_prints_values_that_pass_the_schema(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**MINIMAL_ENV, **NETWORK_ENV}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["z2jh-values"]) == 0
    jsonschema.validate(yaml.safe_load(capsys.readouterr().out), chart_schema())


def test_cli_names_a_broken_profiles_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "profiles.json"
    broken.write_text("{not json")
    for name, value in {**MINIMAL_ENV, **NETWORK_ENV, "GPU_PROFILES": str(broken)}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["z2jh-values"]) == 2
    assert str(broken) in capsys.readouterr().err


def test_the_hub_and_the_workspace_name_the_gpu_memory_cap_alike() -> None:
    """Two packages, two processes: the variable the spawner sets is the one TensorFlow's
    set-up in the workspace reads."""
    from labhub.contract import GPU_MEMORY_LIMIT_ENV
    from mnist_workspace.env import GPU_LIMIT_VAR

    assert GPU_MEMORY_LIMIT_ENV == GPU_LIMIT_VAR
