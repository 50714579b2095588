"""The admin page as a browser gets it: JupyterHub's real HubOAuth login (PKCE) against a
fake hub, then safe HTML with a Content-Security-Policy. Through a real browser:
tests/test_gpu_page.py."""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from jupyterhub.services.auth import HubOAuth
from labhub.gpu.api import CONTENT_SECURITY_POLICY
from labhub.gpu.inventory import Device
from labhub.gpu.scheduler import GpuRequest, Holder
from labhub.gpu.service import make_app
from labhub.gpu.store import Store
from tornado import web
from tornado.httpclient import HTTPResponse
from tornado.testing import AsyncHTTPTestCase

from .conftest import NOW

pytestmark = pytest.mark.unit

PREFIX = "/services/gpus/"
INVENTORY = (Device(id="0", model="Test A100", memory_mib=40960),)
# A name the hub accepts; in the old page's onclick it ran as script.
QUOTING_NAME = 'q");document.title="xss";("'
CHALLENGES: dict[str, str] = {}  # code -> the PKCE challenge the login redirect sent


class FakeHubToken(web.RequestHandler):
    """The hub's token endpoint: like JupyterHub, it wants the verifier of the challenge."""

    def check_xsrf_cookie(self) -> None:
        return None

    def post(self) -> None:
        code = self.get_body_argument("code")
        verifier = self.get_body_argument("code_verifier", None)
        if verifier is None:
            raise web.HTTPError(400, "Code verifier required")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != CHALLENGES.get(code):
            raise web.HTTPError(400, "code verifier does not match the challenge")
        self.finish({"access_token": "admin-oauth-token", "token_type": "Bearer"})


class FakeHubUser(web.RequestHandler):
    def get(self) -> None:
        if self.request.headers.get("Authorization") != "token admin-oauth-token":
            raise web.HTTPError(403)
        self.finish({"kind": "user", "name": "root", "admin": True, "groups": [], "scopes": []})


def cookies_of(response: HTTPResponse, jar: SimpleCookie) -> SimpleCookie:
    for header in response.headers.get_list("Set-Cookie"):
        jar.load(header)
    return jar


def cookie_header(jar: SimpleCookie) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())}


