"""The same lab on Kubernetes: a Zero to JupyterHub values file from labhub's settings.

`values()` turns the validated `Settings`, the network settings, the spawn profiles and
the GPU inventory into values for the Zero to JupyterHub Helm chart, so that a lab moving
to its university's cluster keeps its login rules, limits, profiles per group, GPU
requests, idle culling and the users' network rules. What has no equivalent there is
listed in docs/scale-out.md. Pure: the caller loads the files and runs OIDC discovery.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .contract import CONTAINER_USER, GPU_MEMORY_LIMIT_ENV, HOME_DIR, WORKSPACE_DEFAULT_URL
from .gpu.inventory import Device
from .gpu.profiles import Profile
from .settings import NetworkSettings, Settings

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
                override["image"] = profile.image
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
    uid, gid = (int(part) for part in CONTAINER_USER.split(":"))
    choices, by_group = profile_list(profiles, inventory, settings)
    return {
        "hub": {
            "config": hub_config(settings, authenticator_traits),
            "concurrentSpawnLimit": settings.concurrent_spawn_limit,
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
            "cpu": {"limit": settings.cpu_limit},
            "memory": {"limit": settings.mem_limit},
            "allowPrivilegeEscalation": False,
            "storage": {
                "type": "dynamic",
                "homeMountPath": HOME_DIR,
                # /dev/shm for data loaders, as USER_SHM_SIZE gives it on Docker.
                "extraVolumes": [
                    {
                        "name": "shm",
                        "emptyDir": {"medium": "Memory", "sizeLimit": quantity(settings.shm_size)},
                    }
                ],
                "extraVolumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
            },
            "networkPolicy": network_policy(network),
        },
        "cull": {"enabled": True, "timeout": settings.idle_timeout, "every": 60},
        "custom": {"labhub": {"profiles": choices, "profileGroups": by_group}},
    }
