"""A real LabSpawner that talks to a Docker socket proxy as the hub does, without a hub.

For the tests that prove what the spawner's own requests do at the engine (the proxy's
policy, datasets, disk quotas). The user's container runs a shell that ignores
DockerSpawner's arguments and ends at once on `docker stop`'s SIGTERM: the base image has
no Jupyter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from jupyterhub.objects import Hub, Server
from labhub.gpu.allocator import load_allocator
from labhub.settings import Settings
from labhub.spawner import LabSpawner, spawner_config

from testsupport.minimal_env import MINIMAL_ENV

IDLE_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]


def proxied_spawner(
    proxy_port: int,
    image: str,
    network: str,
    state_dir: Path,
    username: str = "",
    groups: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    **traits: Any,
) -> LabSpawner:
    """A LabSpawner for `username` (a fresh name by default) in `groups`, configured from
    settings like the hub's (`env` on top), whose Docker client is the proxy on
    `proxy_port`. `state_dir` holds its GPU record."""
    username = username or f"spawn{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env(
        {
            **MINIMAL_ENV,
            "WORKSPACE_IMAGE": image,
            "DOCKER_NETWORK": network,
            "USER_MEM_LIMIT": "256M",
            "GPU_INVENTORY": "none",
            "GPU_DB": str(state_dir / "gpu.sqlite"),
            **(env or {}),
        }
    )
    user = SimpleNamespace(
        name=username,
        admin=False,
        url=f"/user/{username}/",
        groups=tuple(SimpleNamespace(name=group) for group in groups),
    )
    LabSpawner._client = None  # the class caches its client: make one for this proxy
    spawner = LabSpawner(
        user=user,
        hub=Hub(),
        ready_poll_budget=0,
        cmd=IDLE_COMMAND,
        client_kwargs={"base_url": f"tcp://127.0.0.1:{proxy_port}", "version": "1.41"},
        **{**spawner_config(settings, load_allocator(settings)), **traits},
    )
    spawner.server = Server(base_url=user.url)
    return spawner
