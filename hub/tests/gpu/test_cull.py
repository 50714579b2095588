"""GPU idle culling in the admin service: idle GPU holders are stopped through the hub API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from labhub.gpu.culler import cull_idle_gpu_holders
from labhub.gpu.inventory import Inventory
from labhub.gpu.scheduler import GpuRequest, Holder
from labhub.gpu.store import Store

from testsupport.minimal_env import MINIMAL_ENV

from .conftest import NOW

pytestmark = pytest.mark.unit


class FakeHub:
    """The hub REST API as the culler sees it: user models, and DELETE of servers."""

    def __init__(self, servers: dict[str, dict[str, Any]]) -> None:
        self.servers = servers
        self.deleted: list[str] = []

    async def __call__(self, method: str, path: str) -> tuple[int, Any]:
        user = path.split("/")[1]
        if method == "GET":
            if user not in self.servers:
                return 404, None
            return 200, {"name": user, "servers": {"": self.servers[user]}}
        self.deleted.append(path)
        return 202, None


def server(idle: timedelta, **extra: Any) -> dict[str, Any]:
    last = (NOW - idle).isoformat().replace("+00:00", "Z")
    return {"ready": True, "pending": None, "last_activity": last, **extra}


def test_only_idle_gpu_holders_are_culled(store: Store, inventory: Inventory) -> None:
    for name, request in (("idle", 1), ("busy", 1), ("cpu", 0)):
        store.allocate(inventory, Holder(name), GpuRequest(whole=request), NOW)
    hub = FakeHub(
        {
            "idle": server(timedelta(minutes=31)),
            "busy": server(timedelta(minutes=5)),
            "cpu": server(timedelta(hours=5)),  # holds no GPU: the hub-wide culler's job
        }
    )
    culled = asyncio.run(cull_idle_gpu_holders(store, hub, 1800, NOW))
    assert culled == ["idle"]
    assert hub.deleted == ["users/idle/server"]
    entry = store.audit()[0]
    assert (entry.actor, entry.action) == ("gpu-idle-culler", "cull")
    assert entry.detail["holder"] == "idle"
    assert entry.detail["idle_seconds"] == 31 * 60


def test_pending_or_gone_servers_are_left_alone(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("starting"), GpuRequest(whole=1), NOW)
    store.allocate(inventory, Holder("gone"), GpuRequest(whole=1), NOW)
    hub = FakeHub({"starting": server(timedelta(hours=2), pending="spawn", ready=False)})
    assert asyncio.run(cull_idle_gpu_holders(store, hub, 60, NOW)) == []
    assert hub.deleted == []


def test_never_active_server_counts_from_its_start(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("ada"), GpuRequest(whole=1), NOW)
    started = (NOW - timedelta(seconds=90)).isoformat()
    hub = FakeHub({"ada": {"ready": True, "last_activity": None, "started": started}})
    assert asyncio.run(cull_idle_gpu_holders(store, hub, 60, NOW)) == ["ada"]


def test_the_service_process_starts_and_refuses_anonymous_api_calls(tmp_path: object) -> None:
    """`python -m labhub.gpu.service` as the hub starts it: up, and 403 without a login."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        **MINIMAL_ENV,
        "GPU_DB": f"{tmp_path}/gpu.sqlite",
        "GPU_INVENTORY": "none",
        "GPU_IDLE_TIMEOUT": "1800",
        "JUPYTERHUB_API_TOKEN": "x" * 32,
        "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/gpus/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_NAME": "gpus",
    }
    process = subprocess.Popen([sys.executable, "-m", "labhub.gpu.service"], env=env)
    try:
        # generous: importing JupyterHub took over 20 s on a machine loaded with trainings
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "the service exited at start-up"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/services/gpus/api/devices")
            except urllib.error.HTTPError as e:
                assert e.code == 403
                break
            except OSError:
                assert time.monotonic() < deadline, "the service never answered"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=10)
