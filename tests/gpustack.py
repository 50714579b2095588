"""What the GPU test modules share (tests/test_gpus.py, tests/test_reclaim.py): the
declared inventory and profiles, the check that the engine can start GPU containers, an
admin's REST client for the hub and the GPU service, and readers of what the engine holds.

Inventory: GPUs 0 and 1 exclusive, GPU 2 shared by at most 2 holders (4096 MiB each).
Profiles: cpu for everyone; gpu-1 and gpu-shared for the JupyterHub group `gpu` only.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import requests
from stacks import USERS_CREATED, Stack

from testsupport.images import ensure_base_image

GROUP = "gpu"

INVENTORY = {
    "devices": [
        {"id": "0", "uuid": "GPU-test-0", "model": "Test A100", "memory_mib": 40960},
        {"id": "1", "uuid": "GPU-test-1", "model": "Test A100", "memory_mib": 40960},
        {
            "id": "2",
            "model": "Test T4",
            "memory_mib": 15360,
            "policy": "shared",
            "max_holders": 2,
            "memory_cap_mib": 4096,
        },
    ]
}
PROFILES = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "cpu_limit": 1, "mem_limit": "2G"},
        {
            "slug": "gpu-shared",
            "display_name": "Shared GPU slice",
            "gpu": "shared",
            "cpu_limit": 1,
            "mem_limit": "2G",
            "groups": [GROUP],
        },
        {
            "slug": "gpu-1",
            "display_name": "One whole GPU",
            "gpu": 1,
            "cpu_limit": 1,
            "mem_limit": "2G",
            "groups": [GROUP],
        },
    ]
}


def gpu_config_dir(folder: Path) -> Path:
    """GPU_CONFIG_DIR for a test stack: the inventory and profiles, readable by the hub."""
    (folder / "gpus.json").write_text(json.dumps(INVENTORY))
    (folder / "profiles.json").write_text(json.dumps(PROFILES))
    folder.chmod(0o755)
    for name in ("gpus.json", "profiles.json"):
        (folder / name).chmod(0o644)
    return folder


def nvidia_driver_missing() -> str | None:
    """Why GPU containers cannot start on this engine, or None when they can."""
    try:
        client = docker.from_env()
        client.containers.run(
            ensure_base_image(),
            ["true"],
            remove=True,
            device_requests=[docker.types.DeviceRequest(device_ids=["0"], capabilities=[["gpu"]])],
        )
    except docker.errors.DockerException as e:
        return (
            f"the Docker engine cannot start a container with --gpus device=0 ({e}); "
            "start dockerd with tests/fake-gpu on its PATH (as .ci/run does) or use a GPU host"
        )
    return None


# --- the stack and its users ----------------------------------------------------------


class Admin:
    """The hub's and the GPU service's REST APIs with an admin token."""

    def __init__(self, stack: Stack, token: str = "") -> None:
        """`token`: an admin's token got elsewhere (e.g. with a login not following the
        hub's redirects); by default one from logging in as admin."""
        self.stack = stack
        self.token = token or stack.login("admin").new_token("admin")
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = stack.ca_file
        self.http.headers["Authorization"] = f"token {self.token}"

    def hub(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return self.http.request(method, f"{self.stack.base_url}/hub/api{path}", **kwargs)

    def gpus(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(
            method, f"{self.stack.base_url}/services/gpus/api/{path}", timeout=120, **kwargs
        )

    def holders(self) -> dict[str, list[str]]:
        """Device id -> holders, as the admin API reports them."""
        response = self.gpus("GET", "devices")
        assert response.status_code == 200, response.text
        devices = response.json()["devices"]
        return {d["id"]: sorted(h["holder"] for h in d["holders"]) for d in devices}

    def users(self, count: int, gpu_group: bool) -> list[str]:
        names = [f"gpu-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        USERS_CREATED.extend(names)
        response = self.hub("POST", "/users", json={"usernames": names})
        assert response.status_code == 201, response.text
        if gpu_group:
            self.hub("POST", f"/groups/{GROUP}")  # 201, or 409 when it exists
            response = self.hub("POST", f"/groups/{GROUP}/users", json={"users": names})
            assert response.status_code == 200, response.text
        return names

    def spawn(self, name: str, profile: str) -> requests.Response:
        return self.hub("POST", f"/users/{name}/server", json={"profile": profile})

    def start(self, profiles: dict[str, str]) -> None:
        """Ask for every user's server with its profile at once, then wait until all are ready."""
        for name, profile in profiles.items():
            assert self.spawn(name, profile).status_code in (201, 202)
        for name in profiles:
            self.wait(name, ready=True)

    def server(self, name: str) -> dict[str, Any] | None:
        servers: dict[str, Any] = self.hub("GET", f"/users/{name}").json().get("servers", {})
        return servers.get("")

    def wait(self, name: str, ready: bool, timeout: float = 300) -> dict[str, Any] | None:
        """Until the server is ready (ready=True) or gone (ready=False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(name)
            if ready and server and server.get("ready"):
                return server
            if not ready and not server:
                return None
            if ready and not server:
                raise AssertionError(f"{name}'s spawn failed: {self.last_progress(name)}")
            time.sleep(1)
        raise TimeoutError(f"{name}: server not {'ready' if ready else 'gone'} in {timeout} s")

    def stopping(self, name: str, within: float = 15) -> bool:
        """Whether the server is stopping or gone (polled for ``within`` seconds)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            server = self.server(name)
            if server is None or server.get("pending") == "stop":
                return True
            time.sleep(0.5)
        return False

    def stop(self, *names: str) -> None:
        for name in names:
            self.hub("DELETE", f"/users/{name}/server")
        for name in names:
            self.wait(name, ready=False, timeout=120)

    def culls(self, holder: str) -> list[dict[str, Any]]:
        """The GPU service's audit entries (warn, cull, extend...) about ``holder``."""
        entries = self.gpus("GET", "audit?limit=200").json()["entries"]
        return [e for e in entries if e["detail"].get("holder") == holder]

    def last_progress(self, name: str) -> str:
        return self.progress(name, until=lambda _: False, timeout=5)

    def progress(self, name: str, until: Any, timeout: float = 30) -> str:
        """Read the spawn's progress events until `until(message)`; return that message."""
        last = ""
        with (
            contextlib.suppress(requests.RequestException),
            self.hub(
                "GET", f"/users/{name}/server/progress", stream=True, timeout=timeout
            ) as response,
        ):
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                last = str(event.get("message", ""))
                if until(last) or event.get("failed") or event.get("ready"):
                    return last
        return last


def container_of(engine: docker.DockerClient, stack: str, name: str) -> dict[str, Any]:
    """`docker inspect` of the user's container in the stack named `stack`."""
    found = engine.containers.list(
        all=True, filters={"label": f"labhub.user={name}", "name": f"{stack}-user-"}
    )
    assert len(found) == 1, f"{name}: {len(found)} containers"
    attrs: dict[str, Any] = found[0].attrs
    return attrs


def devices_of(inspect: dict[str, Any]) -> list[str]:
    requests_ = inspect["HostConfig"].get("DeviceRequests") or []
    return [d for r in requests_ if r["Driver"] == "nvidia" for d in r["DeviceIDs"]]


def env_of(inspect: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in inspect["Config"]["Env"])
