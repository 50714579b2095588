"""GPUs come back when they are not used (issue 18), end to end on a GPU test stack.

Besides NVIDIA's container hook (tests/fake-gpu, as in test_gpus.py), the hub gets a
stand-in nvidia-smi (tests/fake-nvml, mounted by its compose.yml into this stack's hub
only, out of dockerd's PATH) that reports the utilisation this module writes. The rules
run in seconds here: a holder whose GPU reads 0 % is warned, then stopped, though its
"open tab" keeps the hub's activity fresh; one under load is kept; a session reaches its
length, is extended once with the server's own token, then stops. JupyterLab's side is
played from inside the user's container, with the URL and token the spawner gave it. Each
stop is checked at the hub, the engine and the audit log.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from browser import ARTIFACTS, chromium, needs_chromium
from gpustack import INVENTORY, Admin, devices_of, env_of, gpu_config_dir, nvidia_driver_missing
from labhub.contract import GPU_STATUS_URL_ENV, volume_name_for
from stacks import Stack, launched_stack

from testsupport.browsing import despite_network_changes
from testsupport.containers import user_container
from testsupport.hubclient import token_session
from testsupport.images import REPO
from testsupport.waiting import wait_until

pytestmark = pytest.mark.e2e

STACK = os.environ.get("LABHUB_GPU_TEST_STACK", "labhubgpu") + "reclaim"
HTTPS_PORT = int(os.environ.get("LABHUB_GPU_TEST_HTTPS_PORT", "19443")) + 1
IDLE_S, WARN_S, SESSION_S, EXTENSION_S, CULL_EVERY_S = 30, 20, 120, 45, 3
FAKE_NVIDIA_SMI = "fake-nvidia-smi.json"
BUSY, IDLE = 90, 0


@pytest.fixture(scope="module")
def gpu_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpu_config_dir(tmp_path_factory.mktemp("reclaim-gpu-config"))


def set_utilisation(config: Path, percent: dict[str, int]) -> None:
    """What the fake nvidia-smi reports from now on: GPU index -> utilisation (%)."""
    gpus = [
        {
            "index": d["id"],
            "uuid": d.get("uuid", f"GPU-test-{d['id']}"),
            "name": d["model"],
            "memory.total": d["memory_mib"],
            "utilization.gpu": percent.get(str(d["id"]), BUSY),
            "memory.used": 0,
        }
        for d in INVENTORY["devices"]
    ]
    state = config / FAKE_NVIDIA_SMI
    state.write_text(json.dumps({"gpus": gpus}))
    state.chmod(0o644)


@pytest.fixture(scope="module")
def reclaim_stack(tmp_path_factory: pytest.TempPathFactory, gpu_config: Path) -> Iterator[Stack]:
    reason = nvidia_driver_missing()
    if reason:
        pytest.skip(reason)
    set_utilisation(gpu_config, {})  # every GPU busy until a test says otherwise
    extra = {
        "GPU_CONFIG_DIR": str(gpu_config),
        "GPU_INVENTORY": "/srv/labhub/gpus.json",
        "GPU_PROFILES": "/srv/labhub/profiles.json",
        "GPU_CULL_EVERY": str(CULL_EVERY_S),
        "GPU_UTILISATION_IDLE_TIMEOUT": str(IDLE_S),
        "GPU_UTILISATION_WARN": str(WARN_S),
        "GPU_SESSION_MAX": str(SESSION_S),
        "GPU_SESSION_EXTENSION": str(EXTENSION_S),
        "GPU_SESSION_EXTENSIONS": "1",
        # Far beyond any test here: only the utilisation and length rules can stop a server.
        "GPU_IDLE_TIMEOUT": "3600",
    }
    with launched_stack(tmp_path_factory, STACK, HTTPS_PORT, extra) as running:
        # The same hub again, with the stand-in nvidia-smi mounted (this stack only).
        recreated = subprocess.run(
            [
                "docker", "compose", "-f", "compose/docker-compose.yml",
                "-f", "tests/fake-nvml/compose.yml", "--env-file", str(running.env_file),
                "up", "-d", "--wait", "hub",
            ],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**os.environ, "LABHUB_ENV_FILE": str(running.env_file)},
        )  # fmt: skip
        assert recreated.returncode == 0, recreated.stdout + recreated.stderr
        yield running


@pytest.fixture(scope="module")
def admin(reclaim_stack: Stack) -> Admin:
    admin = Admin(reclaim_stack)
    # The GPU service is back after the hub's restart, and reads the fake NVML.
    wait_until(
        lambda: admin.gpus("GET", "devices").json()["rules"]["utilisation"],
        180, "the GPU service to read utilisation through nvidia-smi",
        done=lambda rule: rule.get("enabled"), ignoring=(requests.RequestException, ValueError),
    )  # fmt: skip
    return admin


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def from_inside(name: str, path: str = "", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """What JupyterLab gets from the GPU service: a request from inside the user's container,
    to LABHUB_GPU_STATUS_URL with the server's own JUPYTERHUB_API_TOKEN."""
    code = (
        "import json, os, sys, urllib.error, urllib.request as u\n"
        f"url = os.environ[{GPU_STATUS_URL_ENV!r}] + {path!r}\n"
        f"data = {json.dumps(body).encode() if body is not None else None!r}\n"
        "request = u.Request(url, data=data, headers={'Content-Type': 'application/json',\n"
        "    'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']})\n"
        "try:\n"
        "    answer = u.urlopen(request, timeout=30)\n"
        "except urllib.error.HTTPError as e:\n"
        "    answer = e\n"
        "print(json.dumps([answer.status, answer.read().decode()]))\n"
    )
    result = user_container(STACK, name).exec_run(["python3", "-c", code])
    assert result.exit_code == 0, result.output.decode()
    status, text = json.loads(result.output.decode().strip().splitlines()[-1])
    return status, json.loads(text)


