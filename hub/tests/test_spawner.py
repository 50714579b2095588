"""LabSpawner's own additions: a fine-grained wait for a new server (against real
sockets on loopback) and a pool of threads for Docker calls."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from labhub.spawner import LabSpawner, wait_until_answering
from tornado import web
from tornado.httpserver import HTTPServer

pytestmark = pytest.mark.unit


class Status(web.RequestHandler):
    def initialize(self, status: int) -> None:
        self.status = status

    def get(self) -> None:
        self.set_status(self.status)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_later(port: int, delay: float, status: int) -> HTTPServer:
    await asyncio.sleep(delay)
    server = HTTPServer(web.Application([(r"/user/ann/", Status, {"status": status})]))
    server.listen(port, "127.0.0.1")
    return server


@pytest.mark.parametrize("status", [200, 302, 404])
def test_returns_once_a_late_server_answers(status: int) -> None:
    async def scenario() -> bool:
        port = unused_port()
        starting = asyncio.create_task(serve_later(port, 0.5, status))
        answered = await wait_until_answering(f"http://127.0.0.1:{port}/user/ann/", budget=20)
        (await starting).stop()
        return answered

    assert asyncio.run(scenario()) is True


def test_gives_up_at_the_budget_on_silence_or_server_errors() -> None:
    async def scenario() -> tuple[bool, bool]:
        silent = await wait_until_answering(f"http://127.0.0.1:{unused_port()}/", budget=0.5)
        port = unused_port()
        failing = await serve_later(port, 0, 503)
        erroring = await wait_until_answering(f"http://127.0.0.1:{port}/user/ann/", budget=0.5)
        failing.stop()
        return silent, erroring

    assert asyncio.run(scenario()) == (False, False)


def test_docker_calls_run_concurrently_in_one_shared_pool() -> None:
    """A slow Docker call (a `docker stop`) must not hold up another server's calls."""
    LabSpawner._shared_executor = None
    first, second = LabSpawner(docker_threads=3), LabSpawner()
    assert first.executor is second.executor
    stop_finishes = threading.Event()
    slow = [first.executor.submit(stop_finishes.wait, 30) for _ in range(2)]
    try:
        # With DockerSpawner's single thread this would wait behind the two slow calls.
        assert second.executor.submit(lambda: "answered").result(timeout=10) == "answered"
    finally:
        stop_finishes.set()
    assert all(future.result(timeout=10) for future in slow)
