"""Per-user subdomains: each user's server on its own origin, <user>.DOMAIN.

JupyterHub's docs name subdomains the only reliable way to keep one user's pages from
scripting another's: the browser's same-origin policy then separates them. The stack
runs with DOMAIN=lab.localhost; like browsers (RFC 6761), this process resolves every
*.localhost name to the loopback address.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, needs_chromium
from loopfs import stack_with_quotas
from origin_probe import (
    CHROMIUM,
    admin_follows_the_link,
    forget_tokens_made_by_the_page,
    serving_code,
)
from origin_probe import PORT as PROBE_PORT
from stacks import HTTPS_PORT, USERS_CREATED, Stack
from test_home_usage import READ_ME
from test_lab_status import open_lab

from testsupport.hubclient import HubClient, run_in_kernel

pytestmark = pytest.mark.e2e
DOMAIN = "lab.localhost"
# Beside the default stack (its port + 1 is tests/test_front.py's proxy): one session
# can run both.
PORT = HTTPS_PORT + 2


@pytest.fixture(scope="module")
def localhost_names() -> Iterator[None]:
    """Resolve *.localhost to 127.0.0.1 in this process, as browsers do."""
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original


@pytest.fixture(scope="module")
def subdomain_stack(
    tmp_path_factory: pytest.TempPathFactory, localhost_names: None
) -> Iterator[Stack]:
    """With disk quotas, so that the GPU service runs (its api/me says the home's usage)
    without GPUs."""
    extra = {"DOMAIN": DOMAIN, "SUBDOMAINS": "true"}
    with stack_with_quotas(tmp_path_factory, "labhubsub", PORT, extra) as (running, _):
        yield running


def test_each_user_gets_their_own_origin(subdomain_stack: Stack, username: str) -> None:
    client = subdomain_stack.login(username)
    model = client.start_server(username)
    user_origin = f"https://{username}.{DOMAIN}:{PORT}"
    assert model["servers"][""]["full_url"] == f"{user_origin}/user/{username}/"

    # A browser opens JupyterLab on the user's origin, logging in there through the hub's
    # OAuth; the server's API then answers with that session...
    lab = client.session.get(f"{user_origin}/user/{username}/lab", timeout=120)
    assert lab.status_code == 200 and lab.url.startswith(user_origin), lab.url
    status = client.session.get(f"{user_origin}/user/{username}/api/status", timeout=60)
    assert status.status_code == 200, status.text[:300]
    assert "kernels" in status.json()
    # ...and the server's cookie is bound to that host alone, never to the parent domain.
    server_cookies = [c for c in client.session.cookies if c.name.startswith("jupyterhub-user-")]
    assert server_cookies, "the single-user server set no cookie"
    assert {c.domain for c in server_cookies} == {f"{username}.{DOMAIN}"}
    assert all(not c.domain_specified for c in server_cookies)

    # The hub's own origin serves no user content: it only sends the browser over.
    on_hub = client.session.get(f"{subdomain_stack.base_url}/user/{username}/lab", timeout=60)
    assert on_hub.history and on_hub.history[0].status_code == 302
    assert on_hub.url.startswith(user_origin), on_hub.url

    output = run_in_kernel(
        user_origin, subdomain_stack.ca_file, username, client.new_token(username), "print(6*7)"
    )
    assert output.strip() == "42"
    client.stop_server(username)


def test_another_users_subdomain_refuses_my_session(subdomain_stack: Stack, username: str) -> None:
    owner = username
    intruder = f"{username}-x"
    USERS_CREATED.append(intruder)
    owner_client = subdomain_stack.login(owner)
    owner_client.start_server(owner)
    intruder_client: HubClient = subdomain_stack.login(intruder)
    response = intruder_client.session.get(
        f"https://{owner}.{DOMAIN}:{PORT}/user/{owner}/api/contents", timeout=60
    )
    assert response.status_code == 403, response.status_code
    owner_client.stop_server(owner)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_a_students_page_cannot_act_as_the_admin_who_opens_it(
    subdomain_stack: Stack, username: str
) -> None:
    """The page that takes over the admin in path mode (tests/test_front.py), served
    from bob's own origin: the browser stops its first read of the hub's page."""
    bob = subdomain_stack.login(username)
    bob.start_server(username)
    bob_origin = f"https://{username}.{DOMAIN}:{PORT}"
    code = serving_code(subdomain_stack.base_url)
    token = bob.new_token(username)
    assert run_in_kernel(bob_origin, subdomain_stack.ca_file, username, token, code) == "serving\n"
    admin = subdomain_stack.admin()
    try:
        seen = admin_follows_the_link(
            subdomain_stack,
            f"{bob_origin}/user/{username}/proxy/{PROBE_PORT}/",
            subdomain_stack.certs_dir / f"{DOMAIN}.crt",
        )
        assert "blocked" in seen and "cross-origin" in seen["blocked"], seen
    finally:
        made = forget_tokens_made_by_the_page(admin)
        bob.stop_server(username)
    assert not made, "the page made a token"


def test_a_students_server_reaches_the_gpu_services_api_me(
    subdomain_stack: Stack, username: str
) -> None:
    """The service is on a host of its own with subdomains (gpus--service.DOMAIN): the
    server's LABHUB_GPU_STATUS_URL must still reach its api/me from inside the container."""
    client = subdomain_stack.login(username)
    client.start_server(username)
    try:
        user_origin = f"https://{username}.{DOMAIN}:{PORT}"
        token = client.new_token(username)
        output = run_in_kernel(user_origin, subdomain_stack.ca_file, username, token, READ_ME)
        home = json.loads(output.strip().splitlines()[-1])
        assert home["limit_bytes"] == 100 * 2**20, output
    finally:
        client.stop_server(username)


@needs_chromium
def test_the_lab_status_item_shows_on_the_users_origin(
    subdomain_stack: Stack, username: str
) -> None:
    from playwright.sync_api import expect

    client = subdomain_stack.login(username)
    client.start_server(username)
    try:
        with chromium(subdomain_stack, subdomain_stack.certs_dir / f"{DOMAIN}.crt") as browser:
            page = browser.new_page()
            item = open_lab(subdomain_stack, page, username)
            assert page.url.startswith(f"https://{username}.{DOMAIN}:{PORT}/"), page.url
            expect(item).to_have_text(re.compile(r"CPU only · home [\d.]+ of 100 MB"))
    finally:
        client.stop_server(username)
