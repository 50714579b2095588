"""GPU reclaiming in the admin service: holders are warned, then stopped through the hub
API, by the rule that applies (idle GPU, session length, hub inactivity), each audited."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from labhub.gpu.culler import Reclaimer
from labhub.gpu.inventory import Inventory, Utilisation
from labhub.gpu.reclaim import Rules
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


# Hub-idle only: the rules before reclaiming by utilisation and session length.
HUB_IDLE_ONLY = Rules(0, 0, 0, 1, 0, hub_idle_timeout_s=1800, nvml=False)
RULES = Rules(
    idle_timeout_s=1800, warn_s=300, session_max_s=8 * 3600, extension_s=3600, extensions=1,
    hub_idle_timeout_s=7200, nvml=True,
)  # fmt: skip


class Gauges:
    """What nvidia-smi reports: GPU index -> percent, changed by the test."""

    def __init__(self, **percent: int) -> None:
        self.percent = {k.lstrip("g"): v for k, v in percent.items()}

    async def __call__(self) -> dict[str, Utilisation]:
        return {i: Utilisation(gpu_percent=p, memory_used_mib=0) for i, p in self.percent.items()}


def reclaimer(store: Store, hub: FakeHub, rules: Rules, gauges: Gauges | None = None) -> Reclaimer:
    return Reclaimer(store, hub, rules, gauges or Gauges())


def run(reclaim: Reclaimer, at: datetime) -> list[tuple[str, str]]:
    return asyncio.run(reclaim.run(at))


def test_only_hub_idle_gpu_holders_are_culled(store: Store, inventory: Inventory) -> None:
    for name, request in (("idle", 1), ("busy", 1), ("cpu", 0)):
        store.allocate(inventory, Holder(name), GpuRequest(whole=request), NOW)
    hub = FakeHub(
        {
            "idle": server(timedelta(minutes=31)),
            "busy": server(timedelta(minutes=5)),
            "cpu": server(timedelta(hours=5)),  # holds no GPU: the hub-wide culler's job
        }
    )
    assert run(reclaimer(store, hub, HUB_IDLE_ONLY), NOW) == [("idle", "hub-idle")]
    assert hub.deleted == ["users/idle/server"]
    entry = store.audit()[0]
    assert (entry.actor, entry.action) == ("gpu-reclaimer", "cull")
    assert entry.detail["holder"] == "idle" and entry.detail["reason"] == "hub-idle"
    assert entry.detail["seconds"] == 31 * 60


def test_pending_or_gone_servers_are_left_alone(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("starting"), GpuRequest(whole=1), NOW)
    store.allocate(inventory, Holder("gone"), GpuRequest(whole=1), NOW)
    hub = FakeHub({"starting": server(timedelta(hours=2), pending="spawn", ready=False)})
    assert run(reclaimer(store, hub, HUB_IDLE_ONLY), NOW + timedelta(hours=3)) == []
    assert hub.deleted == []


def test_never_active_server_counts_from_its_start(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("ada"), GpuRequest(whole=1), NOW)
    started = (NOW - timedelta(seconds=1900)).isoformat()
    hub = FakeHub({"ada": {"ready": True, "last_activity": None, "started": started}})
    assert run(reclaimer(store, hub, HUB_IDLE_ONLY), NOW) == [("ada", "hub-idle")]


def test_an_idle_gpu_with_fresh_activity_is_warned_then_stopped(
    store: Store, inventory: Inventory
) -> None:
    """An open tab keeps the hub's activity fresh; 0% on the GPU stops it all the same,
    while a holder under load on the other GPU stays."""
    store.allocate(inventory, Holder("tab"), GpuRequest(whole=1), NOW)
    store.allocate(inventory, Holder("load"), GpuRequest(whole=1), NOW)
    [tab_device] = next(a for a in store.allocations() if a.holder == "tab").device_ids
    gauges = Gauges(**{f"g{tab_device}": 0, f"g{1 - int(tab_device)}": 97})
    hub = FakeHub({"tab": server(timedelta(0)), "load": server(timedelta(0))})
    reclaim = reclaimer(store, hub, RULES, gauges)
    minute = timedelta(minutes=1)
    for step in range(26):  # a round a minute; the tab's clock starts at its first idle sample
        for name in hub.servers:
            hub.servers[name] = server(timedelta(0))  # the open tab's activity
        assert run(reclaim, NOW + step * minute) == []
    [warning] = [e for e in store.audit() if e.action == "warn"]
    assert warning.detail == {
        "holder": "tab", "reason": "utilisation-idle", "stop_at": "2025-11-24T09:30:00Z",
    }  # fmt: skip
    allocation = next(a for a in store.allocations() if a.holder == "tab")
    shown = reclaim.status(allocation, 0, NOW + 26 * minute)
    assert shown["idle_since"] == "2025-11-24T09:00:00Z"
    assert shown["idle_stop_at"] == "2025-11-24T09:30:00Z"
    assert shown["warning"] == (
        "No GPU use for 26 min: this server stops at 09:30 UTC unless it uses its GPU."
    )
    for step in range(26, 31):
        stopped = run(reclaim, NOW + step * minute)
    assert stopped == [("tab", "utilisation-idle")]
    assert hub.deleted == ["users/tab/server"]
    cull = store.audit()[0]
    assert cull.detail["reason"] == "utilisation-idle" and cull.detail["seconds"] == 30 * 60
    assert len([e for e in store.audit() if e.action == "warn"]) == 1  # warned once


def test_a_shared_slice_is_busy_when_its_gpu_is(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("slice"), GpuRequest(shared=True), NOW)
    hub = FakeHub({"slice": server(timedelta(0))})
    reclaim = reclaimer(store, hub, RULES, Gauges(g2=40))
    for step in range(40):
        hub.servers["slice"] = server(timedelta(0))
        assert run(reclaim, NOW + step * timedelta(minutes=1)) == []


def test_a_session_hits_its_length_is_extended_once_then_stops(
    store: Store, inventory: Inventory
) -> None:
    store.allocate(inventory, Holder("ada"), GpuRequest(whole=1), NOW)
    [allocation] = store.allocations()
    hub = FakeHub({"ada": server(timedelta(0))})
    # The hub's activity rule apart (the open tab keeps it fresh): only the length counts.
    reclaim = reclaimer(store, hub, replace(RULES, hub_idle_timeout_s=0), Gauges(g0=50, g1=50))
    almost = NOW + timedelta(hours=8) - timedelta(minutes=4)
    assert run(reclaim, almost) == []
    status = reclaim.status(allocation, 0, almost)
    assert status["length_stop_at"] == "2025-11-24T17:00:00Z"
    assert status["extensions_left"] == 1
    assert status["warning"] == (
        "GPU session limit: this server stops at 17:00 UTC unless you extend it."
    )
    assert store.extend("ada", 1, "ada", almost) == 1
    extended = reclaim.status(allocation, 1, almost)
    assert extended["length_stop_at"] == "2025-11-24T18:00:00Z" and extended["warning"] is None
    assert extended["extensions_left"] == 0
    assert run(reclaim, NOW + timedelta(hours=8, minutes=30)) == []
    assert run(reclaim, NOW + timedelta(hours=9)) == [("ada", "session-length")]
    actions = [(e.actor, e.action) for e in store.audit()]
    assert ("ada", "extend") in actions and ("gpu-reclaimer", "cull") in actions


def test_without_nvml_the_utilisation_rule_is_off_and_says_why(
    store: Store, inventory: Inventory
) -> None:
    rules = Rules(1800, 300, 0, 1, 0, 0, nvml=False)
    assert rules.utilisation_rule() == {
        "enabled": False, "reason": "no NVML (nvidia-smi) on this host",
    }  # fmt: skip
    assert Rules(0, 300, 0, 1, 0, 0, nvml=True).utilisation_rule()["reason"] == (
        "GPU_UTILISATION_IDLE_TIMEOUT is 0"
    )
    store.allocate(inventory, Holder("ada"), GpuRequest(whole=1), NOW)
    hub = FakeHub({"ada": server(timedelta(0))})
    reclaim = reclaimer(store, hub, rules, Gauges(g0=0, g1=0))
    for step in range(5):
        hub.servers["ada"] = server(timedelta(0))
        assert run(reclaim, NOW + step * timedelta(hours=1)) == []


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
