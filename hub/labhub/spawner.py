"""The lab's DockerSpawner: one hardened container per user, one named volume per user.

Everything per-user goes through DockerSpawner's own traitlets and hooks; `start()`
only adds a fine-grained wait for the new server (see `wait_until_answering`). The
container is removed on stop, the volume stays, so a user's files survive stop/start,
hub restarts, image upgrades and a crashed container.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from dockerspawner import DockerSpawner
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Instance, Int, Tuple, Unicode, default
from traitlets.config import LoggingConfigurable

from .contract import (
    CONTAINER_USER,
    GPU_SERVICE,
    GPU_STATUS_URL_ENV,
    HOME_DIR,
    OWNER_LABEL,
    SERVER_LABEL,
    USER_LOG_CONFIG,
    container_prefix,
    gpu_service_host,
    quota_home_options,
    volume_name_for,
)
from .datasets import binds_for
from .diskquota import SOCKET, DiskQuotaError, DiskQuotas, request_home
from .gpu.allocator import GpuAllocator
from .gpu.spawner import GpuSpawnerMixin
from .settings import Settings


async def wait_until_answering(url: str, budget: float, interval: float = 0.1) -> bool:
    """Poll ``url`` every ``interval`` seconds until it answers below 500; False at ``budget``.

    JupyterHub polls a new server with exponential back-off (waits of up to 0.2, 0.4,
    0.8, 1.6, 3.2 s): a server that is up after 2.5 s is often seen only after 3-6 s.
    Waiting here first, finely, lets the hub's own first check succeed at once.
    """
    client = AsyncHTTPClient()
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            response = await client.fetch(
                url, raise_error=False, follow_redirects=False, request_timeout=2
            )
        except (OSError, HTTPClientError):  # refused, reset, timed out: all mean "not yet"
            pass
        else:
            if response.code < 500:
                return True
        await asyncio.sleep(interval)
    return False


class LabServerMixin(LoggingConfigurable):
    """What every lab server has, whichever engine runs it: the limits, the user's named
    volume at ``home_dir`` and a pool of threads for Docker calls. LabSpawner (one engine)
    and labhub.swarmspawner.LabSwarmSpawner (a Swarm) both put it before their DockerSpawner.
    """

    if TYPE_CHECKING:  # provided by DockerSpawner
        network_name: str
        user: Any

    pids_limit = Int(
        1024,
        config=True,
        help="Most processes (and threads) one user container may run: stops fork bombs.",
    )
    shm_size = Unicode(
        "1g",
        config=True,
        help="Size of /dev/shm, which deep-learning data loaders use for shared memory.",
    )
    tmp_size = Int(
        1024**3,
        config=True,
        help="Bytes of /tmp, a memory file system (USER_TMP_SIZE): the container's root is "
        "read-only, so /tmp and the home are all the user can write. Its files count "
        "against the server's memory limit: cut to half of it, so that a full /tmp is "
        "'No space left on device', not the kernel's OOM killer.",
    )
    docker_threads = Int(
        4,
        config=True,
        help="Threads for Docker API calls, shared by all servers. DockerSpawner uses "
        "one, so one slow `docker stop` holds up everyone else's spawn.",
    )
    _shared_executor: ClassVar[ThreadPoolExecutor | None] = None
    home_dir = Unicode(
        HOME_DIR,
        config=True,
        help="Where the user's volume is mounted inside the container.",
    )
    datasets = Tuple(
        config=True,
        help="The shared datasets (labhub.datasets.Dataset, from DATASETS): each is mounted "
        "read-only at /datasets/<name> for the users in one of its groups, at every start.",
    )
    disk_quotas = Instance(
        DiskQuotas,
        args=(),
        config=True,
        help="Per-user disk quotas (labhub.diskquota, from QUOTA_ROOT and DISK_QUOTA*): with a "
        "root, each home is a subvolume there, limited by the diskquota service (in Swarm mode, "
        "the one on the home's node).",
    )

    @default("volumes")
    def _volumes_default(self) -> dict[str, str]:
        return {"{user_volume}": self.home_dir}

    @property
    def executor(self) -> ThreadPoolExecutor:
        """One pool of ``docker_threads`` per spawner class (DockerSpawner has one thread)."""
        cls = type(self)
        if cls._shared_executor is None:
            cls._shared_executor = ThreadPoolExecutor(
                self.docker_threads, thread_name_prefix="docker"
            )
        return cls._shared_executor

    def template_namespace(self) -> dict[str, Any]:
        """Add `{user_volume}`: our collision-free volume name, usable in `volumes`."""
        namespace: dict[str, Any] = super().template_namespace()  # type: ignore[misc]
        namespace["user_volume"] = volume_name_for(self.user.name, self.network_name)
        return namespace


class LabSpawner(GpuSpawnerMixin, LabServerMixin, DockerSpawner):  # type: ignore[misc]
    """DockerSpawner with the lab's defaults: limits, hardening and per-user volumes.

    GpuSpawnerMixin comes first: profiles, GPU scheduling and release (labhub/gpu/spawner.py).
    """

    ready_poll_budget = Float(
        30.0,
        config=True,
        help="Seconds start() polls the new server every 0.1 s before handing over to "
        "the hub's own (exponential back-off) wait; 0 turns this off.",
    )
    diskquota_socket = Unicode(
        SOCKET, config=True, help="The diskquota service's Unix socket (a volume both mount)."
    )

    async def start(self) -> Any:
        """Start the container, then wait (finely, bounded) until its server answers.

        The datasets are chosen here, not once per spawner: group membership changes
        between starts.
        """
        groups = [g.name for g in self.user.groups]
        self.read_only_volumes = binds_for(self.datasets, groups)
        if self.disk_quotas.root:
            await self._prepare_limited_home(self.disk_quotas.limit_for(self.user.name, groups))
        ip_port = await super().start()
        if self.ready_poll_budget > 0 and self.server is not None:
            ip, port = ip_port
            url = f"http://{ip}:{port}{self.server.base_url}"
            await wait_until_answering(url, self.ready_poll_budget)
        return ip_port

    async def _prepare_limited_home(self, limit: int) -> None:
        """Have the diskquota service make the home subvolume, then the volume bound to it.

        A volume made before QUOTA_ROOT was set is a plain one, with no limit: refuse to
        start on it rather than run without the quota.
        """
        volume = volume_name_for(self.user.name, self.network_name)
        await request_home(volume, limit, self.diskquota_socket)
        wanted = quota_home_options(self.disk_quotas.root, volume)
        created = await self.docker(
            "create_volume", volume, driver="local", driver_opts=wanted, labels=None
        )
        if (created.get("Options") or {}) != wanted:
            raise DiskQuotaError(
                f"volume {volume} predates QUOTA_ROOT and has no quota: move its files "
                "into a quota home (docs/admin-guide.md#disk-quotas)"
            )

    @default("extra_host_config")
    def _extra_host_config_default(self) -> Any:
        """The hardening of every container, then this server's GPUs and profile limits,
        then its /tmp (at most half the memory limit those leave)."""
        hardening = {
            "shm_size": self.shm_size,
            "pids_limit": self.pids_limit,
            "security_opt": ["no-new-privileges:true"],
            "cap_drop": ["ALL"],
            "init": False,  # tini is the image's entry point
            # No writable layer: it lives on the host's disk, with no bound on this engine
            # (docs/security.md#the-writable-layer).
            "read_only": True,
            # The container's log lives there too: rotated, bounded.
            "log_config": USER_LOG_CONFIG,
        }

        def host_config(spawner: LabSpawner) -> dict[str, Any]:
            config = {**hardening, **spawner.gpu_host_config()}
            memory = config.get("mem_limit", spawner.mem_limit)
            config["tmpfs"] = {"/tmp": tmp_options(tmp_bytes(spawner.tmp_size, memory))}
            return config

        return host_config

    @default("extra_create_kwargs")
    def _extra_create_kwargs_default(self) -> Any:
        """The unprivileged user, the owner and server labels, then this server's GPU labels."""
        return lambda spawner: {
            "user": CONTAINER_USER,
            "labels": {
                OWNER_LABEL: spawner.user.name,
                SERVER_LABEL: spawner.name,
                **spawner.gpu_labels(),
            },
        }


