"""Home disk usage (QUOTA_ROOT) in the GPU service: a student's own in api/me, everyone's in
the admin page's Homes table. The usage socket is a real Unix socket served by asyncio in
the test, answering in the diskquota service's protocol; hub OAuth and hub API are faked as
in test_service.

In Swarm mode each node's homes come through that node's real Docker proxy handler
(PROXY_POLICY=node) from the real diskquota usage handler on its socket (btrfs's figures
given); each node's engine answers its node ID. One node's diskquota service is down, one
proxy task never answers, one listed node has no proxy: the others' homes are shown, and
the page says which nodes were not read."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from labhub import diskquota, homemove, nodereads
from labhub.contract import volume_name_for
from labhub.diskquota import Usage
from labhub.dockerproxy import DiskUsage, handle, policy_from_env
from labhub.gpu.homes import Homes, user_names
from labhub.gpu.service import make_app
from labhub.gpu.store import Store
from labhub.swarmplacement import SwarmNode
from tornado import web
from tornado.testing import AsyncHTTPTestCase

from testsupport.dockerproxy import free_port

from .test_service import INVENTORY, USERS, FakeHubAuth, FakeHubUsers

pytestmark = pytest.mark.unit
NETWORK = "lab"
MIB = 2**20
# What the diskquota service answers on its usage socket: {volume: [used, limit (0: none)]}.
USAGE = {
    volume_name_for("ada", NETWORK): [30 * MIB, 100 * MIB],
    volume_name_for("root", NETWORK): [5 * MIB, 0],
    volume_name_for("gone", NETWORK): [60 * MIB, 100 * MIB],  # a user since deleted
    # Another stack's home on the same QUOTA_ROOT, named alike: never ada's, never listed.
    volume_name_for("ada", "other"): [90 * MIB, 100 * MIB],
}


def homes_cells(page: str) -> list[list[str]]:
    """The admin page's *Homes* table as text: user, used, limit, percent for each row."""
    table = page.split('<table id="homes">')[1].split("</table>")[0]
    rows = [row.split("</td>")[:4] for row in table.split("<tr data-user=")[1:]]
    return [[cell.rsplit(">", 1)[1] for cell in row] for row in rows]


class FakeHubUserList(web.RequestHandler):
    """GET /hub/api/users?offset=&limit=: one page of the hub's users, as JupyterHub pages."""

    def get(self) -> None:
        offset, limit = int(self.get_argument("offset")), int(self.get_argument("limit"))
        self.finish(json.dumps(list(USERS.values())[offset : offset + limit]))


class UsageSocketCase(AsyncHTTPTestCase):
    """The service with QUOTA_ROOT: its usage socket answers ``answer`` to every connection."""

    answer: bytes = json.dumps(USAGE).encode() + b"\n"

    def get_app(self) -> web.Application:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.socket = f"{tmp.name}/usage.sock"
        self.asked: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.asked.append(b"")
            writer.write(self.answer)
            await writer.drain()
            writer.close()

        server = self.io_loop.run_sync(lambda: asyncio.start_unix_server(answer, self.socket))
        self.addCleanup(server.close)
        app = make_app(
            Store(f"{tmp.name}/gpu.sqlite"), INVENTORY, FakeHubAuth(), "/services/gpus/",
            self.get_url("/hub/api/"), "service-token", homes=Homes(self.socket, NETWORK),
        )  # fmt: skip
        app.add_handlers(
            ".*",
            [(r"/hub/api/users", FakeHubUserList), (r"/hub/api/users/([^/]+)", FakeHubUsers)],
        )
        return app

    def get(self, path: str, user: str) -> tuple[int, str]:
        response = self.fetch(
            "/services/gpus/" + path, headers={"X-Test-User": user}, follow_redirects=False
        )
        return response.code, response.body.decode()


class HomesTest(UsageSocketCase):
    def test_a_student_reads_their_own_home_only(self) -> None:
        code, body = self.get("api/me", "ada")
        assert code == 200
        assert json.loads(body)["home"] == {"used_bytes": 30 * MIB, "limit_bytes": 100 * MIB}
        assert self.asked  # read from the socket, at the request
        # A home without a limit says so with null.
        home = json.loads(self.get("api/me", "root")[1])["home"]
        assert home == {"used_bytes": 5 * MIB, "limit_bytes": None}

    def test_the_admin_page_lists_every_home_most_used_first(self) -> None:
        code, page = self.get("", "root")
        assert code == 200
        cells = homes_cells(page)
        assert cells == [
            [volume_name_for("gone", NETWORK), "60.0 MiB", "100.0 MiB", "60.0%"],
            ["ada", "30.0 MiB", "100.0 MiB", "30.0%"],
            ["root", "5.0 MiB", "none", "n/a"],
        ]

    def test_a_student_never_gets_the_table(self) -> None:
        code, page = self.get("", "ada")
        assert code == 302 and "homes" not in page


