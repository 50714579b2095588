"""A real browser (Debian's Chromium driven by Playwright) logs in through nginx and
lands in JupyterLab with the MNIST notebook open. The screenshot is kept in
test-artifacts/ for a person to look at."""

from __future__ import annotations

import functools

import pytest
from browser import ARTIFACTS, chromium, needs_chromium, open_the_notebook
from stacks import Stack

from testsupport.browsing import despite_network_changes

pytestmark = pytest.mark.e2e


@needs_chromium
def test_student_logs_in_and_sees_the_mnist_notebook(stack: Stack, username: str) -> None:
    from playwright.sync_api import expect

    # Start the server before the browser opens: creating the container adds a network
    # interface on this host, and Chromium aborts in-flight requests when interfaces
    # change (ERR_NETWORK_CHANGED), which a student's laptop never sees.
    stack.login(username).start_server(username)
    with chromium(stack) as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        failed: list[str] = []
        page.on(
            "requestfailed",
            lambda request: failed.append(f"{request.method} {request.url}: {request.failure}"),
        )
        page.on(
            "response",
            lambda response: (
                failed.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        try:
            open_the_notebook(stack, page, username, "TensorFlow-GPU")
            expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible()
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-jupyterlab.png"))
            (ARTIFACTS / "browser-failed-requests.txt").write_text("\n".join(failed))
    stack.login(username).stop_server(username)


@needs_chromium
def test_a_second_browser_cannot_enter_a_students_account(stack: Stack, username: str) -> None:
    """Issue 14: a classmate's browser, with what the class shares, gets neither the
    student's session nor the file in their home."""
    from playwright.sync_api import expect

    owner = stack.login(username)
    owner.start_server(username)
    marker = f"ONLY-{username}"
    stack.run(owner, username, f"open('/home/jovyan/secret.txt', 'w').write({marker!r})")
    file_url = stack.base_url + f"/user/{username}/files/secret.txt"
    assert marker in owner.session.get(file_url, timeout=60).text  # there to be stolen
    with chromium(stack) as browser:
        page = browser.new_page()

        def log_in_refused(password: str) -> None:
            page.goto(stack.base_url + "/hub/login")
            page.fill("#username_input", username)
            page.fill("#password_input", password)
            page.click("#login_submit")
            expect(page.locator(".login_error")).to_contain_text("Invalid username or password")

        def sign_up_refused() -> None:
            page.goto(stack.base_url + "/hub/signup")
            page.fill("#username_input", username)
            page.fill("#password_input", "the-classmates-password")
            page.fill("#password_confirmation_input", "the-classmates-password")
            page.fill("#signup_code_input", stack.value("SIGNUP_CODE"))
            page.click("#signup_submit")
            expect(page.locator("#signup_result")).to_contain_text("already in use")

        for password in (stack.value("SIGNUP_CODE"), "wrong-password-123"):
            despite_network_changes(functools.partial(log_in_refused, password))
            despite_network_changes(lambda: page.goto(file_url))
            assert page.url.startswith(stack.base_url + "/hub/login"), page.url
            assert marker not in page.content()
        # Signing up again under the student's name, with the code: refused.
        despite_network_changes(sign_up_refused)
        assert not [c for c in page.context.cookies() if c["name"] == "jupyterhub-hub-login"]
    owner.stop_server(username)
