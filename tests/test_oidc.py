"""OAuth for real: log in through nginx, CHP and JupyterHub (AUTH=generic) against a
real OpenID Connect provider, with certificate checks on at every hop.

The provider is npm's oidc-provider in a container built from tests/oidc-provider/
(users ann/students, prof/staff, eve/visitors, and kim/visitors, who carries the name
the stack's ADMIN_USERS gives its admin; login and consent are plain HTML form
posts this module drives with requests, as a browser would).

Addressing: the provider joins the stack's Docker network, which this module creates
before the stack (Compose uses an existing network of that name and leaves it on
`down`), and the issuer is https://<its container IP>:8443. The hub reaches that
address on the shared network (discovery, token, userinfo); this test process reaches
it too, because the host routes to the bridge network it created (the authorize
redirect, the login forms). The provider's certificate comes from a CA of its own (a
campus CA, made here; the stack's local CA is name-constrained to the hub's names and
could not vouch for it) with the IP in its SANs; the hub trusts that CA through
EXTRA_CA_FILE, the test process through `verify=`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import docker
import pytest
import requests
from campus_ca import issue_certificate, make_campus_ca
from docker.models.containers import Container
from stacks import (
    HTTPS_PORT,
    REPO,
    STACK,
    USERS_CREATED,
    VERSION,
    Stack,
    create_users_network,
    launched_stack,
)

from testsupport.hubclient import HubClient
from testsupport.waiting import wait_until

pytestmark = pytest.mark.e2e

PROVIDER_SRC = REPO / "tests" / "oidc-provider"
IMAGE = "labhub-test/oidc-provider:test"
USERS = json.loads((PROVIDER_SRC / "users.json").read_text())
# Its own stack name and ports, next to (not instead of) the session's default stack.
NAME = f"{STACK}-oidc"
PORT = HTTPS_PORT + 5
# What the campus calls its login (the button would otherwise read the issuer's host:port).
LOGIN_SERVICE = "University SSO"
CLIENT_ID = "labhub"
STATE_COOKIE = "oauthenticator-state"


@dataclass(frozen=True)
class Provider:
    issuer: str
    client_id: str
    client_secret: str
    ca_file: str

    def endpoint(self, name: str) -> str:
        response = requests.get(
            f"{self.issuer}/.well-known/openid-configuration", verify=self.ca_file, timeout=10
        )
        response.raise_for_status()
        return str(response.json()[name])


@dataclass(frozen=True)
class Oidc:
    stack: Stack
    provider: Provider
    # The stack's CA and the provider's campus CA in one file: what a browser on campus
    # trusts while it goes from the hub to the provider and back.
    browser_trust: str

    def client(self) -> HubClient:
        return HubClient(self.stack.base_url, self.browser_trust)


def _run(*args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        args, cwd=REPO, text=True, capture_output=True, timeout=900, env=env, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def _build_provider_image(workdir: Path) -> None:
    """Build the provider image from a context of .build/extra-ca/ and tests/oidc-provider/."""
    _run("bash", "scripts/stage-extra-ca.sh")
    context = workdir / "context"
    shutil.copytree(REPO / ".build" / "extra-ca", context / ".build" / "extra-ca")
    shutil.copytree(PROVIDER_SRC, context / "tests" / "oidc-provider")
    dockerfile = context / "tests" / "oidc-provider" / "Dockerfile"
    _run("docker", "build", "-q", "-f", str(dockerfile), "-t", IMAGE, str(context))


def _wait_for_discovery(issuer: str, ca_file: str, container: Container) -> None:
    def discovered() -> bool:
        container.reload()
        if container.status != "running":
            raise AssertionError(f"the OIDC provider stopped ({container.status})")
        response = requests.get(
            f"{issuer}/.well-known/openid-configuration", verify=ca_file, timeout=5
        )
        return response.status_code == 200 and response.json()["issuer"] == issuer

    try:
        wait_until(
            discovered,
            120,
            f"the OIDC provider's discovery at {issuer}",
            interval=0.5,
            ignoring=(requests.ConnectionError,),
        )
    except (AssertionError, TimeoutError) as error:
        logs = container.logs().decode(errors="replace")
        raise AssertionError(f"{error}; the provider's log:\n{logs}") from error


@pytest.fixture(scope="module")
def provider_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    _build_provider_image(tmp_path_factory.mktemp("oidc-image"))
    return IMAGE


@contextlib.contextmanager
def oidc_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, port: int, claims_from: str
) -> Iterator[Oidc]:
    """The provider (up first: the hub reads its discovery document at start-up), then a
    stack with AUTH=generic pointed at it; torn down in the reverse order."""
    workdir = tmp_path_factory.mktemp(name)
    certs, provider_dir = workdir / "certs", workdir / "provider"
    certs.mkdir()
    provider_dir.mkdir()
    provider_dir.chmod(0o755)
    _run("bash", "scripts/make-certs.sh", env={**os.environ, "CERTS_DIR": str(certs)})
    make_campus_ca(certs)
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    api = docker.from_env()
    with contextlib.ExitStack() as cleanup:
        # The stack's users' network, made first (as compose would make it: bridge name,
        # subnet and range from tests/stacks.py), so that the provider can join it.
        network = create_users_network(name, port)
        cleanup.callback(network.remove)
        container = api.containers.run(
            IMAGE,
            name=f"{name}-oidc-provider",
            detach=True,
            network=name,
            volumes={str(provider_dir): {"bind": "/provider", "mode": "ro"}},
            environment={
                "CLIENT_ID": CLIENT_ID,
                "CLIENT_SECRET": secret,
                "REDIRECT_URI": f"https://localhost:{port}/hub/oauth_callback",
                "ID_TOKEN_CLAIMS": str(claims_from == "id_token").lower(),
            },
        )

        def remove_provider() -> None:
            if os.environ.get("LABHUB_TEST_LOGS"):
                print(container.logs().decode(errors="replace"))
            container.remove(force=True)

        cleanup.callback(remove_provider)
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
        issuer = f"https://{ip}:8443"
        issue_certificate(certs, provider_dir, f"IP:{ip}", "oidc-provider")
        (provider_dir / "issuer").write_text(issuer + "\n")
        ca_file = str(certs / "campus-ca.crt")
        _wait_for_discovery(issuer, ca_file, container)

        extra = {
            "CERTS_DIR": str(certs),
            "AUTH": "generic",
            "OIDC_ISSUER": issuer,
            "OIDC_CLAIMS_FROM": claims_from,
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": secret,
            "OAUTH_SCOPES": "openid profile email groups",
            "ALLOWED_GROUPS": "students",
            "ADMIN_GROUPS": "staff",
            # A named admin who is, at this provider, a visitor (issue 14, item 3).
            "ADMIN_USERS": "kim",
            "EXTRA_CA_FILE": ca_file,
            "LOGIN_SERVICE": LOGIN_SERVICE,
        }
        stack = cleanup.enter_context(launched_stack(tmp_path_factory, name, port, extra))
        trust = certs / "browser-trust.pem"
        trust.write_text(Path(stack.ca_file).read_text() + Path(ca_file).read_text())
        yield Oidc(stack, Provider(issuer, CLIENT_ID, secret, ca_file), str(trust))


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory, provider_image: str) -> Iterator[Oidc]:
    """The main stack: claims from the userinfo endpoint (Keycloak's way)."""
    with oidc_stack(tmp_path_factory, NAME, PORT, "userinfo") as running:
        yield running


# --- Driving the login like a browser ----------------------------------------------------


def start_login(client: HubClient) -> str:
    """The hub's "Sign in with ..." link: returns the provider's authorize URL."""
    response = client.session.get(client.url("/hub/oauth_login"), allow_redirects=False)
    assert response.status_code == 302, response.text[:300]
    return str(response.headers["Location"])


def sign_in(oidc: Oidc, client: HubClient, authorize_url: str, username: str) -> str:
    """Fill in the provider's login and consent forms; return the redirect to the hub's
    callback (not followed), as the provider sends the browser back."""
    password = USERS[username]["password"]
    response = client.session.get(authorize_url, allow_redirects=False)
    for _ in range(12):
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            if location.startswith(oidc.stack.base_url):
                return location
            assert location.startswith(oidc.provider.issuer), location
            response = client.session.get(location, allow_redirects=False)
            continue
        assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
        action = re.search(r'<form method="post" action="([^"]+)"', response.text)
        assert action, response.text[:500]
        form = {"login": username, "password": password} if "/login" in action[1] else {}
        response = client.session.post(
            urljoin(response.url, action[1]), data=form, allow_redirects=False
        )
    raise AssertionError("the provider never redirected back to the hub")


def log_in(oidc: Oidc, username: str) -> tuple[HubClient, requests.Response]:
    client = oidc.client()
    callback = sign_in(oidc, client, start_login(client), username)
    return client, client.session.get(callback, allow_redirects=False)


def with_query(url: str, **changes: str) -> str:
    parsed = urlparse(url)
    query = {key: values[0] for key, values in parse_qs(parsed.query).items()}
    return parsed._replace(query=urlencode({**query, **changes})).geturl()


def whoami(client: HubClient) -> requests.Response:
    return client.api("GET", "/user")


# --- Tests ----------------------------------------------------------------------------------


def test_student_in_an_allowed_group_logs_in(oidc: Oidc) -> None:
    client, callback = log_in(oidc, "ann")
    assert callback.status_code == 302, callback.text[:500]
    assert client.session.cookies.get("jupyterhub-session-id"), "login set no session"
    home = client.session.get(client.url("/hub/home"), allow_redirects=False)
    assert home.status_code == 200 and "ann" in home.text
    model = whoami(client).json()
    assert model["name"] == "ann"
    assert model["admin"] is False
    assert model["groups"] == ["students"]


def test_the_login_button_names_the_campus_service(oidc: Oidc) -> None:
    """LOGIN_SERVICE on the hub's login page, where a student reads it, instead of the
    provider's host and port."""
    page = oidc.client().session.get(oidc.stack.base_url + "/hub/login")
    assert page.status_code == 200, page.text[:300]
    assert f"Sign in with {LOGIN_SERVICE}" in page.text, page.text[:2000]
    assert urlparse(oidc.provider.issuer).netloc not in page.text


def test_student_starts_a_server_after_signing_in(oidc: Oidc) -> None:
    USERS_CREATED.append("ann")  # her volume goes when the stack does
    client, callback = log_in(oidc, "ann")
    assert callback.status_code == 302, callback.text[:500]
    client.start_server("ann")
    output = oidc.stack.run(client, "ann", "import os; print(os.environ['JUPYTERHUB_USER'])")
    assert output.strip() == "ann"
    client.stop_server("ann")


def test_user_outside_the_allowed_groups_gets_a_clear_403(oidc: Oidc) -> None:
    client, callback = log_in(oidc, "eve")
    assert callback.status_code == 403
    assert "your account is not allowed to use this hub" in callback.text
    assert not client.session.cookies.get("jupyterhub-session-id")
    assert whoami(client).status_code == 403


def test_a_user_named_as_admin_but_outside_the_allowed_groups_gets_the_403_page(
    oidc: Oidc,
) -> None:
    client, callback = log_in(oidc, "kim")
    assert callback.status_code == 403, callback.text[:500]
    assert "your account is not allowed to use this hub" in callback.text
    assert not client.session.cookies.get("jupyterhub-session-id")
    assert whoami(client).status_code == 403
    # The hub holds no account for kim, let alone an admin one (prof is an admin).
    prof, _ = log_in(oidc, "prof")
    assert prof.api("GET", "/users/kim").status_code == 404


def test_admins_come_from_the_group_claim(oidc: Oidc) -> None:
    client, callback = log_in(oidc, "prof")
    assert callback.status_code == 302, callback.text[:500]
    model = whoami(client).json()
    assert model["name"] == "prof"
    assert model["admin"] is True
    assert model["groups"] == ["staff"]
    # An admin-only endpoint answers: the hub really treats prof as an admin.
    users = client.api("GET", "/users")
    assert users.status_code == 200
    assert {"ann", "prof"} <= {user["name"] for user in users.json()}


def test_tampered_state_is_rejected(oidc: Oidc) -> None:
    client = oidc.client()
    callback = sign_in(oidc, client, start_login(client), "ann")
    state = parse_qs(urlparse(callback).query)["state"][0]
    decoded = json.loads(base64.urlsafe_b64decode(state))
    forged = {**decoded, "state_id": "f" * len(decoded["state_id"])}
    forged_state = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode()
    response = client.session.get(with_query(callback, state=forged_state))
    assert response.status_code == 400
    assert "OAuth state mismatch" in response.text
    assert not client.session.cookies.get("jupyterhub-session-id")
    assert whoami(client).status_code == 403


def test_replayed_state_is_rejected(oidc: Oidc) -> None:
    client = oidc.client()
    authorize_url = start_login(client)
    state_cookie = client.session.cookies.get(STATE_COOKIE)
    assert state_cookie, "the hub set no state cookie"
    callback = sign_in(oidc, client, authorize_url, "ann")
    first = client.session.get(callback, allow_redirects=False)
    assert first.status_code == 302, first.text[:500]

    # The same browser again: the hub dropped the state cookie with its first use.
    again = client.session.get(callback, allow_redirects=False)
    assert again.status_code == 400
    assert "OAuth state missing from cookies" in again.text

    # Someone else with the callback URL (a leaked link, browser history): no cookie.
    stranger = oidc.client()
    leaked = stranger.session.get(callback, allow_redirects=False)
    assert leaked.status_code == 400
    assert "OAuth state missing from cookies" in leaked.text
    assert not stranger.session.cookies.get("jupyterhub-session-id")

    # ...even with a copy of the state cookie too: the provider takes a code only once,
    # and the hub says so (labhub/providers.py) rather than showing a 500.
    copied = oidc.client()
    replay = copied.session.get(
        callback, headers={"Cookie": f"{STATE_COOKIE}={state_cookie}"}, allow_redirects=False
    )
    assert replay.status_code == 403, (replay.status_code, replay.text[:500])
    assert "one-time code was already used or has expired" in replay.text
    assert not copied.session.cookies.get("jupyterhub-session-id")
    assert whoami(copied).status_code == 403


def test_pkce_is_used_and_enforced(oidc: Oidc) -> None:
    client = oidc.client()
    authorize_url = start_login(client)
    query = {key: values[0] for key, values in parse_qs(urlparse(authorize_url).query).items()}
    # The hub sends an S256 challenge (a base64url SHA-256: 43 characters).
    assert query["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", query["code_challenge"])

    # The provider refuses this client's authorize request without a challenge...
    bare = {k: v for k, v in query.items() if not k.startswith("code_challenge")}
    refused = client.session.get(
        authorize_url.split("?")[0] + "?" + urlencode(bare), allow_redirects=False
    )
    assert refused.is_redirect
    error = parse_qs(urlparse(refused.headers["Location"]).query)
    assert error["error"] == ["invalid_request"]
    assert "PKCE" in error["error_description"][0]

    # ...and a code stolen on its way back is worthless without the hub's verifier.
    callback = sign_in(oidc, client, authorize_url, "ann")
    code = parse_qs(urlparse(callback).query)["code"][0]
    provider = oidc.provider
    token = requests.post(
        provider.endpoint("token_endpoint"),
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": query["redirect_uri"],
            "code_verifier": "x" * 43,
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
        },
        verify=provider.ca_file,
        timeout=30,
    )
    assert token.status_code == 400
    assert token.json()["error"] == "invalid_grant"