class ServiceDownTest(UsageSocketCase):
    answer = b'{"error": "btrfs qgroup show: ERROR: cannot access"}\n'

    def test_api_me_answers_without_the_home_and_the_page_says_why(self) -> None:
        code, body = self.get("api/me", "ada")
        assert code == 200 and json.loads(body)["home"] is None
        page = self.get("", "root")[1]
        assert "Home usage not read: diskquota could not read the homes: btrfs qgroup" in page


async def node_engine(
    node: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A Swarm node's engine behind its proxy, on its Unix socket: `GET /info` (all the
    node proxy lets through here), saying which node it is."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"GET /info HTTP/1.1\r\n"), head
    body = json.dumps({"Swarm": {"NodeID": node, "LocalNodeState": "active"}}).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    writer.close()


NODE_PROXIES = "lab-node-proxy"
# Each node's QUOTA_ROOT, as its diskquota service reads it: {volume: Usage}.
ON_NODES = {
    "n1": {
        volume_name_for("ada", NETWORK): Usage(30 * MIB, 100 * MIB),
        volume_name_for("ada", "other"): Usage(90 * MIB, 100 * MIB),  # another stack's
    },
    "n2": {volume_name_for("gone", NETWORK): Usage(60 * MIB, 100 * MIB)},
    "n3": {volume_name_for("root", NETWORK): Usage(5 * MIB, 0)},  # its diskquota is down
}
# The proxies' task addresses: n1's, n2's, n3's, and one whose task never answers (n4's,
# which the manager lists as down).
ADDRESSES = {"127.0.0.2": "n1", "127.0.0.3": "n2", "127.0.0.4": "n3", "127.0.0.5": ""}
LISTED = [SwarmNode("n1", True, True), SwarmNode("n2", True, True),
          SwarmNode("n3", True, True), SwarmNode("n4", False, True)]  # fmt: skip


