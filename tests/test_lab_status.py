"""Students see their own GPU in JupyterLab (issue 18): labhub's status item and its server
extension (images/workspace/labhub-status).

Unit: the server extension in a real jupyter-server (its own login and XSRF checks) that
asks a real small HTTP server standing for the GPU service's api/me, answering per the
contract between the two (the GPU service itself is tested in tests/test_gpus.py).
E2E: the workspace image's JupyterLab in a real browser, on a CPU-only stack and on a GPU
test stack (NVIDIA's hook faked as in test_gpus). Integration: the same image's JupyterLab
against the api/me stand-in, in the browser: the whole status line, the warning
notification and its "Extend session" button. Screenshots in test-artifacts/lab-status-*.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
import test_gpus
from browser import ARTIFACTS, load_lab, needs_chromium
from gpustack import Admin, container_of, devices_of
from labhub_status.status import GPU_MEMORY_LIMIT_ENV, GPU_STATUS_URL_ENV, home_text
from stacks import VERSION, Stack
from test_gpus import chromium_page

from testsupport.browsing import network_changed
from testsupport.dockerproxy import free_port
from testsupport.images import REPO
from testsupport.waiting import wait_until

# test_gpus's fixtures: the GPU test stack (its name and port from LABHUB_GPU_TEST_*), its
# admin, the engine.
gpu_stack = test_gpus.gpu_stack
admin = test_gpus.admin
engine = test_gpus.engine

EXTENSION = REPO / "images" / "workspace" / "labhub-status"
SERVER_TOKEN = "server-token-of-ada"  # JUPYTERHUB_API_TOKEN: what the service must receive
LOGIN_TOKEN = "login-token"  # jupyter-server's own login
BASE = "/user/ada/"


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_me(**entry: Any) -> dict[str, Any]:
    """api/me as the contract shows it: ada's default server holds the shared GPU 2, and her
    named server "big" GPU 0; ``entry`` overrides fields of the default server's entry."""
    default = {
        "profile": "gpu-shared",
        "display_name": "Shared GPU slice",
        "devices": [{"id": "2", "model": "Test T4", "shared": True, "memory_limit_mib": 4096}],
        "idle_since": _iso(timedelta(minutes=-20)),
        "idle_stop_at": _iso(timedelta(minutes=10)),
        "length_stop_at": _iso(timedelta(hours=2)),
        "extensions_left": 2,
        "warning": "No GPU use for 20 min: this server stops in 10 min unless it uses its GPU.",
        **entry,
    }
    big = {
        "profile": "gpu-1",
        "display_name": "One whole GPU",
        "devices": [{"id": "0", "model": "Test A100", "shared": False, "memory_limit_mib": None}],
        "idle_since": None,
        "idle_stop_at": None,
        "length_stop_at": None,
        "extensions_left": 0,
        "warning": None,
    }
    return {
        "user": "ada",
        "gpu_hours_left": 3.5,
        "utilisation_rule": {"enabled": True, "idle_minutes": 30, "warn_minutes": 5},
        "servers": {"": default, "big": big},
    }


@dataclass
class FakeGpuService:
    """A real HTTP server answering GET api/me and POST api/me/extend with what a test sets,
    recording every request it gets (method, path, Authorization, body)."""

    me: tuple[int, bytes] = (200, b"{}")
    extend: tuple[int, bytes] = (200, b"{}")
    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    url: str = ""

    def answer_me(self, document: Any, code: int = 200) -> None:
        self.me = (code, document if isinstance(document, bytes) else json.dumps(document).encode())

    def answer_extend(self, code: int, document: Any) -> None:
        self.extend = (code, json.dumps(document).encode())


