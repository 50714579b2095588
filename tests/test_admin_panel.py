"""An admin makes a student admin in JupyterHub's admin panel, in a real browser, and
the hub stays healthy: the user keeps their name, the admin list loads, the user logs in
again. Guards JupyterHub 6.1.1's PATCH bug (labhub.apiguard): the panel always sends the
unchanged name, which set it to NULL, blanked the panel and broke the idle culler."""

from __future__ import annotations

import pytest
from browser import ARTIFACTS, chromium, needs_chromium
from stacks import Stack

pytestmark = pytest.mark.e2e


@needs_chromium
def test_ticking_admin_in_the_panel_keeps_the_hub_healthy(stack: Stack, username: str) -> None:
    from playwright.sync_api import expect

    stack.login(username)  # the student exists, as after their first login
    admin_name = stack.value("ADMIN_USERS").split(",")[0]
    admin = stack.login(admin_name)
    with chromium(stack) as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            stack.browser_login(page, admin_name, next_url="/hub/admin")
            row = page.locator("tr.user-row", has_text=username)
            row.get_by_role("button", name="Edit User").click()
            page.locator("#admin-check").check()
            page.get_by_test_id("submit").click()
            # Back on the list (the panel reloads it): it still shows the user by name.
            expect(page.locator("tr.user-row", has_text=username)).to_be_visible(timeout=30_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "admin-panel-after-edit.png"))

    model = admin.api("GET", f"/users/{username}").json()
    assert model["name"] == username and model["admin"] is True, model
    # What the idle culler asks every minute: every user, each with a name.
    listing = admin.api("GET", "/users")
    assert listing.status_code == 200, listing.text[:300]
    assert all(user["name"] for user in listing.json())
    assert "setting name=None" not in stack.compose("logs", "--no-color", "hub").stdout
    # The student logs in again, now with the admin flag set in the panel.
    again = stack.login(username)
    assert again.api("GET", "/user").json()["name"] == username