def server_token(name: str) -> str:
    return env_of(user_container(STACK, name).attrs)["JUPYTERHUB_API_TOKEN"]


class OpenTabs:
    """What an open JupyterLab tab does for the hub: report the server's activity, with the
    server's own token, whenever the test polls."""

    def __init__(self, stack: Stack, *names: str) -> None:
        self.stack = stack
        self.tokens = {name: server_token(name) for name in names}

    def __call__(self, name: str) -> None:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        token_session(self.stack.ca_file, self.tokens[name]).post(
            f"{self.stack.base_url}/hub/api/users/{name}/activity",
            json={"last_activity": now, "servers": {"": {"last_activity": now}}},
            timeout=30,
        )


def device_of(name: str) -> str:
    [device] = devices_of(user_container(STACK, name).attrs)
    return device


def test_an_idle_gpu_behind_an_open_tab_is_warned_then_stopped_a_busy_one_kept(
    reclaim_stack: Stack, admin: Admin, engine: docker.DockerClient, gpu_config: Path
) -> None:
    idle, busy = admin.users(2, gpu_group=True)
    admin.start({idle: "gpu-1", busy: "gpu-1"})
    idle_gpu, busy_gpu = device_of(idle), device_of(busy)
    set_utilisation(gpu_config, {idle_gpu: IDLE, busy_gpu: BUSY})
    open_tab = OpenTabs(reclaim_stack, idle, busy)

    def warning() -> str | None:
        for name in (idle, busy):
            open_tab(name)
        status, me = from_inside(idle)
        assert status == 200, me
        return me["servers"][""]["warning"]

    shown = wait_until(warning, IDLE_S + 60, f"{idle}'s JupyterLab to be warned", interval=2)
    assert shown.startswith("No GPU use for") and "unless it uses its GPU" in shown
    me = from_inside(idle)[1]
    assert me["user"] == idle and me["utilisation_rule"]["enabled"] is True
    entry = me["servers"][""]
    assert entry["idle_since"] and entry["idle_stop_at"]
    assert [d["id"] for d in entry["devices"]] == [idle_gpu]

    def stopped() -> bool:
        open_tab(busy)
        server = admin.server(idle)
        if server is not None:
            open_tab(idle)  # the tab stays open to the end
            last_seen[0] = server["last_activity"]
        return server is None

    last_seen = [""]
    wait_until(stopped, WARN_S + 60, f"{idle}'s idle GPU server to stop", interval=2)
    # The hub still saw it active: the GPU rule, not the hub's idle rule, stopped it.
    last = datetime.fromisoformat(last_seen[0].replace("Z", "+00:00"))
    assert datetime.now(UTC) - last < timedelta(seconds=60), last_seen
    # The device is free, the container gone, the files kept; the audit log says why.
    wait_until(
        lambda: admin.holders()[idle_gpu], 60, f"GPU {idle_gpu} freed", done=lambda h: h == []
    )
    assert not engine.containers.list(all=True, filters={"label": f"labhub.user={idle}"})
    assert engine.volumes.get(volume_name_for(idle, STACK))
    actions = {(e["action"], e["detail"].get("reason")) for e in admin.culls(idle)}
    assert {("warn", "utilisation-idle"), ("cull", "utilisation-idle")} <= actions, actions

    # The holder under load outlives the idle timeout by far, with no warning.
    until = datetime.now(UTC) + timedelta(seconds=IDLE_S + 2 * CULL_EVERY_S)

    def idle_timeout_passed() -> bool:
        open_tab(busy)
        return datetime.now(UTC) >= until

    wait_until(idle_timeout_passed, IDLE_S + 60, "the idle timeout to pass", interval=2)
    assert admin.server(busy)["ready"]
    busy_entry = from_inside(busy)[1]["servers"][""]
    assert busy_entry["idle_since"] is None and busy_entry["warning"] is None
    assert not [e for e in admin.culls(busy) if e["action"] in ("warn", "cull")]
    admin.stop(busy)


