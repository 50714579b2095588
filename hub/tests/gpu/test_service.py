"""Admin service handlers with tornado's test client; hub OAuth and hub API are faked."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub.gpu.inventory import Device
from labhub.gpu.profiles import Profile
from labhub.gpu.quota import QuotaPolicy
from labhub.gpu.reclaim import Rules
from labhub.gpu.scheduler import GpuRequest, Holder
from labhub.gpu.service import make_app
from labhub.gpu.store import Store
from tornado import web
from tornado.testing import AsyncHTTPTestCase

from testsupport.fuzzing import FUZZ, json_value

from .conftest import NOW

pytestmark = pytest.mark.unit

USERS = {
    "root": {"name": "root", "admin": True, "groups": []},
    "ada": {"name": "ada", "admin": False, "groups": ["nlp"]},
}
INVENTORY = (
    Device(id="0", model="Test A100", memory_mib=40960),
    Device(id="1", model="Test A100", memory_mib=40960),
)


class FakeHubAuth:
    """Identifies the user named in the X-Test-User header, as HubOAuth would from a cookie."""

    access_scopes = None
    login_url = "/hub/login"
    base_url = "/services/gpus/"

    def check_xsrf_cookie(self, handler: web.RequestHandler) -> None:
        web.RequestHandler.check_xsrf_cookie(handler)

    def get_user(self, handler: web.RequestHandler) -> dict[str, Any] | None:
        return USERS.get(handler.request.headers.get("X-Test-User", ""))

    def _persist_url_token_if_set(self, handler: web.RequestHandler) -> None:
        return None


class FakeHubApi(web.RequestHandler):
    """DELETE /hub/api/users/NAME/server; token-authenticated like the hub, so no xsrf."""

    def check_xsrf_cookie(self) -> None:
        return None

    def delete(self, user: str) -> None:
        self.application.settings["deleted"].append((user, self.request.headers["Authorization"]))
        self.set_status(202)


class FakeHubUsers(web.RequestHandler):
    """GET /hub/api/users/NAME: the user's model with the profile each server was started with."""

    def get(self, user: str) -> None:
        if user not in USERS:
            raise web.HTTPError(404)
        server = {"ready": True, "user_options": {"profile": "gpu-1"}}
        self.finish({**USERS[user], "servers": {"": server}})


ACTION_FIELDS = ("user", "group", "drained", "hours")
PROFILES = (Profile(slug="gpu-1", display_name="One A100", gpu=GpuRequest(whole=1)),)
RULES = Rules(1800, 300, 3600, 1800, 1, 0, nvml=True)