@pytest.fixture(scope="module")
def service() -> Iterator[FakeGpuService]:
    fake = FakeGpuService()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, answer: tuple[int, bytes]) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.seen.append((self.command, self.path, self.headers["Authorization"], body))
            code, payload = answer
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._reply(fake.me if self.path == "/services/gpus/api/me" else (404, b"{}"))

        def do_POST(self) -> None:
            found = self.path == "/services/gpus/api/me/extend"
            self._reply(fake.extend if found else (404, b"{}"))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/services/gpus/api/me"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def local_session() -> requests.Session:
    """A fresh session (no cookies) that ignores the machine's proxy settings."""
    session = requests.Session()
    session.trust_env = False
    return session


@dataclass
class LabServer:
    """A jupyter-server with labhub_status enabled, as the workspace runs it."""

    url: str
    log: Path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return local_session().get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return local_session().post(self.url + path, **kwargs)

    def status(self) -> dict[str, Any]:
        response = self.get("labhub/status", headers=AUTH)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


AUTH = {"Authorization": f"token {LOGIN_TOKEN}"}


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start lab servers with a container environment of the test's choice; stop them all."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(environment: dict[str, str]) -> LabServer:
        home = tmp_path_factory.mktemp("lab")
        config = home / "config"
        config.mkdir()
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"labhub_status": True}}})
        )
        port = free_port()
        log = home / "server.log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "PYTHONPATH": str(EXTENSION),
            "JUPYTERHUB_API_TOKEN": SERVER_TOKEN,
            **environment,
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "jupyter_server", "--no-browser",
                    "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                    f"--ServerApp.base_url={BASE}", f"--IdentityProvider.token={LOGIN_TOKEN}",
                    f"--ServerApp.root_dir={home}", "--allow-root",  # CI runs tests as root
                ],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started.append((process, log))
        server = LabServer(f"http://127.0.0.1:{port}{BASE}", log)

        def answering() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"jupyter-server exited:\n{log.read_text()[-3000:]}")
            return server.get("api", timeout=2).status_code == 200

        wait_until(answering, 60, "jupyter-server", interval=0.2, ignoring=(OSError,))
        assert "labhub_status: labhub/status and labhub/extend are served" in log.read_text()
        return server

    yield start
    for process, _ in started:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def gpu_lab(lab_server: Any, service: FakeGpuService) -> LabServer:
    """Ada's default server on the shared slice: GPU 2, capped at 4096 MiB."""
    server: LabServer = lab_server(
        {
            "NVIDIA_VISIBLE_DEVICES": "2",
            GPU_MEMORY_LIMIT_ENV: "4096",
            GPU_STATUS_URL_ENV: service.url,
            "JUPYTERHUB_SERVER_NAME": "",
        }
    )
    return server


@pytest.mark.unit
def test_a_gpu_server_shows_its_device_with_the_services_figures(
    gpu_lab: LabServer, service: FakeGpuService
) -> None:
    service.answer_me(api_me())
    service.seen.clear()
    status = gpu_lab.status()
    assert status["gpu"] is True
    assert status["devices"] == [
        {"id": "2", "model": "Test T4", "shared": True, "memory_limit_mib": 4096}
    ]
    assert status["profile"] == "gpu-shared" and status["display_name"] == "Shared GPU slice"
    assert status["memory_cap_mib"] == 4096
    assert status["gpu_hours_left"] == 3.5
    assert 9 * 60 - 5 <= status["idle_stop_in_s"] <= 10 * 60
    assert 2 * 3600 - 65 <= status["length_stop_in_s"] <= 2 * 3600
    assert status["extensions_left"] == 2
    assert status["warning"].startswith("No GPU use for 20 min")
    assert status["service"] == "ok"
    # The service was asked once, with this server's own token.
    assert service.seen == [("GET", "/services/gpus/api/me", f"token {SERVER_TOKEN}", b"")]