def test_the_hub_does_not_trust_the_provider_without_its_ca(oidc: Oidc) -> None:
    """The logins above work because EXTRA_CA_FILE hands the hub the test CA: the
    same start-up code, in the same image and network, without it refuses the provider."""
    code = f"from labhub.auth import discover; discover({oidc.provider.issuer!r}, '')"
    # In the hub's own network namespace: the users' network lets only the hub reach out.
    hub = f"container:{NAME}-hub-1"
    image = f"labhub/hub:{VERSION}"
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", hub, image, "python", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr[-2000:]


def test_claims_from_the_id_token_azure_style(
    tmp_path_factory: pytest.TempPathFactory, provider_image: str
) -> None:
    """OIDC_CLAIMS_FROM=id_token (for Azure AD, whose userinfo lacks username and
    groups): a second stack and provider, up only for this test."""
    with oidc_stack(tmp_path_factory, f"{NAME}-idt", PORT + 1, "id_token") as idt:
        ann, ann_callback = log_in(idt, "ann")
        prof, prof_callback = log_in(idt, "prof")
        eve, eve_callback = log_in(idt, "eve")
        assert (ann_callback.status_code, prof_callback.status_code) == (302, 302)
        assert whoami(ann).json()["groups"] == ["students"]
        assert whoami(prof).json()["admin"] is True
        assert eve_callback.status_code == 403
        assert whoami(eve).status_code == 403
