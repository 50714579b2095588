"""labhub's Docker proxy as the tests run it: the real `python -m labhub.dockerproxy` on a
free loopback port, and requests sent to it as raw bytes, as an attacker holding the
hub's (or a node's) access to the proxy would send them."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from testsupport.waiting import wait_until

HUB_SOURCE = Path(__file__).parents[1] / "hub"


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_request(
    port: int, method: str, target: str, body: bytes = b"", chunked: bool = False
) -> tuple[int, str]:
    """One request on a fresh connection to the proxy on `port`: its status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            connection.request(method, target, body=iter([body]), encode_chunked=True)
        else:
            headers = {"Content-Type": "application/json"} if body else {}
            connection.request(method, target, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def proxy_answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        return raw_request(port, "GET", "/v1.41/_ping")[0] == 200
    return False


@contextlib.contextmanager
def running_proxy(wrap: Sequence[str] = (), **settings: str) -> Iterator[int]:
    """The proxy with these settings (PROXY_POLICY, DOCKER_SOCKET, ALLOWED_IMAGES...) and
    this checkout's labhub, up (it answers /_ping) until the block ends; the end of its
    log is printed afterwards (pytest shows it when a test fails). ``wrap``: a command
    prefix it runs under (a test node's mount namespace, tests/swarm.py)."""
    port = free_port()
    process = subprocess.Popen(
        [*wrap, sys.executable, "-m", "labhub.dockerproxy"],
        env={
            **os.environ,
            "PYTHONPATH": str(HUB_SOURCE),
            **settings,
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the proxy exited with {process.returncode}")
        return proxy_answers(port)

    try:
        wait_until(answers, 30, "the Docker proxy to answer /_ping", interval=0.2)
        yield port
    finally:
        process.terminate()
        print(process.communicate(timeout=30)[0].decode(errors="replace")[-4000:])