@pytest.mark.unit
def test_the_devices_shown_are_the_containers_own_whatever_the_service_says(
    gpu_lab: LabServer, service: FakeGpuService
) -> None:
    # The service (wrongly) describes GPU 0 for this server; the container holds GPU 2.
    wrong = [{"id": "0", "model": "Test A100", "shared": False, "memory_limit_mib": None}]
    service.answer_me(api_me(devices=wrong))
    status = gpu_lab.status()
    assert [d["id"] for d in status["devices"]] == ["2"]
    assert status["devices"][0]["model"] is None
    # Ada's other server's GPU 0 never appears either.
    assert "Test A100" not in json.dumps(status)


@pytest.mark.parametrize(
    ("code", "body", "problem"),
    [
        (500, b'{"error": "boom"}', "answered 500"),
        (403, b'{"error": "no"}', "answered 403"),
        (200, b"<html>proxy error</html>", "answered something that is not JSON"),
        (200, b"[1, 2]", "answered JSON that is not an object"),
    ],
    ids=["server-error", "forbidden", "not-json", "not-an-object"],
)
@pytest.mark.unit
def test_a_failing_service_leaves_what_the_container_knows(
    gpu_lab: LabServer, service: FakeGpuService, code: int, body: bytes, problem: str
) -> None:
    service.answer_me(body, code)
    status = gpu_lab.status()
    assert status["gpu"] is True and status["devices"][0]["id"] == "2"
    assert status["memory_cap_mib"] == 4096
    assert status["gpu_hours_left"] is None and status["warning"] is None
    assert status["service"] == f"unavailable: {problem}"


@pytest.mark.unit
def test_an_unreachable_service_leaves_what_the_container_knows(lab_server: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}/services/gpus/api/me"
    lab = lab_server({"NVIDIA_VISIBLE_DEVICES": "0", GPU_STATUS_URL_ENV: closed})
    status = lab.status()
    assert status["devices"] == [
        {"id": "0", "model": None, "shared": False, "memory_limit_mib": None}
    ]
    assert status["service"].startswith("unavailable: no answer")
    refused = lab.post("labhub/extend", headers=AUTH)
    assert refused.status_code == 502 and "did not answer" in refused.json()["message"]


@pytest.mark.unit
def test_a_cpu_server_says_cpu_only_and_has_nothing_to_extend(lab_server: Any) -> None:
    lab = lab_server({"NVIDIA_VISIBLE_DEVICES": "void"})  # no GPU service on this hub
    status = lab.status()
    assert status["gpu"] is False and status["devices"] == []
    assert status["service"] == "absent"
    refused = lab.post("labhub/extend", headers=AUTH)
    assert refused.status_code == 404
    assert "no GPU service" in refused.json()["message"]


@pytest.mark.unit
def test_the_home_shows_its_usage_and_limit_on_cpu_and_gpu_servers(
    lab_server: Any, gpu_lab: LabServer, service: FakeGpuService
) -> None:
    """With QUOTA_ROOT, api/me carries the student's home; the status says it in a few words
    (index.ts puts it after "CPU only" or the GPU's figures)."""
    service.answer_me({**api_me(), "home": {"used_bytes": 31_457_280, "limit_bytes": 104_857_600}})
    cpu = lab_server({"NVIDIA_VISIBLE_DEVICES": "void", GPU_STATUS_URL_ENV: service.url})
    status = cpu.status()
    assert (status["gpu"], status["home"], status["service"]) == (False, "home 30 of 100 MB", "ok")
    service.answer_me({**api_me(), "home": {"used_bytes": 1_288_490_189, "limit_bytes": 5 << 30}})
    assert gpu_lab.status()["home"] == "home 1.2 of 5 GB"
    service.answer_me(api_me())  # no QUOTA_ROOT: no "home", nothing said
    assert gpu_lab.status()["home"] is None


