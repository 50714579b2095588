"""What LabSpawner and the Docker socket proxy must agree on, in one place.

The spawner names, labels and runs user containers this way; the proxy
(`labhub.dockerpolicy`) lets the hub touch only containers and volumes that look
exactly like this. Both import these names, so the two sides cannot drift apart.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import string

from escapism import escape
from jupyterhub.utils import subdomain_hook_idna

# The label on every user container; its value is the JupyterHub username. The proxy
# lets the hub inspect, start, stop or remove only containers that carry it.
OWNER_LABEL = "labhub.user"
# The server's name ("" for a user's default server): the per-user metrics report it.
SERVER_LABEL = "labhub.server"
# The workspace image's unprivileged user (jovyan:users); the proxy refuses uid 0.
CONTAINER_USER = "1000:100"
# Docker's log of a user container sits on the host's disk, and anyone in the container
# can write to it (the server's standard output, /proc/1/fd/1): rotated, two files of
# 10 MiB at most. The spawner sends exactly this; the proxy accepts nothing else.
USER_LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}}
# The workspace's TensorFlow keeps to this many MiB of a shared GPU slice
# (mnist_workspace.env.GPU_LIMIT_VAR reads it; a test checks the two agree).
GPU_MEMORY_LIMIT_ENV = "GPU_MEMORY_LIMIT_MB"
# The absolute URL of the GPU service's student API (api/me, docs/gpus.md) as a user's
# server reaches it; set by the spawner only when the stack has a GPU service.
GPU_STATUS_URL_ENV = "LABHUB_GPU_STATUS_URL"
# The GPU service, as JupyterHub names it (its URL prefix /services/gpus/).
GPU_SERVICE = "gpus"
# Swarm mode (labhub.swarmgpu): a GPU service's booking, on the service's labels: its
# holder ("user" or "user/server") and its devices as the allocator booked them
# ("0@gpu-a,1@gpu-a"). The Docker proxy checks them against the GPU record, and the
# nodes' NVIDIA runtime reads the variable (set on every service: "void" for none).
GPU_HOLDER_LABEL = "labhub.gpu.holder"
GPU_DEVICES_LABEL = "labhub.gpu.devices"
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"
# Where the user's volume is mounted, and the page a new server opens: the notebook.
HOME_DIR = "/home/jovyan"
WORKSPACE_DEFAULT_URL = "/lab/tree/mnist/MNIST.ipynb"

_VOLUME_SAFE = set(string.ascii_lowercase + string.digits)
# Docker accepts long volume names, but paths and tools get unwieldy; we cap well below.
_MAX_VOLUME_NAME = 120


def container_prefix(network: str) -> str:
    """DockerSpawner's `prefix` for a stack: containers are named `<prefix>-<username>`.

    The stack's network name is in it, so two stacks on one engine never collide.
    """
    return f"{network}-user"


def container_name_prefix(network: str) -> str:
    """What every user container's name starts with (the proxy checks `?name=`)."""
    return container_prefix(network) + "-"


def volume_prefix(network: str) -> str:
    """What every user volume of a stack is named with: `<DOCKER_NETWORK>-user-`.

    Per stack, so two stacks on one engine never share a user's files; for the default
    stack (DOCKER_NETWORK=labhub) it is `labhub-user-`, the name every install had before.
    """
    return container_name_prefix(network)


def volume_name_for(username: str, network: str) -> str:
    """A distinct, Docker-safe volume name for any JupyterHub username in a stack.

    Escaping with '-' as the escape character is injective (the escape character is
    itself escaped), so two usernames never share a volume. Over-long names are cut
    and made unique again with a digest of the full name.
    """
    return _per_user_name(volume_prefix(network), username)


def user_network_prefix(network: str) -> str:
    """What every user's own Swarm network of a stack is named with: `<DOCKER_NETWORK>-u-`
    (never a prefix of a container's or volume's `<DOCKER_NETWORK>-user-`)."""
    return f"{network}-u-"


def user_network_name(username: str, network: str) -> str:
    """The user's own overlay network in Swarm mode (LabSwarmSpawner creates it; the
    proxy lets a service join only its owner's): distinct per user, as volume names are."""
    return _per_user_name(user_network_prefix(network), username)


def gpu_service_host(domain: str) -> str:
    """With SUBDOMAINS: the GPU service's own host name (JupyterHub's default subdomain hook:
    gpus--service.DOMAIN), at which configurable-http-proxy routes its api/me. A user's
    server reaches the proxy by this name: compose's alias on one host, its own /etc/hosts
    entry in a Swarm service (the Docker proxy allows no other)."""
    return str(subdomain_hook_idna(GPU_SERVICE, domain, "service"))


