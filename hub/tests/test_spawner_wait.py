"""LabSpawner's fine-grained wait for a new server, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest
from labhub.spawner import wait_until_answering
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