class PageTest(AsyncHTTPTestCase):
    def get_app(self) -> web.Application:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.store = Store(f"{self.tmp.name}/gpu.sqlite")
        hub_api = self.get_url("/hub/api/")
        hub_auth = HubOAuth(
            api_url=hub_api,
            api_token="service-token",
            oauth_client_id="service-gpus",
            oauth_redirect_uri=self.get_url(PREFIX + "oauth_callback"),
            base_url=PREFIX,
            hub_prefix="/hub/",
            cache_max_age=60,
        )
        app = make_app(self.store, INVENTORY, hub_auth, PREFIX, hub_api, "service-token")
        app.add_handlers(
            ".*", [("/hub/api/oauth2/token", FakeHubToken), ("/hub/api/user", FakeHubUser)]
        )
        return app

    def browser_login(self) -> SimpleCookie:
        """The browser's way in: redirect to the hub, the hub's code back to the callback."""
        jar: SimpleCookie = SimpleCookie()
        start = self.fetch(PREFIX, follow_redirects=False)
        assert start.code == 302
        query = parse_qs(urlsplit(start.headers["Location"]).query)
        assert query["code_challenge_method"] == ["S256"]
        CHALLENGES["the-code"] = query["code_challenge"][0]
        cookies_of(start, jar)
        state = query["state"][0]
        callback = self.fetch(
            PREFIX + "oauth_callback?" + urlencode({"code": "the-code", "state": state}),
            headers=cookie_header(jar),
            follow_redirects=False,
        )
        assert callback.code == 302, callback.body.decode()[:500]
        assert callback.headers["Location"] == PREFIX
        return cookies_of(callback, jar)

    def get_page(self, jar: SimpleCookie) -> tuple[HTTPResponse, str]:
        response = self.fetch(PREFIX, headers=cookie_header(jar), follow_redirects=False)
        return response, response.body.decode()

    def test_browser_login_reaches_the_page(self) -> None:
        # The callback must finish the login with the verifier the redirect's HubOAuth made;
        # with another HubOAuth object the hub answers "Code verifier required" (a 500 here).
        response, page = self.get_page(self.browser_login())
        assert response.code == 200, page[:500]
        assert "Test A100" in page

    @pytest.mark.timeout(60)
    def test_the_pages_buttons_work_with_the_browser_cookie(self) -> None:
        # A cookie-authenticated POST, as the page's script sends it: HubOAuth checks XSRF
        # while it reads the cookie, calling back into the handler (once this deadlocked).
        self.store.allocate(INVENTORY, Holder("ada"), GpuRequest(whole=1), NOW)
        jar = self.browser_login()
        response, page = self.get_page(jar)
        cookies_of(response, jar)
        [xsrf] = re.findall(r'data-xsrf="([^"]+)"', page)
        headers = {
            **cookie_header(jar),
            "X-XSRFToken": xsrf,
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Site": "same-origin",
        }
        drain = self.fetch(
            PREFIX + "api/devices/0/drain", method="POST", body='{"drained": true}', headers=headers
        )
        assert drain.code == 200, drain.body.decode()
        assert self.store.audit()[0].actor == "root"
        # Without the page's XSRF token the cookie is not enough.
        del headers["X-XSRFToken"]
        forged = self.fetch(
            PREFIX + "api/devices/0/drain", method="POST", body="{}", headers=headers
        )
        assert forged.code == 403

    def test_page_sends_csp_and_nosniff(self) -> None:
        response, _ = self.get_page(self.browser_login())
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        for directive in ("script-src 'self'", "frame-ancestors 'self'", "base-uri 'none'"):
            assert directive in CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"

    def test_quoting_names_stay_text_and_the_page_has_no_inline_script(self) -> None:
        for name in (QUOTING_NAME, "<img src=x onerror=alert(1)>"):
            self.store.allocate(INVENTORY, Holder(name), GpuRequest(whole=1), NOW)
            self.store.release(name, NOW)
        self.store.allocate(INVENTORY, Holder(QUOTING_NAME), GpuRequest(whole=1), NOW)
        response, page = self.get_page(self.browser_login())
        assert response.code == 200
        # No event handler attributes, no inline script or style: the CSP would refuse them.
        assert not re.search(r"\son\w+\s*=", page.replace("onerror=alert(1)", ""))
        [script] = re.findall(r"<script[^>]*>", page)
        assert re.fullmatch(rf'<script src="{PREFIX}static/gpus.js\?v=\w+" defer>', script)
        assert "<style" not in page and "style=" not in page
        # Each name is there only as escaped text, in the button's data attribute too.
        escaped = "q&#34;);document.title=&#34;xss&#34;;(&#34;"
        assert f'data-holder="{escaped}"' in page and f"revoke {escaped}</button>" in page
        assert QUOTING_NAME not in page
        assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page

    def test_script_and_style_are_served_with_their_types_and_nosniff(self) -> None:
        for name, kind in (("gpus.js", "javascript"), ("gpus.css", "text/css")):
            response = self.fetch(PREFIX + "static/" + name)
            assert response.code == 200
            assert kind in response.headers["Content-Type"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        # The script builds no markup from data: names reach the page as text only.
        script = self.fetch(PREFIX + "static/gpus.js").body.decode()
        assert "innerHTML" not in script and "eval(" not in script

    def test_login_without_the_verifier_is_refused_by_the_fake_hub(self) -> None:
        # The fake hub is strict like JupyterHub: the test above can fail on a lost verifier.
        response = self.fetch(
            "/hub/api/oauth2/token", method="POST", body=urlencode({"code": "the-code"})
        )
        assert response.code == 400