@pytest.mark.parametrize(
    ("home", "said"),
    [
        ({"used_bytes": 0, "limit_bytes": 10 << 30}, "home 0 of 10 GB"),
        ({"used_bytes": 2 << 30, "limit_bytes": None}, "home 2 GB"),
        ({"used_bytes": 512 << 10, "limit_bytes": None}, "home 0.5 MB"),
        ({"used_bytes": 1_610_612_736, "limit_bytes": 1 << 30}, "home 1.5 of 1 GB"),
        (None, None),
        ({"used_bytes": "lots"}, None),
        ([1, 2], None),
    ],
    ids=["empty", "no-limit", "small", "over", "absent", "not-a-number", "not-an-object"],
)
@pytest.mark.unit
def test_the_home_is_said_in_the_larger_unit_and_nothing_odd_gets_through(
    home: Any, said: str | None
) -> None:
    assert home_text(home) == said


@pytest.mark.unit
def test_extend_asks_for_this_server_only_with_its_token(
    gpu_lab: LabServer, service: FakeGpuService
) -> None:
    service.answer_me(api_me(extensions_left=1, warning=None))
    service.answer_extend(200, api_me()["servers"][""])
    service.seen.clear()
    # Whatever the page asks for, the request names this server ("").
    response = gpu_lab.post("labhub/extend", headers=AUTH, json={"server": "big"})
    assert response.status_code == 200, response.text
    method, path, authorization, body = service.seen[0]
    assert (method, path, authorization) == (
        "POST", "/services/gpus/api/me/extend", f"token {SERVER_TOKEN}"
    )  # fmt: skip
    assert json.loads(body) == {"server": ""}
    # The answer is the new status (asked again after the extension).
    assert response.json()["extensions_left"] == 1
    assert service.seen[1][:2] == ("GET", "/services/gpus/api/me")


@pytest.mark.parametrize("code", [404, 409])
@pytest.mark.unit
def test_a_refused_extension_says_why(
    gpu_lab: LabServer, service: FakeGpuService, code: int
) -> None:
    service.answer_extend(code, {"error": "No extension left: this server stops at 11:00 UTC."})
    response = gpu_lab.post("labhub/extend", headers=AUTH)
    assert response.status_code == code
    assert response.json()["message"] == "No extension left: this server stops at 11:00 UTC."


@pytest.mark.unit
def test_status_and_extend_need_the_servers_login_and_xsrf(
    gpu_lab: LabServer, service: FakeGpuService
) -> None:
    service.answer_me(api_me())
    service.answer_extend(200, api_me()["servers"][""])
    assert gpu_lab.get("labhub/status").status_code == 403
    assert gpu_lab.post("labhub/extend").status_code == 403
    # A browser session (cookie login): a POST without the XSRF token is refused before the
    # service is asked; with it, the extension goes through.
    browser = local_session()
    browser.get(gpu_lab.url + "login", timeout=30)
    xsrf = browser.cookies["_xsrf"]
    login = browser.post(
        gpu_lab.url + "login", data={"password": LOGIN_TOKEN, "_xsrf": xsrf}, timeout=30
    )
    assert login.status_code == 200, login.text[:300]
    assert browser.get(gpu_lab.url + "labhub/status", timeout=30).status_code == 200
    service.seen.clear()
    forged = browser.post(gpu_lab.url + "labhub/extend", timeout=30)
    assert forged.status_code == 403 and "'_xsrf' argument missing" in forged.text
    assert not [seen for seen in service.seen if seen[0] == "POST"]
    allowed = browser.post(gpu_lab.url + "labhub/extend", headers={"X-XSRFToken": xsrf}, timeout=30)
    assert allowed.status_code == 200, allowed.text
    assert [seen[0] for seen in service.seen] == ["POST", "GET"]


