"""The same lab on Kubernetes: a Zero to JupyterHub values file from labhub's settings.

`values()` turns the validated `Settings`, the network settings, the spawn profiles and
the GPU inventory into values for the Zero to JupyterHub Helm chart, so that a lab moving
to its university's cluster keeps its login rules, limits, profiles per group (and their
images), GPU requests, named servers, the read-only root with its sized /tmp, idle server
and kernel culling, the home's size and the users' network rules. What has no equivalent
there is listed in docs/scale-out.md. Pure: the caller loads the files and runs OIDC discovery.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .contract import CONTAINER_USER, GPU_MEMORY_LIMIT_ENV, HOME_DIR, WORKSPACE_DEFAULT_URL
from .gpu.inventory import Device
from .gpu.profiles import Profile
from .registry import registry_host
from .settings import NetworkSettings, Settings
from .spawner import kernel_culling_args, tmp_bytes

# The chart's hub image carries these upstream classes; labhub's subclasses add
# behaviour (docs/scale-out.md says which) that the chart's image does not have.
UPSTREAM_AUTHENTICATORS = {
    "native": "nativeauthenticator.NativeAuthenticator",
    "shared-password": "jupyterhub.authenticators.shared.SharedPasswordAuthenticator",
    "github": "oauthenticator.github.GitHubOAuthenticator",
    "google": "oauthenticator.google.GoogleOAuthenticator",
    "generic": "oauthenticator.generic.GenericOAuthenticator",
    "cilogon": "oauthenticator.cilogon.CILogonOAuthenticator",
}
# labhub-only authenticator traits and what they become upstream (None: dropped).
_LABHUB_TRAITS: Mapping[str, str | None] = {
    "admins_by_name": "admin_users",
    "admin_initial_password": None,
    "signup_code": None,
}
# The NVIDIA device plugin's resources: whole GPUs, MIG instances (strategy "mixed"),
# and time-sliced replicas with `renameByDefault: true` for shared slices.
GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"
_MIG_MODEL = re.compile(r" MIG (?P<profile>\d+g\.\d+gb)$")
# The workspace image's command (its Dockerfile's CMD; a test checks they agree): it puts
# the MNIST workspace into the home before it starts jupyterhub-singleuser. The chart's
# default command, jupyterhub-singleuser itself, would skip that.
WORKSPACE_COMMAND = ["start-workspace.sh"]

# Run by the chart's jupyterhub_config.py (hub.extraConfig, with `c` and `get_config` in
# scope): each user is offered, and KubeSpawner accepts, only the profiles open to their
# JupyterHub groups, as on the spawn page of labhub.
PROFILES_BY_GROUP = '''\
def labhub_profiles(spawner):
    """The profiles open to this user's groups (admins: all), as labhub offers them."""
    groups = {group.name for group in spawner.user.groups}
    rules = get_config("custom.labhub.profileGroups", {})
    return [
        profile
        for profile in get_config("custom.labhub.profiles", [])
        if spawner.user.admin
        or not rules.get(profile["slug"])
        or groups.intersection(rules[profile["slug"]])
    ]