def chp_host_names(domain: str, subdomains: bool) -> list[str]:
    """Swarm mode: the names a user's service reaches configurable-http-proxy by besides
    its container name, each in its /etc/hosts: the GPU service's host with SUBDOMAINS. The
    spawner (LabSwarmSpawner.chp_host_names) and the Docker proxy, which allows these only,
    both make them from DOMAIN and SUBDOMAINS here."""
    return [gpu_service_host(domain)] if subdomains else []


def user_server_name(username: str, network: str) -> str:
    """DockerSpawner's name for a user's default server (container or Swarm service):
    `<prefix>-<escaped user>`, escaped as DockerSpawner's `escape` does; a named server's
    adds `--<escaped server>` (an escaped name never holds `--`)."""
    return container_name_prefix(network) + _escaped(username)


def _escaped(username: str) -> str:
    return str(escape(username, safe=_VOLUME_SAFE, escape_char="-")).lower()


def _per_user_name(prefix: str, username: str) -> str:
    name = prefix + _escaped(username)
    if len(name) > _MAX_VOLUME_NAME:
        digest = hashlib.sha256(username.encode("utf-8")).hexdigest()[:16]
        name = f"{name[: _MAX_VOLUME_NAME - 17]}_{digest}"
    return name


def quota_home_options(quota_root: str, volume: str) -> dict[str, str]:
    """The `local` driver's options of a home with a disk quota (QUOTA_ROOT set): bound
    onto the subvolume `<quota_root>/<volume>`, the only options the proxy allows."""
    return {"type": "none", "o": "bind", "device": f"{quota_root}/{volume}"}


# HOME_NFS (Swarm mode): every home a folder of one NFS export, mounted by the `local`
# driver on whichever node runs the server. Fixed options: NFS v4, no set-user-ID
# programs and no device files from the server.
NFS_MOUNT_FLAGS = "nfsvers=4,nosuid,nodev"
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NFS_HOST = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
_NFS_PATH = re.compile(r"/|(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")


def nfs_export(raw: str) -> tuple[str, str]:
    """HOME_NFS (`<server>:/export/path`) as (the mount's `addr=`, the export path).

    Strict, because both go into mount options: a host name, an IPv4 address or an IPv6
    address in brackets, then an absolute path of plain segments (no commas, `=`, spaces,
    `..` or `.`, which could add options or leave the export). Raises ValueError."""
    hint = (
        "is not an NFS export: give <server>:/absolute/path, e.g. nfs.lab.example.edu:/export/"
        "homes, 10.0.0.5:/homes or [2001:db8::5]:/homes (a host name or IP, then a path of "
        "letters, digits, '_', '.' and '-': no commas, '=', spaces or '..'), or leave it empty"
    )
    if raw.startswith("["):
        host, bracket, path = raw[1:].partition("]:")
        try:
            addr = str(ipaddress.IPv6Address(host)) if bracket and "%" not in host else ""
        except ValueError:
            addr = ""
    else:
        host, colon, path = raw.partition(":")
        addr = host if colon and len(host) <= 253 and _NFS_HOST.fullmatch(host) else ""
    if not addr or not _NFS_PATH.fullmatch(path) or len(path) > 1024:
        raise ValueError(hint)
    return addr, path


def nfs_home_options(home_nfs: str, volume: str) -> dict[str, str]:
    """The `local` driver's options of a home on HOME_NFS: the folder `<export>/<volume>`
    of the server, with NFS_MOUNT_FLAGS. The spawner sends exactly these and the Docker
    proxy allows exactly these (for the service's owner's own home), nothing else."""
    addr, path = nfs_export(home_nfs)
    return {
        "type": "nfs",
        "o": f"addr={addr},{NFS_MOUNT_FLAGS}",
        "device": f":{path.rstrip('/')}/{volume}",
    }


def swarm_home_options(home_nfs: str, quota_root: str, volume: str) -> dict[str, str]:
    """A Swarm home volume's `local` driver options, for the spawner and the Docker proxy
    alike: its NFS folder (HOME_NFS), its bind onto its subvolume (QUOTA_ROOT; the settings
    allow one of the two at most), or none (a plain volume on its node)."""
    if home_nfs:
        return nfs_home_options(home_nfs, volume)
    if quota_root:
        return quota_home_options(quota_root, volume)
    return {}