@pytest.mark.parametrize(
    ("devices", "gpu"),
    [("void", False), ("none", False), ("", False), ("0", True), ("0:1, 2", True)],
    ids=["void", "none", "empty", "one", "mig-and-one"],
)
@pytest.mark.unit
def test_the_images_server_config_loads_the_gpu_dashboard_with_devices_only(
    monkeypatch: pytest.MonkeyPatch, devices: str, gpu: bool
) -> None:
    """images/workspace/jupyter_server_config.py, read as Jupyter reads it, with the
    NVIDIA_VISIBLE_DEVICES the spawner sets (the image's own default is "void")."""
    from traitlets.config.loader import PyFileConfigLoader

    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", devices)
    config = PyFileConfigLoader(
        "jupyter_server_config.py", path=str(EXTENSION.parent)
    ).load_config()
    assert config.ServerApp.jpserver_extensions == {
        "jupyter_lsp": False,
        "jupyterlab_nvdashboard": gpu,
    }
    assert ("app_settings_dir" in config.LabApp) is not gpu


@pytest.mark.unit
def test_the_env_names_are_the_hubs() -> None:
    import labhub.contract as contract

    assert GPU_MEMORY_LIMIT_ENV == contract.GPU_MEMORY_LIMIT_ENV
    assert contract.GPU_STATUS_URL_ENV == GPU_STATUS_URL_ENV


# --- in the workspace's JupyterLab, in a real browser ---------------------------------


DASHBOARD = "jupyterlab-nvdashboard"  # NVIDIA's GPU dashboard, as JupyterLab names it
# A route of its server extension: 200 where the extension is loaded, 404 where it is not.
DASHBOARD_ROUTE = "nvdashboard/accelerators/check"


def open_lab(stack: Stack, page: Any, username: str) -> Any:
    """Log in, open the user's (already running) JupyterLab; return the status item once
    it shows what labhub/status answered (it says "…" until then) and JupyterLab has
    activated its extensions."""
    from playwright.sync_api import expect

    item = page.locator("#labhub-status")

    def navigate() -> None:
        stack.browser_login(page, username, next_url="/hub/home")
        page.goto(f"{stack.base_url}/user/{username}/lab")

    def ready() -> None:
        assert "/hub/login" not in page.url, f"{username} is not logged in: {page.url}"
        expect(item).not_to_have_text("…", timeout=120_000)
        # The file browser's tab: JupyterLab's sidebar is built.
        expect(page.get_by_role("tab", name="File Browser")).to_be_visible(timeout=60_000)

    load_lab(page, navigate, ready)
    return item


def lab_page_config(page: Any) -> dict[str, Any]:
    """The page configuration this JupyterLab page was served with (its extensions)."""
    config: dict[str, Any] = page.evaluate(
        "JSON.parse(document.getElementById('jupyter-config-data').textContent)"
    )
    return config


