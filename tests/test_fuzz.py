"""Bad input through nginx: malformed, oversized and random requests get 4xx, never 5xx.

Hypothesis drives the hub's REST API (anonymous and as an admin) and its login form (the
GPU admin API is fuzzed in test_gpus.py, on the stack that runs it); a few raw requests
check what nginx refuses before the hub sees anything. Examples are bounded (200 per test).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from stacks import HTTPS_PORT, Stack

from testsupport.fuzzing import FUZZ, json_body, segment

pytestmark = pytest.mark.e2e

body = json_body(["name", "usernames", "admin", "note", "expires_in", "scopes", "roles"])
content_type = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain", "", "x/\x7f"]
)
ADMIN_ROUTES = [
    ("GET", "/hub/api/users/{}"),
    ("PATCH", "/hub/api/users/{}"),
    ("POST", "/hub/api/users/{}"),
    ("POST", "/hub/api/users"),
    ("POST", "/hub/api/users/{}/tokens"),
    ("GET", "/hub/api/users/{}/tokens/{}"),
    ("GET", "/hub/api/groups/{}"),
    ("POST", "/hub/api/groups/{}"),
    ("POST", "/hub/api/groups/{}/users"),
    ("DELETE", "/hub/api/groups/{}/users"),
    ("GET", "/hub/api/users?offset={}&limit={}"),
    ("GET", "/hub/api/proxy?offset={}"),
    ("POST", "/hub/api/shares/{}/{}"),
]
ANONYMOUS_ROUTES = [
    *ADMIN_ROUTES,
    ("POST", "/hub/api/users/{}/server"),
    ("DELETE", "/hub/api/users/{}"),
    ("GET", "/hub/login?next={}"),
    ("GET", "/user/{}/api/contents/{}"),
    ("POST", "/hub/spawn/{}"),
    ("GET", "/hub/{}"),
]


def session(stack: Stack) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = stack.ca_file
    return s


@pytest.fixture(scope="module")
def admin_token(stack: Stack) -> str:
    return stack.login("admin").new_token("admin")


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[requests.Session]:
    with session(stack) as s:
        yield s


def send(
    http: requests.Session,
    stack: Stack,
    route: tuple[str, str],
    parts: list[str],
    payload: bytes,
    ctype: str,
    token: str | None = None,
) -> requests.Response:
    method, template = route
    path = template.format(*(parts + [""] * template.count("{}")))
    headers: dict[str, Any] = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"token {token}"
    return http.request(
        method,
        stack.base_url + path,
        data=payload,
        headers=headers,
        allow_redirects=False,
        timeout=60,
    )


@FUZZ
@given(
    route=st.sampled_from(ADMIN_ROUTES),
    parts=st.lists(segment, min_size=2, max_size=2),
    payload=body,
    ctype=content_type,
)
def test_admin_api_fuzz_never_5xx(
    stack: Stack,
    http: requests.Session,
    admin_token: str,
    route: tuple[str, str],
    parts: list[str],
    payload: bytes,
    ctype: str,
) -> None:
    response = send(http, stack, route, parts, payload, ctype, admin_token)
    assert response.status_code < 500, (route, parts, payload[:200], response.text[:500])


@FUZZ
@given(
    route=st.sampled_from(ANONYMOUS_ROUTES),
    parts=st.lists(segment, min_size=2, max_size=2),
    payload=body,
    ctype=content_type,
)
def test_anonymous_fuzz_never_5xx(
    stack: Stack,
    http: requests.Session,
    route: tuple[str, str],
    parts: list[str],
    payload: bytes,
    ctype: str,
) -> None:
    response = send(http, stack, route, parts, payload, ctype)
    assert response.status_code < 500, (route, parts, payload[:200], response.text[:500])
    assert response.status_code != 200 or route[0] == "GET", (route, response.status_code)


@FUZZ
@given(
    username=st.text(max_size=300),
    password=st.text(max_size=300),
    extra=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=3),
)
def test_login_form_fuzz_never_5xx(
    stack: Stack, username: str, password: str, extra: dict[str, str]
) -> None:
    client = stack.client()
    response = client.session.post(
        stack.base_url + "/hub/login",
        data={**extra, "username": username, "password": password, "_xsrf": client.xsrf()},
        allow_redirects=False,
        timeout=60,
    )
    assert response.status_code < 500, (username, response.text[:300])
    # Nobody logs in: these names have no account, or not this password.
    assert response.status_code != 302 or password == stack.password_of(username)


def raw(request: bytes) -> bytes:
    """Send bytes over TLS to nginx, return the start of the answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only nginx's status line matters here
    with (
        socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=30) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as tls,
    ):
        # nginx may answer and close before it has read all of an oversized request.
        with contextlib.suppress(OSError):
            tls.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while len(answer) < 200:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # A body above MAX_BODY_SIZE is refused from its Content-Length alone.
        (
            b"POST /hub/api/users HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 100000000000\r\n\r\n",
            b"413",
        ),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n", b"400"),
        (b"BREW /pot HTCPCP/1.0\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host header
        (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
        (b"GET /hub/api/users HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n", b"400"),
    ],
    ids=["huge-body", "long-url", "huge-header", "bad-method-line", "no-host", "garbage", "neg-cl"],
)
def test_nginx_refuses_malformed_and_oversized_requests(
    stack: Stack, request_bytes: bytes, status: bytes
) -> None:
    answer = raw(request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
