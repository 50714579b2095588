"""Spawn benchmark: how fast and how heavy is one user's server on this stack?

Measures, against a running labhub stack (through nginx on https, like a browser):

* spawn latency, request to ready: `POST /hub/api/users/<name>/server` until the hub
  reports the server ready, and until the user's own `/user/<name>/api/status`
  answers through the proxy; for one user at a time and for a burst at once;
* CPU seconds one spawn costs: the user container's cgroup CPU time (when ready and
  after it settled) plus the hub container's CPU time during the spawn;
* idle memory per user container after it settled (cgroup usage minus inactive
  file cache, which is what `docker stats` shows);
* the images' sizes;
* the reference, in the same run: a plain `jupyter lab` started outside any
  container (same JupyterLab/jupyter-server-proxy versions), ready when its
  `/api/status` answers; the report gives container/reference ratios.

Usage (the stack's .env gives the URL, CA, admin password, sign-up code and names):

    .venv/bin/python bench/spawn/spawn_bench.py --env-file /path/.env \
        --reference-venv /path/to/venv-with-jupyterlab [--single 5] [--burst 10]

Every user it creates is stopped and deleted, with its volume, at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from labhub.contract import OWNER_LABEL, container_name_prefix, volume_name_for

# --- Setup -----------------------------------------------------------------------------


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@dataclass
class Target:
    base_url: str
    ca_file: str
    stack_name: str  # compose project: the hub is <stack_name>-hub-1
    network: str  # DOCKER_NETWORK: user containers and volumes are named after it
    version: str
    admin_name: str
    admin_password: str
    # AUTH=native (the default): students sign up with the class's code, each with
    # their own password. Workshop mode (AUTH=shared-password): the shared password.
    signup_code: str = ""
    workshop_password: str = ""

    @classmethod
    def from_env_file(cls, path: Path) -> Target:
        env = read_env(path)
        certs = env.get("CERTS_DIR") or str(Path(__file__).resolve().parents[2] / "certs")
        workshop = env.get("AUTH") == "shared-password"
        return cls(
            base_url=f"https://localhost:{env.get('HTTPS_PORT', '443')}",
            ca_file=str(Path(certs) / "labhub-ca.crt"),
            stack_name=env["STACK_NAME"],
            network=env.get("DOCKER_NETWORK", env["STACK_NAME"]),
            version=env["LABHUB_VERSION"],
            admin_name=env["ADMIN_USERS"].split(",")[0].strip(),
            admin_password=env["SHARED_ADMIN_PASSWORD" if workshop else "ADMIN_INITIAL_PASSWORD"],
            signup_code="" if workshop else env["SIGNUP_CODE"],
            workshop_password=env["SHARED_USER_PASSWORD"] if workshop else "",
        )

    def student(self, username: str) -> Session:
        """A logged-in session of a new student; signing up is not part of any timing."""
        if not self.signup_code:
            return Session(self, username, self.workshop_password)
        password = secrets.token_urlsafe(18)
        http = requests.Session()
        http.trust_env = False
        http.verify = self.ca_file
        http.get(self.base_url + "/hub/signup", timeout=60).raise_for_status()
        answer = http.post(
            self.base_url + "/hub/signup",
            data={
                "username": username,
                "signup_password": password,
                "signup_password_confirmation": password,
                "signup_code": self.signup_code,
                "_xsrf": str(http.cookies.get("_xsrf", path="/hub/")),
            },
            timeout=60,
        )
        if answer.status_code != 200 or "Your account is ready" not in answer.text:
            raise RuntimeError(f"sign-up of {username} failed: {answer.status_code}")
        return Session(self, username, password)


class Session:
    """One user's browser-like session: login form, cookies, XSRF; no auto-spawn."""

    def __init__(self, target: Target, username: str, password: str) -> None:
        self.target, self.username = target, username
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = target.ca_file
        self.http.get(target.base_url + "/hub/login", timeout=60).raise_for_status()
        self.xsrf = str(self.http.cookies.get("_xsrf", path="/hub/"))
        # No redirects: following /hub/spawn would start the server before we time it.
        response = self.http.post(
            target.base_url + "/hub/login",
            data={"username": username, "password": password, "_xsrf": self.xsrf},
            allow_redirects=False,
            timeout=60,
        )
        if response.status_code != 302:
            raise RuntimeError(f"login of {username} failed: {response.status_code}")
        # The hub issues a new XSRF token bound to the new session at login.
        self.xsrf = str(self.http.cookies.get("_xsrf", path="/hub/"))

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(
            method,
            self.target.base_url + "/hub/api" + path,
            headers={"X-XSRFToken": self.xsrf},
            timeout=120,
            **kwargs,
        )

    def token(self) -> str:
        response = self.api("POST", f"/users/{self.username}/tokens", json={"note": "bench"})
        response.raise_for_status()
        return str(response.json()["token"])