def dashboard_route_status(stack: Stack, username: str) -> int:
    """The HTTP status of the dashboard's server route on the user's running server, asked
    through nginx and the proxy with the user's own token."""
    client = stack.login(username)
    token = client.new_token(username)
    response = client.session.get(
        f"{stack.base_url}/user/{username}/{DASHBOARD_ROUTE}",
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    return response.status_code


@pytest.mark.e2e
@needs_chromium
def test_a_cpu_server_says_cpu_only_in_jupyterlab(stack: Stack, username: str) -> None:
    from playwright.sync_api import expect

    student = stack.login(username)
    student.start_server(username)
    with chromium_page(stack, "lab-status-cpu") as page:
        errors: list[str] = []
        dropped: list[str] = []
        # The lab's own errors (the hub's login and home pages are not under test here).
        page.on(
            "pageerror",
            lambda error: errors.append(str(error)) if "/lab" in page.url else None,
        )
        page.on("requestfailed", lambda request: dropped.append(f"{request.url} {request.failure}"))
        item = open_lab(stack, page, username)
        expect(item).to_have_text("CPU only")
        # No GPU, no GPU dashboard: its panel is off in JupyterLab, its server extension is
        # not loaded (the route it would serve is not there).
        config = lab_page_config(page)
        assert "labhub-status" in [e["name"] for e in config["federated_extensions"]]
        assert DASHBOARD in config["disabledExtensions"]
        expect(page.get_by_role("tab", name="GPU Dashboards")).to_have_count(0)
        assert dashboard_route_status(stack, username) == 404
        # JupyterLab's own errors for requests Chromium dropped: a fetch, or a script chunk
        # ("Loading chunk N failed. (error: URL)").
        lost = [f.split(" ", 1)[0] for f in dropped if network_changed(f)]
        errors = [
            e
            for e in errors
            if not (lost and (e == "Failed to fetch" or any(url in e for url in lost)))
        ]
        assert errors == [], errors
    student.stop_server(username)


@pytest.mark.e2e
@needs_chromium
def test_a_gpu_server_shows_its_own_device_in_jupyterlab(
    gpu_stack: Stack, admin: Admin, engine: docker.DockerClient
) -> None:
    """Through the real GPU service's api/me: the device the engine gave, its model, the
    profile, and the session's end (GPU_SESSION_MAX's default; no NVML here, so no idle
    stop)."""
    from playwright.sync_api import expect

    [name] = admin.users(1, gpu_group=True)
    admin.start({name: "gpu-1"})
    # What the engine gave the container.
    [device] = devices_of(container_of(engine, test_gpus.STACK, name))
    other = {"0": "1", "1": "0"}[device]
    try:
        with chromium_page(gpu_stack, "lab-status-gpu") as page:
            item = open_lab(gpu_stack, page, name)
            expect(item).to_contain_text(f"GPU {device} (Test A100) · gpu-1")
            # NVIDIA's dashboard: its panel (without NVML here it shows no GPU) and its
            # server extension's route.
            expect(page.get_by_role("tab", name="GPU Dashboards")).to_be_visible()
            assert DASHBOARD not in lab_page_config(page)["disabledExtensions"]
            assert dashboard_route_status(gpu_stack, name) == 200
            # GPU_SESSION_MAX's 8 h, shown rounded: "8 h 0 min" at first, then "7 h 59 min".
            expect(item).to_contain_text(re.compile(r"session ends in [78] h"))
            assert f"GPU {other}" not in item.inner_text()
            assert "idle stop" not in item.inner_text()
            assert "CPU only" not in item.inner_text()
    finally:
        admin.stop(name)


@contextlib.contextmanager
def workspace_server(environment: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """The workspace image's own JupyterLab (the stack built it from this checkout) in a
    container on the host's network, with the image's server configuration and the
    container environment given; yields its base URL and the container, then removes it."""
    port = free_port()
    client = docker.from_env()
    container = client.containers.run(
        f"labhub/workspace:{VERSION}",
        ["jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={LOGIN_TOKEN}"],
        environment={"JUPYTERHUB_API_TOKEN": SERVER_TOKEN, **environment},
        network_mode="host", detach=True, labels={"labhub.test": "test_lab_status"},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until(
            lambda: local_session().get(f"{base}lab", headers=AUTH, timeout=5).status_code
            == 200,
            120, "the workspace's JupyterLab", ignoring=(OSError,),
        )  # fmt: skip
        yield base, container
    finally:
        if os.environ.get("LABHUB_TEST_LOGS"):
            print(container.logs().decode(errors="replace")[-5000:])
        container.remove(force=True)


@pytest.fixture
def workspace_lab(stack: Stack, service: FakeGpuService) -> Iterator[str]:
    """The workspace image's JupyterLab as a GPU server on the shared slice whose GPU
    service is the stand-in above; yields its URL with the login token."""
    with workspace_server(
        {
            "NVIDIA_VISIBLE_DEVICES": "2",
            GPU_MEMORY_LIMIT_ENV: "4096",
            GPU_STATUS_URL_ENV: service.url,
        }
    ) as (base, _):
        yield f"{base}lab?token={LOGIN_TOKEN}"


def served_page_config(base: str) -> dict[str, Any]:
    """The page configuration JupyterLab's HTML carries (what its front end loads)."""
    html = local_session().get(f"{base}lab", headers=AUTH, timeout=30).text
    found = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S
    )
    assert found, html[:2000]
    config: dict[str, Any] = json.loads(found.group(1))
    return config


@pytest.mark.parametrize(("devices", "gpu"), [("void", False), ("2", True)], ids=["cpu", "gpu"])
@pytest.mark.integration
def test_the_gpu_dashboard_is_loaded_on_gpu_servers_only(
    stack: Stack, service: FakeGpuService, devices: str, gpu: bool
) -> None:
    """NVIDIA's dashboard costs every start its server extension's import (docs/benchmarks.md):
    the image loads it, and shows its panel, only when the spawner gave the container devices.
    labhub's status and the image's JupyterLab settings are there on both kinds of server."""
    service.answer_me(api_me())
    with workspace_server({"NVIDIA_VISIBLE_DEVICES": devices, GPU_STATUS_URL_ENV: service.url}) as (
        base,
        container,
    ):
        session = local_session()
        route = session.get(f"{base}{DASHBOARD_ROUTE}", headers=AUTH, timeout=30)
        assert route.status_code == (200 if gpu else 404), route.text[:300]
        logs = container.logs().decode(errors="replace")
        assert ("Registered jupyterlab_nvdashboard server extension" in logs) is gpu, logs[-3000:]
        config = served_page_config(base)
        assert DASHBOARD in [e["name"] for e in config["federated_extensions"]]
        assert (DASHBOARD in config["disabledExtensions"]) is not gpu
        # The status extension, whatever the kind of server.
        status = session.get(f"{base}labhub/status", headers=AUTH, timeout=30).json()
        assert (status["gpu"], status["service"]) == (gpu, "ok")
        # The image's overrides (overrides.json) hold on both: no update checks, no news.
        notification = session.get(
            f"{base}lab/api/settings/@jupyterlab/apputils-extension:notification",
            headers=AUTH,
            timeout=30,
        ).json()["schema"]["properties"]
        defaults = (
            notification["checkForUpdates"]["default"],
            notification["fetchNews"]["default"],
        )
        assert defaults == (False, "false")


@pytest.mark.integration
@needs_chromium
def test_the_status_item_warns_and_extends_from_jupyterlab(
    stack: Stack, workspace_lab: str, service: FakeGpuService
) -> None:
    from playwright.sync_api import expect

    service.answer_me(api_me())
    service.answer_extend(200, api_me()["servers"][""])
    service.seen.clear()
    with chromium_page(stack, "lab-status-warning") as page:
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        item = page.locator("#labhub-status")
        load_lab(
            page,
            lambda: page.goto(workspace_lab),
            lambda: expect(item).to_contain_text("GPU 2 (Test T4)", timeout=120_000),
        )
        for part in ("gpu-shared", "4096 MiB cap (shared)", "3.5 GPU-h left this week"):
            expect(item).to_contain_text(part)
        expect(item).to_contain_text(re.compile(r"idle stop in (9|10) min"))
        expect(item).to_contain_text(re.compile(r"session ends in (1 h 59|2 h 0) min"))
        toast = page.locator(".Toastify__toast", has_text="No GPU use for 20 min")
        expect(toast).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "lab-status-warning-before-extend.png"))
        service.answer_me(api_me(extensions_left=1, warning=None))
        # Clicked once, not despite_network_changes: a click again would extend again, and
        # the service is to see one POST (below).
        toast.get_by_role("button", name="Extend session (2 left)").click()
        expect(page.locator(".Toastify__toast", has_text="Session extended.")).to_be_visible()
        assert errors == [], errors
    posts = [seen for seen in service.seen if seen[0] == "POST"]
    assert len(posts) == 1, service.seen
    assert posts[0][1:] == (
        "/services/gpus/api/me/extend", f"token {SERVER_TOKEN}", b'{"server": ""}'
    )  # fmt: skip