class ServiceTest(AsyncHTTPTestCase):
    def get_app(self) -> web.Application:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.store = Store(f"{self.tmp.name}/gpu.sqlite")
        app = make_app(
            self.store, INVENTORY, FakeHubAuth(), "/services/gpus/",
            self.get_url("/hub/api/"), "service-token", QuotaPolicy(user_hours=10),
            rules=RULES, profiles=PROFILES,
        )  # fmt: skip
        app.settings["deleted"] = []
        app.add_handlers(
            ".*",
            [
                (r"/hub/api/users/([^/]+)/server", FakeHubApi),
                (r"/hub/api/users/([^/]+)", FakeHubUsers),
            ],
        )
        return app

    def call(self, path: str, user: str, body: object = None) -> tuple[int, Any]:
        headers = {"X-Test-User": user}
        if body is not None:
            self.fetch("/services/gpus/api/devices", headers=headers)  # xsrf cookie
            headers.update({"X-XSRFToken": "token", "Cookie": "_xsrf=token"})
        response = self.fetch(
            "/services/gpus/" + path,
            method="GET" if body is None else "POST",
            body=None if body is None else json.dumps(body),
            headers=headers,
            follow_redirects=False,
        )
        text = response.body.decode()
        return response.code, json.loads(text) if text.startswith("{") else text

    def test_non_admins_get_403_everywhere(self) -> None:
        for path in ("api/devices", "api/usage", "api/audit"):
            code, body = self.call(path, "ada")
            assert code == 403, path
            assert "not a JupyterHub admin" in body["message"]
        # The admin page sends a student to their own GPU session page instead.
        response = self.fetch(
            "/services/gpus/", headers={"X-Test-User": "ada"}, follow_redirects=False
        )
        assert (response.code, response.headers["Location"]) == (302, "/services/gpus/me")
        assert self.call("api/devices/0/drain", "ada", {"drained": True})[0] == 403
        assert self.call("api/devices", "")[0] == 403

    def test_a_student_reads_their_own_gpu_session_only(self) -> None:
        code, body = self.call("api/me", "ada")
        assert (code, body["servers"], body["gpu_hours_left"]) == (200, {}, 10)
        assert body["utilisation_rule"] == {"enabled": True, "idle_minutes": 30, "warn_minutes": 5}
        self.store.allocate(INVENTORY, Holder("ada"), GpuRequest(whole=1), NOW)
        self.store.allocate(INVENTORY, Holder("root"), GpuRequest(whole=1), NOW)
        code, body = self.call("api/me", "ada")
        assert body["user"] == "ada" and list(body["servers"]) == [""]
        entry = body["servers"][""]
        assert entry["profile"] == "gpu-1" and entry["display_name"] == "One A100"
        assert [d["model"] for d in entry["devices"]] == ["Test A100"]
        assert entry["length_stop_at"] == "2025-11-24T10:00:00Z"
        assert entry["extensions_left"] == 1 and entry["idle_since"] is None

    def test_a_student_extends_once_then_is_refused(self) -> None:
        assert self.call("api/me/extend", "ada", {"server": ""})[0] == 404
        self.store.allocate(INVENTORY, Holder("ada"), GpuRequest(whole=1), NOW)
        code, entry = self.call("api/me/extend", "ada", {"server": ""})
        assert code == 200, entry
        assert entry["length_stop_at"] == "2025-11-24T10:30:00Z"
        assert entry["extensions_left"] == 0
        code, body = self.call("api/me/extend", "ada", {"server": ""})
        assert code == 409 and "no extension left" in body["error"]
        assert self.call("api/me/extend", "ada", {"server": 3})[0] == 400
        extend = self.store.audit()[0]
        assert (extend.actor, extend.action, extend.detail["holder"]) == ("ada", "extend", "ada")

    def test_a_students_page_shows_the_session_and_extends_it(self) -> None:
        code, page = self.call("me", "ada")
        assert code == 200 and "None of your servers holds a GPU." in page
        assert "GPU-hours left this week: 10.0" in page
        self.store.allocate(INVENTORY, Holder("ada"), GpuRequest(whole=1), NOW)
        self.store.allocate(INVENTORY, Holder("root"), GpuRequest(whole=1), NOW)
        page = self.call("me", "ada")[1]
        assert "One A100" in page and "session ends at 2025-11-24T10:00:00Z" in page
        assert 'data-action="extend" data-server=""' in page
        assert "root" not in page  # another user's GPU is not shown
        # The page's button: a cookie-authenticated POST, with the XSRF token.
        assert self.call("api/me/extend", "ada", {"server": ""})[0] == 200
        page = self.call("me", "ada")[1]
        assert "0 extension(s) left" in page and 'data-action="extend"' not in page

    def test_anonymous_page_redirects_to_hub_login(self) -> None:
        response = self.fetch("/services/gpus/", follow_redirects=False)
        assert response.code == 302
        assert response.headers["Location"].startswith("/hub/login")

    def test_admin_sees_devices_and_page(self) -> None:
        self.store.allocate(INVENTORY, Holder("ada"), GpuRequest(whole=1), NOW)
        code, body = self.call("api/devices", "root")
        assert code == 200
        [holder] = body["devices"][0]["holders"]
        assert holder.pop("reclaim")["length_stop_at"] == "2025-11-24T10:00:00Z"
        assert holder == {"holder": "ada", "user": "ada", "since": NOW.isoformat()}
        assert body["devices"][1]["holders"] == []
        code, page = self.call("", "root")
        assert code == 200 and "Test A100" in page and "revoke ada" in page
        # The rules in force, and when each holder's session ends.
        assert "utilisation rule on: a holder whose GPU shows no use for 30 min" in page
        assert "idle kernels are kept (KERNEL_IDLE_TIMEOUT=0)" in page
        assert "session ends 2025-11-24T10:00:00Z (1 extension(s) left)" in page

    def test_the_page_shows_kernel_culling_as_the_servers_apply_it(self) -> None:
        reclaimer = self._app.settings["gpu_reclaimer"]
        for connected, tabs in ((True, "even with"), (False, "unless")):
            reclaimer.rules = replace(
                RULES, kernel_idle_timeout_s=900, kernel_cull_connected=connected
            )
            page = self.call("", "root")[1]
            assert f"shut down after 900 s, {tabs} a notebook tab" in page
            assert self.call("api/devices", "root")[1]["rules"]["kernel_idle_seconds"] == 900

    def test_the_page_and_api_say_when_the_utilisation_rule_is_off(self) -> None:
        reclaimer = self._app.settings["gpu_reclaimer"]
        reclaimer.rules = replace(RULES, nvml=False)
        page = self.call("", "root")[1]
        assert "utilisation rule off: no NVML (nvidia-smi) on this host" in page
        rule = self.call("api/me", "ada")[1]["utilisation_rule"]
        assert rule == {"enabled": False, "reason": "no NVML (nvidia-smi) on this host"}
        assert self.call("api/devices", "root")[1]["rules"]["utilisation"] == rule

    def test_reserve_drain_and_audit(self) -> None:
        assert self.call("api/devices/0/reserve", "root", {"group": "nlp"})[1] == {
            "device": "0",
            "reserved_for": "group nlp",
        }
        assert self.call("api/devices/1/drain", "root", {"drained": True})[0] == 200
        code, body = self.call("api/devices/9/drain", "root", {"drained": True})
        assert code == 404 and "known devices: 0, 1" in body["message"]
        code, body = self.call("api/devices/0/reserve", "root", {"user": "a", "group": "b"})
        assert code == 400
        entries = self.call("api/audit", "root")[1]["entries"]
        assert [(e["actor"], e["action"]) for e in entries] == [
            ("root", "drain"),
            ("root", "reserve"),
        ]

    def test_revoke_stops_the_server_through_the_hub_api(self) -> None:
        self.store.allocate(INVENTORY, Holder("ada"), GpuRequest(whole=1), NOW)
        code, body = self.call("api/holders/ada/revoke", "root", {})
        assert (code, body) == (202, {"holder": "ada", "stopping": True})
        assert self._app.settings["deleted"] == [("ada", "token service-token")]
        assert self.store.audit()[0].action == "revoke"
        assert self.call("api/holders/nobody/revoke", "root", {})[0] == 404

    def test_a_body_that_is_not_utf8_gets_400(self) -> None:
        self.fetch("/services/gpus/api/devices", headers={"X-Test-User": "root"})
        headers = {"X-Test-User": "root", "X-XSRFToken": "token", "Cookie": "_xsrf=token"}
        for path in ("devices/0/reserve", "devices/fz%00/reserve"):
            response = self.fetch(
                "/services/gpus/api/" + path, method="POST", body=b"\x80", headers=headers
            )
            assert response.code in (400, 404), (path, response.code)
            assert json.loads(response.body)["message"], path

    def test_quota_topup_and_reset(self) -> None:
        assert self.call("api/quota/user:ada/topup", "root", {"hours": 3})[0] == 200
        assert self.call("api/quota/ada/topup", "root", {"hours": 3})[0] == 400
        assert self.call("api/quota/user:ada/topup", "root", {"hours": -1})[0] == 400
        assert self.call("api/quota/user:ada/reset", "root", {})[0] == 200
        assert [e.action for e in self.store.audit()] == ["reset", "topup"]

    # Whatever an admin sends, the API answers 2xx/4xx with a JSON message, never 5xx.
    @FUZZ
    @given(
        path=st.sampled_from(
            [
                "api/devices/{}/reserve",
                "api/devices/{}/drain",
                "api/holders/{}/revoke",
                "api/quota/{}/topup",
                "api/quota/{}/reset",
                "api/audit?limit={}",
            ]
        ),
        target=st.sampled_from(["0", "1", "user:fz", "group:fz", "-1", "%20"])
        | st.text(alphabet=st.characters(categories=("L", "N", "P")), max_size=20),
        payload=st.one_of(
            json_value,
            st.dictionaries(st.sampled_from(ACTION_FIELDS), json_value, max_size=2),
        ),
    )
    def test_admin_api_never_answers_5xx(self, path: str, target: str, payload: Any) -> None:
        url = path.format(quote(target, safe=":"))
        if url.startswith("api/audit"):
            code, body = self.call(url, "root")
        else:
            code, body = self.call(url, "root", payload)
        assert code < 500, (url, payload, body)
        assert isinstance(body, dict) and body, (url, payload, body)