@dataclass
class Spawn:
    username: str
    ok: bool = False
    error: str = ""
    to_ready: float = float("nan")  # request -> the hub says ready
    to_routed: float = float("nan")  # request -> the server answers through the proxy
    hub_cpu: float = float("nan")  # hub container CPU seconds during the spawn
    cpu_at_ready: float = float("nan")  # user container CPU seconds when routed
    cpu_settled: float = float("nan")  # ... after settling
    mem_settled_mib: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def spawn(session: Session, token: str, result: Spawn, timeout: float = 300) -> None:
    """Request the server, wait for ready, then for its own API through the proxy."""
    name, base = session.username, session.target.base_url
    status_url = f"{base}/user/{name}/api/status"
    start = time.monotonic()
    try:
        response = session.api("POST", f"/users/{name}/server")
        if response.status_code not in (201, 202):
            raise RuntimeError(f"POST server: {response.status_code} {response.text[:200]}")
        while True:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"not ready within {timeout} s")
            server = session.api("GET", f"/users/{name}").json().get("servers", {}).get("")
            if server and server.get("ready"):
                result.to_ready = time.monotonic() - start
                break
            if not server or not server.get("pending"):
                raise RuntimeError(f"spawn failed: {server}")
            time.sleep(0.25)
        while True:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"not routed within {timeout} s")
            with contextlib.suppress(requests.RequestException):
                answer = session.http.get(
                    status_url,
                    headers={"Authorization": f"token {token}"},
                    allow_redirects=False,
                    timeout=10,
                )
                if answer.status_code == 200 and "started" in answer.json():
                    result.to_routed = time.monotonic() - start
                    break
            time.sleep(0.25)
        result.ok = True
    except Exception as error:  # reported as a failure, never hidden
        result.error = f"{type(error).__name__}: {error}"


def stop(session: Session, timeout: float = 120) -> None:
    session.api("DELETE", f"/users/{session.username}/server")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not session.api("GET", f"/users/{session.username}").json().get("servers"):
            return
        time.sleep(0.5)


# --- Measurements from Docker -----------------------------------------------------------


def container_of(api: docker.DockerClient, target: Target, username: str) -> Any:
    """The user's running container, named and labelled as labhub.contract says."""
    filters = {
        "label": f"{OWNER_LABEL}={username}",
        "name": f"^{container_name_prefix(target.network)}",
    }
    found = api.containers.list(filters=filters)
    return found[0] if found else None