def test_a_session_reaches_its_length_is_extended_once_then_stops(
    reclaim_stack: Stack, admin: Admin, gpu_config: Path
) -> None:
    [name] = admin.users(1, gpu_group=True)
    admin.start({name: "gpu-1"})
    set_utilisation(gpu_config, {device_of(name): BUSY})
    open_tab = OpenTabs(reclaim_stack, name)

    def warning() -> str | None:
        open_tab(name)
        return from_inside(name)[1]["servers"][""]["warning"]

    shown = wait_until(warning, SESSION_S + 30, "the session-length warning", interval=2)
    assert shown.startswith("GPU session limit") and "unless you extend it" in shown
    before = from_inside(name)[1]["servers"][""]
    assert before["extensions_left"] == 1

    status, extended = from_inside(name, "/extend", {"server": ""})
    assert status == 200, extended
    moved = datetime.fromisoformat(extended["length_stop_at"].replace("Z", "+00:00")) - (
        datetime.fromisoformat(before["length_stop_at"].replace("Z", "+00:00"))
    )
    assert moved == timedelta(seconds=EXTENSION_S)
    assert extended["extensions_left"] == 0 and extended["warning"] is None
    status, refused = from_inside(name, "/extend", {"server": ""})
    assert status == 409 and "no extension left" in refused["error"]

    def gone() -> bool:
        server = admin.server(name)
        if server is not None:
            open_tab(name)
        return server is None

    wait_until(gone, EXTENSION_S + 60, f"{name}'s session to end", interval=2)
    stopped_at = datetime.now(UTC)
    end = datetime.fromisoformat(extended["length_stop_at"].replace("Z", "+00:00"))
    assert stopped_at >= end, (stopped_at, end)  # not before the extended end
    entries = admin.culls(name)
    assert any(e["action"] == "extend" and e["actor"] == name for e in entries)
    assert any(e["action"] == "cull" and e["detail"]["reason"] == "session-length" for e in entries)


