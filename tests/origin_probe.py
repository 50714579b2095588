"""A page a student serves from their own server, and a real browser visiting it.

Student bob starts a web server in his container and shares the link that
jupyter-server-proxy gives it, /user/bob/proxy/<port>/. An admin (who may open any
user's server) follows it. When clicked, the page opens the hub's home page in a
window, reads the XSRF token from it and asks the hub's API for a new token of the
visitor's. If the page shares the hub's origin (path mode), the browser lets it; on
its own origin (subdomain mode) the same-origin policy stops it at the first read.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from stacks import Stack

from testsupport.browsing import ERROR_PAGE_URL, despite_network_changes
from testsupport.hubclient import HubClient

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PORT = 8765
# Visits of the page at most, when one fails for reasons of this test host.
VISITS = 4
# Where Chromium is when a form's answer was lost to a network change.
ERROR_PAGE = re.compile("^" + re.escape(ERROR_PAGE_URL))
# {hub} is the hub's own origin, e.g. https://lab.example.edu
PAGE = """<!doctype html>
<title>bob's page</title>
<button id="go">show my plots</button>
<pre id="out">waiting</pre>
<script>
const out = document.getElementById("out");
document.getElementById("go").addEventListener("click", () => {
  const hub = window.open("{hub}/hub/home");
  const started = Date.now();
  const poll = setInterval(async () => {
    let data;
    try {
      data = hub.jhdata;  // a cross-origin read throws here
    } catch (error) {
      clearInterval(poll);
      out.textContent = JSON.stringify({blocked: String(error)});
      hub.close();
      return;
    }
    if (!data || !data.xsrf_token) {
      if (Date.now() - started > 90000) {
        clearInterval(poll);
        out.textContent = JSON.stringify({blocked: "the hub page did not load"});
      }
      return;
    }
    clearInterval(poll);
    const made = await fetch("{hub}/hub/api/users/" + data.user + "/tokens", {
      method: "POST",
      headers: {"X-XSRFToken": data.xsrf_token, "Content-Type": "application/json"},
      body: JSON.stringify({note: "made by bob's page"}),
    });
    const body = await made.json();
    out.textContent = JSON.stringify(
      {user: data.user, status: made.status, token: Boolean(body.token)});
    hub.close();
  }, 200);
});
</script>
"""
SERVE = """
import pathlib, subprocess, sys
folder = pathlib.Path.home() / "origin-probe"
folder.mkdir(exist_ok=True)
(folder / "index.html").write_text({page!r})
subprocess.Popen(
    [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1",
     "--directory", str(folder)],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print("serving")
"""


def serving_code(hub_origin: str) -> str:
    """Python for bob's kernel: start his web server with the page."""
    return SERVE.format(page=PAGE.replace("{hub}", hub_origin), port=PORT)


def admin_follows_the_link(stack: Stack, page_url: str, server_cert: Path) -> dict[str, Any]:
    """Chromium logs in as admin, opens `page_url`, clicks; returns what the page saw.

    On this shared, loaded test host Chromium aborts requests when other containers
    change the host's interfaces (ERR_NETWORK_CHANGED, which a laptop never sees), and
    pages can be slow. The admin's login and the opening of the page are tried again
    for such an abort (testsupport.browsing); a visit that failed, or whose page saw
    such an abort once clicked, is made again in a fresh browser context, 5 s later,
    VISITS times at most. A retry cannot make either test pass wrongly: each needs one
    clean click with its own expected result.
    """
    from browser import chromium
    from playwright.sync_api import Error

    hub_origin, admin = stack.base_url, stack.admins[0]
    admin_password = stack.password_of(admin)
    with chromium(stack, server_cert) as browser:
        failed: list[str] = []
        for attempt in range(VISITS):
            if attempt:
                time.sleep(5)
            context = browser.new_context()
            failed.clear()
            context.on("requestfailed", lambda request: failed.append(str(request.failure)))
            try:
                result = _visit(
                    context.new_page(), hub_origin, page_url, admin, admin_password, failed
                )
            except Error:
                if attempt == VISITS - 1:
                    raise
                continue
            finally:
                context.close()
            if not any("ERR_NETWORK_CHANGED" in f for f in failed):
                return result
        raise AssertionError(f"the network changed during every visit: {failed}")


def _visit(
    page: Any,
    hub_origin: str,
    page_url: str,
    admin: str,
    admin_password: str,
    failed: list[str],
) -> dict[str, Any]:
    """The admin logs in, opens `page_url` and clicks; what the page saw. `failed`: the
    context's failed requests, from the click on."""
    from playwright.sync_api import expect

    page.set_default_timeout(120_000)

    def log_in() -> None:
        page.goto(f"{hub_origin}/hub/login?next=/hub/home")
        if "/hub/login" in page.url:  # else a try before logged in; its answer was lost
            page.fill("#username_input", admin)
            page.fill("#password_input", admin_password)
            page.click("#login_submit")
            # Chromium's error page, if it lost the answer: tried again, not waited on.
            expect(page).not_to_have_url(ERROR_PAGE)
        page.wait_for_url("**/hub/home")

    def open_the_page() -> None:
        page.goto(page_url)
        # Opening another user's server asks the visitor to authorize it once.
        authorize = page.locator("button:has-text('Authorize')")
        if authorize.count():
            authorize.first.click()
            expect(page).not_to_have_url(ERROR_PAGE)
        page.wait_for_selector("#go")

    despite_network_changes(log_in)
    despite_network_changes(open_the_page)
    # What the page does from here on is the finding: a request lost now spoils the visit.
    failed.clear()
    # Tried again only if the click itself failed; either test's result holds for a
    # second click (one more window, token or refusal).
    despite_network_changes(lambda: page.click("#go"))
    page.wait_for_function("document.getElementById('out').textContent !== 'waiting'")
    result: dict[str, Any] = json.loads(page.inner_text("#out"))
    return result


def forget_tokens_made_by_the_page(admin: HubClient) -> list[str]:
    """Remove the admin tokens the page made; return their ids."""
    tokens = admin.api("GET", "/users/admin/tokens").json()["api_tokens"]
    for token in tokens:
        if token.get("note") == "made by bob's page":
            admin.api("DELETE", f"/users/admin/tokens/{token['id']}")
    return [token["id"] for token in tokens if token.get("note") == "made by bob's page"]
