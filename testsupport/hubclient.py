"""A small client for driving the running stack the way a browser would: through
nginx on https, with the hub's own login form, cookies and XSRF tokens."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import requests
import websocket

from testsupport.waiting import wait_until


@dataclass
class HubClient:
    """One logged-in (or not yet) user session against the hub's public URL."""

    base_url: str
    ca_file: str
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        # Our own CA only: the machine's environment points requests elsewhere.
        self.session.trust_env = False
        self.session.verify = self.ca_file

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def xsrf(self) -> str:
        token = self.session.cookies.get("_xsrf", path="/hub/")
        if token is None:
            self.session.get(self.url("/hub/login"), timeout=30)
            token = self.session.cookies.get("_xsrf", path="/hub/")
        assert token, "the hub set no _xsrf cookie"
        return str(token)

    def login(self, username: str, password: str, follow: bool = True) -> requests.Response:
        """Post the login form; `follow=False` stops at the hub's answer (no server spawn)."""
        xsrf = self.xsrf()
        return self.session.post(
            self.url("/hub/login"),
            data={"username": username, "password": password, "_xsrf": xsrf},
            allow_redirects=follow,
            timeout=60,
        )

    @property
    def logged_in(self) -> bool:
        """Whether the hub gave this session its login cookie (a failed login page is a 200)."""
        return self.session.cookies.get("jupyterhub-hub-login") is not None

    def signup(self, username: str, password: str, code: str = "") -> requests.Response:
        """Fill the hub's sign-up form (AUTH=native), with the class's code if given."""
        return self.session.post(
            self.url("/hub/signup"),
            data={
                "username": username,
                "signup_password": password,
                "signup_password_confirmation": password,
                "signup_code": code,
                "_xsrf": self.xsrf(),
            },
            timeout=60,
        )

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"X-XSRFToken": self.xsrf(), **kwargs.pop("headers", {})}
        return self.session.request(
            method, self.url("/hub/api" + path), headers=headers, timeout=120, **kwargs
        )

    def new_token(self, username: str) -> str:
        response = self.api("POST", f"/users/{username}/tokens", json={"note": "tests"})
        response.raise_for_status()
        return str(response.json()["token"])

    def start_server(
        self, username: str, timeout: float = 300, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Ask for the server (with `options`, e.g. a spawn profile), then wait until the
        hub reports it ready."""
        response = self.api("POST", f"/users/{username}/server", json=options)
        assert response.status_code in (201, 202, 400), response.text
        return self.wait_ready(username, timeout)

    def wait_ready(self, username: str, timeout: float = 300) -> dict[str, Any]:
        """The user's model once the hub reports their server ready; a failed spawn raises."""

        def model() -> dict[str, Any]:
            user: dict[str, Any] = self.api("GET", f"/users/{username}").json()
            server = user.get("servers", {}).get("")
            if not server or not (server.get("pending") or server.get("ready")):
                raise AssertionError(f"{username}'s spawn failed: {user}")
            return user

        return wait_until(
            model,
            timeout,
            f"{username}'s server to be ready",
            done=lambda user: user["servers"][""].get("ready"),
        )

    def stop_server(self, username: str, timeout: float = 120) -> None:
        self.api("DELETE", f"/users/{username}/server")
        wait_until(
            lambda: self.api("GET", f"/users/{username}").json().get("servers"),
            timeout,
            f"{username}'s server to stop",
            done=lambda servers: not servers,
        )


def token_session(ca_file: str, token: str) -> requests.Session:
    """A requests session that trusts only our CA and sends a user's API token."""
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_file
    session.headers["Authorization"] = f"token {token}"
    return session


def user_websocket(
    http: requests.Session, base_url: str, username: str, path: str, timeout: float
) -> websocket.WebSocket:
    """A websocket to `path` of the user's server through nginx, with the session's token
    and trusting only the session's CA."""
    return websocket.create_connection(
        f"wss://{urlparse(base_url).netloc}/user/{username}/{path}",
        header=[f"Authorization: {http.headers['Authorization']}"],
        sslopt={"ca_certs": http.verify, "cert_reqs": ssl.CERT_REQUIRED},
        timeout=timeout,
    )


class Kernel:
    """One kernel in a user's server, driven over its websocket through nginx.

    A kernel outlives single calls (and hub or proxy restarts), so tests can check that
    its state survives a disruption.
    """

    def __init__(
        self,
        base_url: str,
        ca_file: str,
        username: str,
        token: str,
        kernel_name: str = "tensorflow-gpu",
    ) -> None:
        self.base_url, self.ca_file = base_url.rstrip("/"), ca_file
        self.username, self.token = username, token
        self.http = token_session(ca_file, token)
        self.api = f"{self.base_url}/user/{username}/api/kernels"
        response = self.http.post(self.api, json={"name": kernel_name}, timeout=60)
        response.raise_for_status()
        self.id = response.json()["id"]

    def execute(self, code: str, expression: str = "None", timeout: float = 300) -> str:
        """Run `code`; return its stdout, or `expression`'s repr when one is given.

        The expression's value travels in the shell reply (`user_expressions`), which,
        unlike printed output, never depends on the iopub channel being subscribed.
        Raises AssertionError with the traceback if the code fails.
        """
        ws = user_websocket(
            self.http, self.base_url, self.username, f"api/kernels/{self.id}/channels", timeout
        )
        try:
            msg_id = uuid.uuid4().hex
            header = {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": self.username,
                "session": uuid.uuid4().hex,
                "version": "5.3",
            }
            content = {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {"value": expression},
                "allow_stdin": False,
            }
            ws.send(
                json.dumps(
                    {
                        "header": header,
                        "parent_header": {},
                        "metadata": {},
                        "channel": "shell",
                        "content": content,
                    }
                )
            )
            return self._collect(ws, msg_id, expression, timeout)
        finally:
            ws.close()

    @staticmethod
    def _collect(ws: websocket.WebSocket, msg_id: str, expression: str, timeout: float) -> str:
        stdout: list[str] = []
        value = None
        # The reply (shell) can overtake the output (iopub): done when both the reply
        # and iopub's "idle" for this request have arrived.
        replied = idle = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream" and content.get("name") == "stdout":
                stdout.append(content["text"])
            elif kind == "error":
                raise AssertionError("\n".join(content.get("traceback", [])))
            elif kind == "execute_reply":
                assert content["status"] == "ok", content
                value = content["user_expressions"]["value"]
                replied = True
                if expression != "None":
                    assert value["status"] == "ok", value
                    return str(value["data"]["text/plain"])
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            if replied and idle:
                return "".join(stdout)
        raise TimeoutError(f"code did not finish within {timeout} s")

    def shutdown(self) -> None:
        self.http.delete(f"{self.api}/{self.id}", timeout=60)


def run_in_kernel(
    base_url: str,
    ca_file: str,
    username: str,
    token: str,
    code: str,
    timeout: float = 300,
    kernel_name: str = "tensorflow-gpu",
) -> str:
    """Start a kernel (the TensorFlow workspace's, or `kernel_name`) in the user's server,
    run `code`, shut it down; return stdout."""
    kernel = Kernel(base_url, ca_file, username, token, kernel_name)
    try:
        return kernel.execute(code, timeout=timeout)
    finally:
        kernel.shutdown()


class Terminal:
    """A JupyterLab terminal (File > New > Terminal), driven over its websocket.

    The same endpoints the browser uses: POST api/terminals, then the terminals
    websocket, where keystrokes go as ["stdin", ...] and the screen comes as ["stdout", ...].
    """

    def __init__(self, base_url: str, ca_file: str, username: str, token: str) -> None:
        self.base_url, self.ca_file = base_url.rstrip("/"), ca_file
        self.username, self.token = username, token
        self.http = token_session(ca_file, token)
        self.api = f"{self.base_url}/user/{username}/api/terminals"
        response = self.http.post(self.api, timeout=60)
        response.raise_for_status()
        self.name = response.json()["name"]

    def run(self, command: str, done: str, timeout: float = 300) -> str:
        """Type `command` and Enter; return the screen once `done` is printed on it.

        `done` should be something the command prints but its echoed line does not
        contain (e.g. the result of `$((40 + 2))`), so the echo alone never ends the wait.
        """
        path = f"terminals/websocket/{self.name}"
        ws = user_websocket(self.http, self.base_url, self.username, path, timeout)
        screen: list[str] = []
        try:
            ws.send(json.dumps(["stdin", command + "\r"]))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                kind, *payload = json.loads(ws.recv())
                if kind == "stdout":
                    screen.append(payload[0])
                    if done in "".join(screen):
                        return "".join(screen)
        finally:
            ws.close()
        raise TimeoutError(f"{done!r} not printed within {timeout} s:\n{''.join(screen)[-2000:]}")

    def close(self) -> None:
        self.http.delete(f"{self.api}/{self.name}", timeout=60)