c.KubeSpawner.profile_list = labhub_profiles
'''


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no types
    """Multi-line strings (the extraConfig code) as YAML blocks, readable in review."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(values_: Mapping[str, Any]) -> str:
    """The values as the YAML file helm reads."""
    text: str = yaml.dump(dict(values_), Dumper=_Dumper, sort_keys=False)
    return text


def quantity(size_bytes: int) -> str:
    """Bytes as a Kubernetes quantity in binary units: 4 GiB -> '4Gi' (pod fields only)."""
    for unit, power in (("Gi", 3), ("Mi", 2), ("Ki", 1)):
        if size_bytes % 1024**power == 0:
            return f"{size_bytes // 1024**power}{unit}"
    return str(size_bytes)


def _plain(value: Any) -> Any:
    """Sets become sorted lists, so the values file is YAML and reads the same each time."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def hub_config(settings: Settings, traits: Mapping[str, Any]) -> dict[str, Any]:
    """`hub.config`: the authenticator with the traits labhub gives it, upstream names."""
    upstream = UPSTREAM_AUTHENTICATORS[settings.auth]
    config: dict[str, Any] = {}
    for name, value in traits.items():
        if name == "http_request_kwargs":
            continue  # a path inside labhub's hub image: on the cluster, the chart's CAs
        if name in _LABHUB_TRAITS:
            target = _LABHUB_TRAITS[name]
            if target is not None and value:
                config[target] = _plain(value)
            continue
        config[name] = _plain(value)
    return {
        "JupyterHub": {"authenticator_class": upstream},
        upstream.rsplit(".", 1)[-1]: config,
    }


def _gpu_resources(profile: Profile, inventory: Sequence[Device]) -> list[dict[str, str]]:
    """The resource limits that ask the device plugin for what the profile asks labhub.

    A profile with whole GPUs on an inventory of MIG instances becomes one variant per
    MIG profile (Kubernetes requests one resource name; labhub picks any free device).
    """
    request = profile.gpu
    if request.shared:
        return [{SHARED_GPU_RESOURCE: "1"}]
    if not request.whole:
        return [{}]
    kinds: list[str] = []
    for device in inventory:
        if device.policy != "exclusive":
            continue
        mig = _MIG_MODEL.search(device.model)
        kind = f"nvidia.com/mig-{mig['profile']}" if mig else GPU_RESOURCE
        if kind not in kinds:
            kinds.append(kind)
    return [{kind: str(request.whole)} for kind in kinds or [GPU_RESOURCE]]


def _shared_cap_mib(inventory: Sequence[Device]) -> int | None:
    caps = [d.memory_cap_mib for d in inventory if d.policy == "shared" and d.memory_cap_mib]
    return min(caps) if caps else None


def profile_list(
    profiles: Sequence[Profile], inventory: Sequence[Device], settings: Settings
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """KubeSpawner profiles and, by slug, the groups each is limited to."""
    out: list[dict[str, Any]] = []
    groups: dict[str, list[str]] = {}
    for profile in profiles:
        variants = _gpu_resources(profile, inventory)
        for limits in variants:
            slug = profile.slug
            name = profile.display_name
            if len(variants) > 1:
                kind = next(iter(limits)).rsplit("/", 1)[-1]
                slug, name = f"{slug}-{kind.replace('.', '-')}", f"{name} ({kind})"
            override: dict[str, Any] = {
                "cpu_limit": profile.cpu_limit or settings.cpu_limit,
                # KubeSpawner reads 4G (powers of 1024) or bytes, never 4Gi: bytes.
                "mem_limit": profile.mem_limit or settings.mem_limit,
            }
            if limits:
                override["extra_resource_limits"] = limits
            if profile.image and profile.image != settings.workspace_image:
                override["image"] = settings.pinned_image(profile.image)
            cap = _shared_cap_mib(inventory) if profile.gpu.shared else None
            if cap is not None:
                override["environment"] = {GPU_MEMORY_LIMIT_ENV: str(cap)}
            entry = {"slug": slug, "display_name": name, "kubespawner_override": override}
            if profile.description:
                entry["description"] = profile.description
            out.append(entry)
            if profile.groups:
                groups[slug] = sorted(profile.groups)
    if out:
        out[0]["default"] = True
    return out, groups


def kubespawner_config(settings: Settings) -> dict[str, Any]:
    """KubeSpawner traits the chart has no key for (set through `hub.config`): the
    read-only root and no capabilities, as on Docker, and the kernel culling options."""
    return {
        "container_security_context": {
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "args": kernel_culling_args(settings),
    }


def memory_volumes(
    settings: Settings, profiles: Sequence[Profile]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The writable places besides the home, as on Docker: /dev/shm (USER_SHM_SIZE) and /tmp
    (USER_TMP_SIZE), both memory-backed `emptyDir`s that count against the memory limit.

    One size of /tmp for every profile (a profile's override would replace the chart's
    volumes, the home's among them): half the smallest memory limit of any profile at most.
    """
    smallest = min([settings.mem_limit, *(p.mem_limit for p in profiles if p.mem_limit)])
    places = (
        ("shm", "/dev/shm", settings.shm_size),
        ("tmp", "/tmp", tmp_bytes(settings.tmp_size, smallest)),
    )
    volumes = [
        {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": quantity(size)}}
        for name, _, size in places
    ]
    mounts = [{"name": name, "mountPath": path} for name, path, _ in places]
    return volumes, mounts


def network_policy(network: NetworkSettings) -> dict[str, Any]:
    """netguard's rules as the chart's NetworkPolicy: users reach the hub and the proxy
    only, private ranges only when allowed, the internet unless USER_INTERNET=false."""
    return {
        "enabled": True,
        "egressAllowRules": {
            "cloudMetadataServer": False,
            "dnsPortsPrivateIPs": True,
            "nonPrivateIPs": network.internet,
            "privateIPs": network.lan_access,
        },
        "egress": [
            {"to": [{"ipBlock": {"cidr": str(allowed)}}]} for allowed in network.egress_allow
        ],
    }


def values(
    settings: Settings,
    network: NetworkSettings,
    profiles: Sequence[Profile],
    inventory: Sequence[Device],
    authenticator_traits: Mapping[str, Any],
) -> dict[str, Any]:
    """The Zero to JupyterHub values for this lab (see docs/scale-out.md)."""
    image, _, tag = settings.workspace_image.rpartition(":")
    pinned = settings.pinned_image(settings.workspace_image)
    if pinned != settings.workspace_image:
        # A Swarm lab's registry (make push): the cluster pulls exactly what its nodes run;
        # the chart joins name and tag, and a reference may carry a tag and its digest.
        image, _, digest = pinned.partition("@")
        tag = f"{tag}@{digest}"
    uid, gid = (int(part) for part in CONTAINER_USER.split(":"))
    choices, by_group = profile_list(profiles, inventory, settings)
    extra_volumes, extra_mounts = memory_volumes(settings, profiles)
    storage: dict[str, Any] = {
        "type": "dynamic",
        # One home per user, in every server of theirs (named servers too), as on Docker;
        # KubeSpawner's default, claim-{user_server}, gives each server a PVC of its own.
        "dynamic": {"pvcNameTemplate": "claim-{username}"},
        "homeMountPath": HOME_DIR,
        "extraVolumes": extra_volumes,
        "extraVolumeMounts": extra_mounts,
    }
    if settings.disk_quotas.root:
        # The PVC's size: the storage class enforces it (block volumes do; many NFS
        # provisioners do not). Per group or user sizes are not carried (docs/scale-out.md).
        storage["capacity"] = quantity(settings.disk_quotas.default)
    named = (
        {"allowNamedServers": True, "namedServerLimitPerUser": settings.named_servers}
        if settings.named_servers
        else {"allowNamedServers": False}
    )
    pull_secret = (
        {
            # The chart makes the Secret and adds it to every pod's imagePullSecrets.
            "imagePullSecret": {
                "create": True,
                "registry": registry_host(settings.registry),
                "username": settings.registry_username,
                "password": settings.registry_password,
            }
        }
        if settings.registry_username
        else {}
    )
    return {
        **pull_secret,
        "hub": {
            "config": {
                **hub_config(settings, authenticator_traits),
                "KubeSpawner": kubespawner_config(settings),
            },
            "concurrentSpawnLimit": settings.concurrent_spawn_limit,
            **named,
            "authenticatePrometheus": True,
            "extraConfig": {"labhub-profiles": PROFILES_BY_GROUP},
        },
        "proxy": {
            "https": {
                "enabled": True,
                "hosts": [settings.domain],
                # `kubectl create secret tls labhub-tls --cert=... --key=...` (the lab's
                # certificate), or switch to letsencrypt on a public name.
                "type": "secret",
                "secret": {"name": "labhub-tls"},
            }
        },
        "singleuser": {
            "image": {"name": image, "tag": tag},
            "uid": uid,
            "fsGid": gid,
            "defaultUrl": WORKSPACE_DEFAULT_URL,
            "cmd": WORKSPACE_COMMAND,
            "cpu": {"limit": settings.cpu_limit},
            "memory": {"limit": settings.mem_limit},
            "allowPrivilegeEscalation": False,
            "storage": storage,
            "networkPolicy": network_policy(network),
        },
        "cull": {"enabled": True, "timeout": settings.idle_timeout, "every": 60},
        "custom": {"labhub": {"profiles": choices, "profileGroups": by_group}},
    }