@needs_chromium
def test_a_student_extends_the_session_on_the_hub_page_in_a_browser(
    reclaim_stack: Stack, admin: Admin, gpu_config: Path
) -> None:
    """The hub's way (Services -> gpus): the service's root lands a student on their GPU
    page, whose button extends the session once; the page then offers no more."""
    from playwright.sync_api import expect

    set_utilisation(gpu_config, {})
    [name] = admin.users(1, gpu_group=True)
    admin.start({name: "gpu-1"})
    before = admin.gpus("GET", "devices").json()
    with chromium(reclaim_stack) as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            reclaim_stack.browser_login(page, name, next_url="/hub/home")

            def services_menu_gpus() -> None:
                page.goto(reclaim_stack.base_url + "/hub/home")
                page.get_by_role("button", name="Services").click()
                page.get_by_role("link", name="gpus").click()
                page.wait_for_url("**/services/gpus/me")

            despite_network_changes(services_menu_gpus)
            expect(page.locator("body")).to_contain_text("1 extension(s) left")
            page.get_by_role("button", name="extend this session").click()
            expect(page.locator("body")).to_contain_text("0 extension(s) left")
            assert page.get_by_role("button", name="extend this session").count() == 0
        finally:
            page.screenshot(path=str(ARTIFACTS / "reclaim-extend.png"))
    assert errors == [], errors
    entries = admin.culls(name)
    assert [e["actor"] for e in entries if e["action"] == "extend"] == [name]
    assert before["rules"]["extensions"] == 1
    admin.stop(name)


ADMIN_ENDPOINTS = [
    ("GET", "api/devices"),
    ("GET", "api/usage"),
    ("GET", "api/audit"),
    ("POST", "api/devices/0/reserve"),
    ("POST", "api/devices/0/drain"),
    ("POST", "api/holders/{victim}/revoke"),
    ("POST", "api/quota/user:{student}/topup"),
    ("POST", "api/quota/user:{student}/reset"),
]


def test_a_students_server_token_reads_api_me_but_no_admin_endpoint(
    reclaim_stack: Stack, admin: Admin, gpu_config: Path
) -> None:
    """The server's token passes the hub's check for the service (it reads api/me), so
    each admin endpoint must refuse it itself: attacked with it, every one answers 403 and
    nothing changes (the victim's GPU server keeps running, no device is drained)."""
    set_utilisation(gpu_config, {})  # busy: no rule stops the victim during the attack
    student, victim = admin.users(2, gpu_group=True)
    admin.start({student: "cpu", victim: "gpu-1"})
    token = token_session(reclaim_stack.ca_file, server_token(student))
    me = token.get(f"{reclaim_stack.base_url}/services/gpus/api/me", timeout=30)
    assert me.status_code == 200 and me.json()["user"] == student
    assert me.json()["servers"] == {}  # a CPU server; the victim's GPU is not shown
    for method, template in ADMIN_ENDPOINTS:
        path = template.format(student=student, victim=victim)
        body = {"drained": True} if "drain" in path else {"hours": 5, "user": student}
        response = token.request(
            method, f"{reclaim_stack.base_url}/services/gpus/{path}",
            json=body if method == "POST" else None, allow_redirects=False, timeout=30,
        )  # fmt: skip
        assert response.status_code == 403, (path, response.status_code, response.text[:200])
        assert "is not a JupyterHub admin" in response.json()["message"], path
    # The admin page itself sends the token to the student's own page.
    page = token.get(f"{reclaim_stack.base_url}/services/gpus/", timeout=30)
    assert page.url.endswith("/services/gpus/me") and "My GPU session" in page.text
    assert victim not in page.text and "revoke" not in page.text
    assert admin.server(victim)["ready"]
    devices = admin.gpus("GET", "devices").json()["devices"]
    assert all(not d["drained_since"] and not d["reserved_for"] for d in devices)
    actions = [e["actor"] for e in admin.gpus("GET", "audit?limit=50").json()["entries"]]
    assert student not in actions
    admin.stop(student, victim)
