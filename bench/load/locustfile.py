"""Load test: a class of students log in, spawn, run a cell and stop (Locust).

Each simulated student does the whole journey once, through nginx on https:

0. `sign-up` (AUTH=native): the sign-up form with the class's code and the student's
   own password; a step of its own, so that `login` times what it always did (in
   workshop mode it does nothing: everyone has the shared password);
1. `login`: the hub's login form (XSRF cookie, then POST /hub/login);
2. `spawn`: POST /hub/api/users/<name>/server, timed until the hub says ready;
3. `cell`: a kernel is started in the student's server and one cell runs over the
   kernel websocket (`print(sum(range(10)))`), timed from kernel request to reply;
4. `stop`: DELETE the server, timed until the hub reports it gone.

Each step is one Locust request entry, so the report gives its failures and
latency percentiles. The run ends by itself once every student has finished (or
at Locust's --run-time). Settings come from the environment:

    LABHUB_ENV_FILE   the stack's .env (URL port, CA folder, sign-up code)
    LOAD_USERS        number of students (default 50; must match locust -u)

Command (see docs/reliability.md):

    LABHUB_ENV_FILE=/path/.env LOAD_USERS=50 .venv/bin/locust -f bench/load/locustfile.py \
        --headless -u 50 -r 0.5 --run-time 15m --stop-timeout 120 \
        --host https://localhost:<HTTPS_PORT> --csv /tmp/load --only-summary
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gevent
import websocket
from locust import HttpUser, events, task
from locust.exception import StopUser


def _env(path: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in Path(path).read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


ENV = _env(os.environ["LABHUB_ENV_FILE"])
CA_FILE = str(Path(ENV["CERTS_DIR"]) / "labhub-ca.crt")
# AUTH=native: each student signs up with the class's code; workshop mode: one password.
WORKSHOP_PASSWORD = (
    ENV.get("SHARED_USER_PASSWORD", "") if ENV.get("AUTH") == "shared-password" else ""
)
STUDENTS = int(os.environ.get("LOAD_USERS", "50"))
RUN_ID = secrets.token_hex(3)
_numbers = itertools.count()
_started: list[str] = []
_finished: list[str] = []


class Student(HttpUser):
    """One student's journey, once; never re-run by the same simulated user."""

    # Between steps a student does not wait: the journey itself is the load.
    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        self.number = next(_numbers)
        self.name = f"load{RUN_ID}-{self.number:03d}"
        self.client.verify = CA_FILE
        self.client.trust_env = False
        self.xsrf = ""
        self.password = WORKSHOP_PASSWORD

    # --- one timed step, reported to Locust as a request ------------------------------
    def step(self, name: str, action: Callable[[], None]) -> bool:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            action()
        except Exception as exc:  # recorded as a Locust failure
            error = exc
        self.environment.events.request.fire(
            request_type="STEP",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
        return error is None

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(
            method,
            "/hub/api" + path,
            headers={"X-XSRFToken": self.xsrf},
            name=f"/hub/api {method} {path.split('/')[1]}",
            timeout=120,
            **kwargs,
        )
        return response

    # --- the steps ----------------------------------------------------------------------
    def sign_up(self) -> None:
        """AUTH=native: create this student's account with the class's code and a password."""
        if self.password:  # workshop mode: everyone has the shared password already
            return
        password = secrets.token_urlsafe(18)
        self.client.get("/hub/signup", name="/hub/signup GET", timeout=60).raise_for_status()
        response = self.client.post(
            "/hub/signup",
            data={
                "username": self.name,
                "signup_password": password,
                "signup_password_confirmation": password,
                "signup_code": ENV["SIGNUP_CODE"],
                "_xsrf": str(self.client.cookies.get("_xsrf", path="/hub/")),
            },
            name="/hub/signup POST",
            timeout=60,
        )
        if "Your account is ready" not in response.text:
            raise RuntimeError(f"sign-up answered {response.status_code} without an account")
        self.password = password

    def login(self) -> None:
        self.client.get("/hub/login", name="/hub/login GET", timeout=60).raise_for_status()
        self.xsrf = str(self.client.cookies.get("_xsrf", path="/hub/"))
        response = self.client.post(
            "/hub/login",
            data={"username": self.name, "password": self.password, "_xsrf": self.xsrf},
            allow_redirects=False,
            name="/hub/login POST",
            timeout=60,
        )
        if response.status_code != 302:
            raise RuntimeError(f"login answered {response.status_code}")
        # The hub issues a new XSRF token bound to the new session at login.
        self.xsrf = str(self.client.cookies.get("_xsrf", path="/hub/"))
        token = self.api("POST", f"/users/{self.name}/tokens", json={"note": "load"})
        token.raise_for_status()
        self.token = token.json()["token"]

    def spawn(self) -> None:
        response = self.api("POST", f"/users/{self.name}/server")
        if response.status_code not in (201, 202):
            raise RuntimeError(f"spawn answered {response.status_code}: {response.text[:200]}")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{self.name}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return
            if not server or not server.get("pending"):
                raise RuntimeError(f"spawn failed: {server}")
            gevent.sleep(1)
        raise TimeoutError("not ready within 600 s")

    def cell(self) -> None:
        headers = {"Authorization": f"token {self.token}"}
        kernels = f"/user/{self.name}/api/kernels"
        kernel = self.client.post(
            kernels, json={"name": "tensorflow-gpu"}, headers=headers, name="kernel POST"
        )
        kernel.raise_for_status()
        kernel_id = kernel.json()["id"]
        try:
            netloc = urlparse(str(self.host)).netloc
            ws = websocket.create_connection(
                f"wss://{netloc}{kernels}/{kernel_id}/channels",
                header=[f"Authorization: token {self.token}"],
                sslopt={"ca_certs": CA_FILE, "cert_reqs": ssl.CERT_REQUIRED},
                timeout=180,
            )
            try:
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps(_execute_request(msg_id, "print(sum(range(10)))")))
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    message = json.loads(ws.recv())
                    if message.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    if message["msg_type"] == "stream":
                        if message["content"]["text"].strip() != "45":
                            raise RuntimeError(f"cell printed {message['content']['text']!r}")
                        return
                    if message["msg_type"] == "error":
                        raise RuntimeError("cell raised " + message["content"]["ename"])
                raise TimeoutError("no output within 180 s")
            finally:
                ws.close()
        finally:
            self.client.delete(f"{kernels}/{kernel_id}", headers=headers, name="kernel DELETE")

    def stop_server(self) -> None:
        self.api("DELETE", f"/users/{self.name}/server")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if not self.api("GET", f"/users/{self.name}").json().get("servers"):
                return
            gevent.sleep(1)
        raise TimeoutError("not stopped within 300 s")

    @task
    def journey(self) -> None:
        if self.number >= STUDENTS:  # Locust replaced a finished user: nothing left to do
            raise StopUser()
        _started.append(self.name)
        # Sign-up is a step of its own, so "1 login" times the same thing as always.
        if self.step("0 sign-up", self.sign_up) and self.step("1 login", self.login):
            # Whatever happens to the spawn or the cell, the server is stopped again.
            if self.step("2 spawn (request to ready)", self.spawn):
                self.step("3 cell (kernel start + run)", self.cell)
            self.step("4 stop (request to gone)", self.stop_server)
        _finished.append(self.name)
        if len(_finished) >= STUDENTS and self.environment.runner is not None:
            # From another greenlet: quit() kills every user greenlet, this one too.
            gevent.spawn_later(1, self.environment.runner.quit)
        raise StopUser()


def _execute_request(msg_id: str, code: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "load",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
    }


@events.test_stop.add_listener
def _remove_students(**_: Any) -> None:
    """Remove what the run created on the engine: containers left over and volumes."""
    import contextlib

    import docker
    from labhub.contract import OWNER_LABEL, container_name_prefix, volume_name_for

    api = docker.from_env()
    network = ENV.get("DOCKER_NETWORK", ENV["STACK_NAME"])
    prefix = f"^{container_name_prefix(network)}"
    for name in _started:
        for container in api.containers.list(
            all=True, filters={"label": f"{OWNER_LABEL}={name}", "name": prefix}
        ):
            container.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            api.volumes.get(volume_name_for(name, network)).remove(force=True)
    print(f"load: {len(_finished)} of {STUDENTS} journeys finished; removed their volumes")