def cpu_seconds(container: Any) -> float:
    stats = container.stats(stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def memory_mib(container: Any) -> float:
    """What `docker stats` shows: usage minus inactive file cache."""
    memory = container.stats(stream=False)["memory_stats"]
    inner = memory.get("stats", {})
    inactive = inner.get("inactive_file", inner.get("total_inactive_file", 0))
    return float(memory["usage"] - inactive) / 2**20


def hub_container(api: docker.DockerClient, target: Target) -> Any:
    return api.containers.get(f"{target.stack_name}-hub-1")


# --- Reference: a plain jupyter lab outside any container --------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_tree_cpu_rss(pid: int) -> tuple[float, float]:
    """CPU seconds and RSS (MiB) of a process and its children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.append(int(child))
    cpu = rss = 0.0
    for one in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
    return cpu, rss


def reference_start(venv: Path, settle: float) -> Spawn:
    result = Spawn(username="reference")
    token, port = secrets.token_hex(16), free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {
            "HOME": home,
            "PATH": f"{venv}/bin:/usr/bin:/bin",
            "JUPYTER_CONFIG_DIR": f"{home}/.jupyter",
            "JUPYTER_DATA_DIR": f"{home}/.local/share/jupyter",
            "JUPYTER_RUNTIME_DIR": f"{home}/.runtime",
        }
        command = [
            f"{venv}/bin/jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={home}",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ]
        start = time.monotonic()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            session = requests.Session()
            session.trust_env = False
            while time.monotonic() - start < 120:
                with contextlib.suppress(requests.RequestException):
                    answer = session.get(
                        f"http://127.0.0.1:{port}/api/status",
                        headers={"Authorization": f"token {token}"},
                        timeout=5,
                    )
                    if answer.status_code == 200:
                        result.to_ready = result.to_routed = time.monotonic() - start
                        result.ok = True
                        break
                time.sleep(0.1)
            result.cpu_at_ready, _ = proc_tree_cpu_rss(process.pid)
            time.sleep(settle)
            result.cpu_settled, result.mem_settled_mib = proc_tree_cpu_rss(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return result


# --- Report ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(name: str, runs: list[Spawn]) -> dict[str, Any]:
    good = [r for r in runs if r.ok]
    return {
        "name": name,
        "n": len(runs),
        "failures": len(runs) - len(good),
        "ready_p50": pct([r.to_ready for r in good], 50),
        "ready_p95": pct([r.to_ready for r in good], 95),
        "ready_max": max((r.to_ready for r in good), default=float("nan")),
        "routed_p50": pct([r.to_routed for r in good], 50),
        "routed_p95": pct([r.to_routed for r in good], 95),
        "routed_max": max((r.to_routed for r in good), default=float("nan")),
        "cpu_at_ready_p50": pct([r.cpu_at_ready for r in good], 50),
        "cpu_settled_p50": pct([r.cpu_settled for r in good], 50),
        "hub_cpu_p50": pct([r.hub_cpu for r in good], 50),
        "mem_settled_mib_p50": pct([r.mem_settled_mib for r in good], 50),
        "mem_settled_mib_max": max((r.mem_settled_mib for r in good), default=float("nan")),
        "errors": [r.error for r in runs if not r.ok],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, required=True)
    parser.add_argument("--reference-venv", type=Path, required=True)
    parser.add_argument("--single", type=int, default=5, help="sequential spawns (one user)")
    parser.add_argument("--burst", type=int, default=10, help="users spawning at once")
    parser.add_argument("--reference-runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=30, help="seconds before idle figures")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if not 1 <= args.single <= 20 or not 1 <= args.burst <= 40:
        parser.error("--single must be 1..20 and --burst 1..40 (bounded on purpose)")
    target = Target.from_env_file(args.env_file)
    api = docker.from_env()
    hub = hub_container(api, target)
    run_id = secrets.token_hex(3)
    created: list[Session] = []
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        # Reference first, then the containers, in the same run.
        reference = [
            reference_start(args.reference_venv, args.settle) for _ in range(args.reference_runs)
        ]
        print("reference (plain jupyter lab):", [f"{r.to_ready:.2f}" for r in reference])

        single: list[Spawn] = []
        for i in range(args.single):
            session = target.student(f"bench{run_id}-s{i}")
            created.append(session)
            token = session.token()
            result = Spawn(username=session.username)
            hub_before = cpu_seconds(hub)
            spawn(session, token, result)
            result.hub_cpu = cpu_seconds(hub) - hub_before
            container = container_of(api, target, session.username)
            if result.ok and container is not None:
                result.cpu_at_ready = cpu_seconds(container)
                time.sleep(args.settle)
                result.cpu_settled = cpu_seconds(container)
                result.mem_settled_mib = memory_mib(container)
            stop(session)
            single.append(result)
            print(
                f"single {i}: ready {result.to_ready:.2f} s, routed {result.to_routed:.2f} s,"
                f" container CPU {result.cpu_settled:.2f} s, hub CPU {result.hub_cpu:.2f} s,"
                f" idle {result.mem_settled_mib:.0f} MiB {result.error}"
            )

        sessions = [target.student(f"bench{run_id}-b{i}") for i in range(args.burst)]
        created.extend(sessions)
        tokens = [s.token() for s in sessions]
        burst = [Spawn(username=s.username) for s in sessions]
        hub_before = cpu_seconds(hub)
        burst_start = time.monotonic()
        threads = [
            threading.Thread(target=spawn, args=(s, t, r))
            for s, t, r in zip(sessions, tokens, burst, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=400)
        burst_wall = time.monotonic() - burst_start
        burst_hub_cpu = cpu_seconds(hub) - hub_before
        time.sleep(args.settle)
        for session, result in zip(sessions, burst, strict=True):
            container = container_of(api, target, session.username)
            if result.ok and container is not None:
                result.cpu_settled = cpu_seconds(container)
                result.mem_settled_mib = memory_mib(container)
        for session in sessions:
            stop(session)
        print(f"burst of {args.burst}: all done in {burst_wall:.2f} s")

        images = {}
        for name in ("workspace", "hub", "proxy"):
            with contextlib.suppress(docker.errors.ImageNotFound):
                image = api.images.get(f"labhub/{name}:{target.version}")
                images[f"labhub/{name}:{target.version}"] = round(image.attrs["Size"] / 2**20)

        ref = summary("reference", reference)
        one = summary("single", single)
        many = summary(f"burst{args.burst}", burst)
        many["wall_all_ready"] = burst_wall
        many["hub_cpu_total"] = burst_hub_cpu
        results.update(
            reference=ref,
            single=one,
            burst=many,
            images_mib=images,
            ratios={
                "single_ready_p50_vs_reference": one["ready_p50"] / ref["ready_p50"],
                "single_routed_p50_vs_reference": one["routed_p50"] / ref["routed_p50"],
                "idle_mem_vs_reference": one["mem_settled_mib_p50"] / ref["mem_settled_mib_p50"],
            },
            raw={
                "reference": [asdict(r) for r in reference],
                "single": [asdict(r) for r in single],
                "burst": [asdict(r) for r in burst],
            },
            load=os.getloadavg(),
        )
    finally:
        cleanup(target, api, created)
    print(json.dumps({k: v for k, v in results.items() if k != "raw"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failures = results["single"]["failures"] + results["burst"]["failures"]
    return 1 if failures else 0


def cleanup(target: Target, api: docker.DockerClient, created: list[Session]) -> None:
    """Stop and delete every user this run created, and remove their volumes."""
    with contextlib.suppress(Exception):
        admin = Session(target, target.admin_name, target.admin_password)
        for session in created:
            with contextlib.suppress(Exception):
                stop(session)
            admin.api("DELETE", f"/users/{session.username}")
    for session in created:
        container = container_of(api, target, session.username)
        if container is not None:
            container.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            api.volumes.get(volume_name_for(session.username, target.network)).remove(force=True)


if __name__ == "__main__":
    sys.exit(main())