def tmp_bytes(tmp_size: int, memory_limit: int | None) -> int:
    """The size of /tmp, a memory file system: USER_TMP_SIZE, cut to half the memory limit
    so that a full /tmp is "No space left on device", not the kernel's OOM killer."""
    return tmp_size if memory_limit is None else min(tmp_size, memory_limit // 2)


def tmp_options(size: int) -> str:
    """The /tmp memory file system's mount options: sized, sticky like any /tmp, programs
    may run from it (pip builds), no set-uid files or devices."""
    return f"rw,exec,nosuid,nodev,size={size},mode=1777"


def kernel_culling_args(settings: Settings) -> list[str]:
    """jupyter-server's own kernel culling, as options of the user's server command.

    A busy kernel (a cell running) is never culled; a connected one (an open notebook
    tab) is, unless KERNEL_CULL_CONNECTED=false. Checked every quarter of the timeout,
    at most every 5 minutes, so a kernel goes at most 25% after its timeout.
    """
    if settings.kernel_idle_timeout == 0:
        return []
    interval = max(1, min(300, settings.kernel_idle_timeout // 4))
    return [
        f"--MappingKernelManager.cull_idle_timeout={settings.kernel_idle_timeout}",
        f"--MappingKernelManager.cull_interval={interval}",
        f"--MappingKernelManager.cull_connected={settings.kernel_cull_connected}",
        "--MappingKernelManager.cull_busy=False",
    ]


def gpu_status_url(settings: Settings) -> str:
    """The GPU service's api/me as a user's server reaches it: through configurable-http-proxy's
    public port, the one port of the proxy netguard lets it open.

    With SUBDOMAINS the proxy routes by host name, and JupyterHub serves each service on a
    host of its own (its default subdomain hook: gpus--service.DOMAIN); at the proxy's
    container name the request would reach the hub, which sends it to that host. So the
    URL names that host, which stands for the proxy on the user's network: compose's alias
    on one host, the server's own /etc/hosts entry on a Swarm (`chp_host_names`).

    Otherwise, in Swarm mode each user's own overlay network has configurable-http-proxy
    by its container name (CHP_CONTAINER: the spawner connects it there with no alias, and
    the egress proxy's no_proxy names it); compose's aliases are on the lab's network only.
    """
    if settings.subdomains:
        host = gpu_service_host(settings.domain)
    elif settings.engine == "swarm" and settings.chp_container:
        host = settings.chp_container
    else:
        host = "proxy-chp"
    return f"http://{host}:8000/services/{GPU_SERVICE}/api/me"


# The server's own token (JUPYTERHUB_API_TOKEN): JupyterHub's "server" role, plus access to
# the GPU service so that JupyterLab can read api/me and extend its session.
GPU_SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={GPU_SERVICE}",
]


def server_config(settings: Settings) -> dict[str, Any]:
    """The traitlets from settings that every lab server takes, on one engine or a Swarm."""
    gpu_service = settings.gpu_service
    gpu_status = {GPU_STATUS_URL_ENV: gpu_status_url(settings)} if gpu_service else {}
    return {
        # By the digest `make push` recorded, in Swarm mode with REGISTRY (IMAGE_DIGESTS).
        "image": settings.pinned_image(settings.workspace_image),
        # The profile picks the image (GpuSpawnerMixin, from the allow-list WORKSPACE_IMAGES);
        # a request naming one itself (user_options "image") gets DockerSpawner's 400.
        "allowed_images": {},
        "network_name": settings.docker_network,
        "use_internal_ip": True,
        "mem_limit": settings.mem_limit,
        "cpu_limit": settings.cpu_limit,
        "shm_size": str(settings.shm_size),
        "pids_limit": settings.pids_limit,
        "tmp_size": settings.tmp_size,
        "disk_quotas": settings.disk_quotas,
        # Container names carry the stack's network name, so two stacks never collide;
        # DockerSpawner's own name_template adds `--<server name>` for a named server.
        "prefix": container_prefix(settings.docker_network),
        "environment": {"NVIDIA_VISIBLE_DEVICES": "void", **gpu_status},
        "args": kernel_culling_args(settings),
        "debug": settings.debug,
        "http_timeout": 120,
        **({"server_token_scopes": GPU_SERVER_TOKEN_SCOPES} if gpu_service else {}),
    }


def spawner_config(settings: Settings, gpu_allocator: GpuAllocator) -> dict[str, Any]:
    """The LabSpawner traitlets that come from settings, and the process's GPU allocator
    (``labhub.gpu.allocator.load_allocator(settings)``)."""
    return {
        **server_config(settings),
        "remove": True,
        # A cold TensorFlow image can take a while to start on a busy host; a queued
        # GPU spawn waits in start() for up to GPU_QUEUE_TIMEOUT on top of that.
        "start_timeout": 180 + (settings.gpu_queue_timeout if settings.gpu_queue else 0),
        # GPUs (docs/gpus.md): every GPU_* setting reaches the spawner inside the allocator.
        "gpu_allocator": gpu_allocator,
        "datasets": settings.datasets,
    }
