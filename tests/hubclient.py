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

    def login(self, username: str, password: str) -> requests.Response:
        xsrf = self.xsrf()
        return self.session.post(
            self.url("/hub/login"),
            data={"username": username, "password": password, "_xsrf": xsrf},
            allow_redirects=True,
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

    def start_server(self, username: str, timeout: float = 300) -> dict[str, Any]:
        """Ask for the server, then wait until the hub reports it ready."""
        response = self.api("POST", f"/users/{username}/server")
        assert response.status_code in (201, 202, 400), response.text
        return self.wait_ready(username, timeout)

    def wait_ready(self, username: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{username}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return dict(model)
            if not server or (not server.get("pending") and not server.get("ready")):
                raise AssertionError(f"{username}'s spawn failed: {model}")
            time.sleep(1)
        raise TimeoutError(f"{username}'s server was not ready within {timeout} s")

    def stop_server(self, username: str, timeout: float = 120) -> None:
        self.api("DELETE", f"/users/{username}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{username}").json()
            if not model.get("servers"):
                return
            time.sleep(1)
        raise TimeoutError(f"{username}'s server did not stop within {timeout} s")


def run_in_kernel(
    base_url: str, ca_file: str, username: str, token: str, code: str, timeout: float = 300
) -> str:
    """Start a kernel in the user's server, run `code` over the websocket, return stdout.

    Raises AssertionError with the traceback if the code fails.
    """
    http = requests.Session()
    http.trust_env = False
    http.verify = ca_file
    http.headers["Authorization"] = f"token {token}"
    api = f"{base_url.rstrip('/')}/user/{username}/api"
    kernel = http.post(f"{api}/kernels", json={"name": "tensorflow-gpu"}, timeout=60)
    kernel.raise_for_status()
    kernel_id = kernel.json()["id"]
    try:
        parsed = urlparse(base_url)
        ws_url = f"wss://{parsed.netloc}/user/{username}/api/kernels/{kernel_id}/channels"
        ws = websocket.create_connection(
            ws_url,
            header=[f"Authorization: token {token}"],
            sslopt={"ca_certs": ca_file, "cert_reqs": ssl.CERT_REQUIRED},
            timeout=timeout,
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "msg_type": "execute_request",
                            "username": username,
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
                )
            )
            stdout: list[str] = []
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
                    return "".join(stdout)
            raise TimeoutError(f"code did not finish within {timeout} s")
        finally:
            ws.close()
    finally:
        http.delete(f"{api}/kernels/{kernel_id}", timeout=60)
