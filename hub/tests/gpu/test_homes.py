"""Home disk usage (QUOTA_ROOT) in the GPU service: a student's own in api/me, everyone's in
the admin page's Homes table. The usage socket is a real Unix socket served by asyncio in
the test, answering in the diskquota service's protocol; hub OAuth and hub API are faked as
in test_service."""

from __future__ import annotations

import asyncio
import json
import tempfile
from typing import Any

import pytest
from labhub.contract import volume_name_for
from labhub.gpu.homes import Homes, user_names
from labhub.gpu.service import make_app
from labhub.gpu.store import Store
from tornado import web
from tornado.testing import AsyncHTTPTestCase

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
        table = page.split('<table id="homes">')[1].split("</table>")[0]
        rows = [row.split("</td>")[:4] for row in table.split("<tr data-user=")[1:]]
        cells = [[cell.rsplit(">", 1)[1] for cell in row] for row in rows]
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