class SwarmHomesTest(AsyncHTTPTestCase):
    """The service with QUOTA_ROOT on a Swarm: every node's homes through its Docker proxy."""

    def get_app(self) -> web.Application:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        patch = pytest.MonkeyPatch()
        self.addCleanup(patch.undo)
        patch.setattr(nodereads, "BUDGET", 1.0)
        patch.setattr(diskquota, "homes_usage", lambda root: ON_NODES[root.name])
        patch.setattr(homemove, "swarm_nodes", lambda: LISTED)
        self.asked: list[tuple[str, int]] = []
        self.port = port = free_port()

        def task_addresses(service: str, on: int) -> list[str]:
            self.asked.append((service, on))
            return list(ADDRESSES)

        patch.setattr(nodereads, "task_addresses", task_addresses)
        check = policy_from_env(
            {"PROXY_POLICY": "node", "ALLOWED_IMAGES": "lab/workspace", "DOCKER_NETWORK": NETWORK}
        )
        for address, node in ADDRESSES.items():
            if not node:  # a task that takes the connection and never answers
                self.serve(lambda r, w: r.read(), address)
                continue
            self.serve_unix(
                lambda r, w, node=node: node_engine(node, r, w), f"{tmp.name}/{node}-engine.sock"
            )
            usage_socket = f"{tmp.name}/{node}-usage.sock"
            if node != "n3":
                self.serve_unix(
                    lambda _, w, root=Path("/", node): diskquota._answer_usage(root, w),
                    usage_socket,
                )
            self.serve(
                lambda r, w, node=node, usage_socket=usage_socket: handle(
                    check, f"{tmp.name}/{node}-engine.sock", DiskUsage(""), r, w,
                    uploads=True, usage_socket=usage_socket,
                ),
                address,
            )  # fmt: skip
        app = make_app(
            Store(f"{tmp.name}/gpu.sqlite"), INVENTORY, FakeHubAuth(), "/services/gpus/",
            self.get_url("/hub/api/"), "service-token",
            homes=Homes(f"{tmp.name}/no-usage.sock", NETWORK, NODE_PROXIES, port),
        )  # fmt: skip
        app.add_handlers(
            ".*",
            [(r"/hub/api/users", FakeHubUserList), (r"/hub/api/users/([^/]+)", FakeHubUsers)],
        )
        return app

    def serve(self, handler: Any, address: str) -> None:
        server = self.io_loop.run_sync(lambda: asyncio.start_server(handler, address, self.port))
        self.addCleanup(server.close)

    def serve_unix(self, handler: Any, path: str) -> None:
        server = self.io_loop.run_sync(lambda: asyncio.start_unix_server(handler, path))
        self.addCleanup(server.close)

    def get(self, path: str, user: str) -> tuple[int, str]:
        response = self.fetch(
            "/services/gpus/" + path, headers={"X-Test-User": user}, follow_redirects=False
        )
        return response.code, response.body.decode()

    def test_the_table_merges_the_nodes_that_answered_and_names_the_others(self) -> None:
        started = time.monotonic()
        code, page = self.get("", "root")
        assert code == 200 and time.monotonic() - started < 3  # one budget for every node
        assert self.asked == [(NODE_PROXIES, self.port)]
        cells = homes_cells(page)
        # n1's and n2's homes; the other stack's home on n1 never.
        assert cells == [
            [volume_name_for("gone", NETWORK), "60.0 MiB", "100.0 MiB", "60.0%"],
            ["ada", "30.0 MiB", "100.0 MiB", "30.0%"],
        ]
        warning = page.split('<p class="warning">Home usage not read: ')[1].split("</p>")[0]
        assert "node n3&#39;s Docker proxy at 127.0.0.4 gave no usage" in warning
        assert "answered 502" in warning and "no disk usage at" in warning
        hung = f"127.0.0.5 gave no usage: GET http://127.0.0.5:{self.port}/info: no answer"
        assert f"the node (unknown) whose Docker proxy at {hung}" in warning
        assert "Timeout during request; the budget is 1 s" in warning
        assert "node n4 (down): no Docker proxy answered for it" in warning
        assert not any(name in warning for name in ("127.0.0.2", "127.0.0.3", "node n1", "node n2"))

    def test_a_student_sees_their_home_from_its_node_and_none_when_it_is_not_read(
        self,
    ) -> None:
        code, body = self.get("api/me", "ada")
        assert code == 200
        assert json.loads(body)["home"] == {"used_bytes": 30 * MIB, "limit_bytes": 100 * MIB}
        with self.assertLogs("labhub.gpu.homes", "WARNING") as logged:
            code, body = self.get("api/me", "root")  # root's home is on n3
        assert code == 200 and json.loads(body)["home"] is None
        assert any("home usage of root not read: node n3" in line for line in logged.output)

    def test_no_node_proxy_found_is_said_not_a_500(self) -> None:
        def nothing(service: str, port: int) -> list[str]:
            raise socket.gaierror(-2, "Name or service not known")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nodereads, "task_addresses", nothing)
            code, page = self.get("", "root")
            assert code == 200
            assert f"no node&#39;s Docker proxy found at tasks.{NODE_PROXIES}" in page
            code, body = self.get("api/me", "ada")
            assert code == 200 and json.loads(body)["home"] is None


class NoQuotaTest(AsyncHTTPTestCase):
    def get_app(self) -> web.Application:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        app = make_app(
            Store(f"{tmp.name}/gpu.sqlite"), INVENTORY, FakeHubAuth(), "/services/gpus/",
            self.get_url("/hub/api/"), "service-token",
        )  # fmt: skip
        app.add_handlers(".*", [(r"/hub/api/users/([^/]+)", FakeHubUsers)])
        return app

    def test_without_quota_root_no_home_and_no_table(self) -> None:
        response = self.fetch("/services/gpus/api/me", headers={"X-Test-User": "ada"})
        assert json.loads(response.body)["home"] is None
        response = self.fetch("/services/gpus/", headers={"X-Test-User": "root"})
        code, page = response.code, response.body.decode()
        assert code == 200 and 'id="homes"' not in page and "<h2>Homes" not in page


def test_every_user_is_listed_page_by_page() -> None:
    everyone = [{"name": f"u{i}"} for i in range(450)]
    asked = []

    async def hub(method: str, path: str) -> tuple[int, Any]:
        asked.append(path)
        offset = int(path.split("offset=")[1].split("&")[0])
        return 200, everyone[offset : offset + 200]

    assert asyncio.run(user_names(hub)) == [u["name"] for u in everyone]
    assert asked == [f"users?offset={n}&limit=200" for n in (0, 200, 400)]
