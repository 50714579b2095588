"""LDAP for real: log in through nginx, CHP and JupyterHub (AUTH=ldap) against a real
directory server, Debian's slapd, over StartTLS with a certificate checked at every hop.

The directory is a container built from tests/ldap-server/ (alice in cn=students, bob
in cn=staff, eve in no group, the hub's search account cn=labhub). It joins the
stack's Docker network, made here before the stack (as in tests/test_oidc.py), under
the name ldap.uni.test, with a certificate for that name from a campus CA made here;
the hub trusts that CA through EXTRA_CA_FILE and finds users by search-then-bind with
the search account (the Active Directory way).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from browser import chromium, needs_chromium
from campus_ca import issue_certificate, make_campus_ca
from docker.models.containers import Container
from stacks import (
    HTTPS_PORT,
    REPO,
    STACK,
    USERS_CREATED,
    Stack,
    create_users_network,
    launched_stack,
)

from testsupport.hubclient import HubClient

pytestmark = pytest.mark.e2e

SERVER_SRC = REPO / "tests" / "ldap-server"
IMAGE = "labhub-test/ldap-server:test"
NAME = f"{STACK}-ldap"
PORT = HTTPS_PORT + 6
HOST = "ldap.uni.test"
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "eve": "eve-password"}
NOT_ALLOWED = "your account is not allowed to use this hub"
DIRECTORY_FAILED = "could not check your password with the university directory"


@dataclass(frozen=True)
class Directory:
    stack: Stack
    container: Container
    # Mounted at /certs in the directory: tls.crt/tls.key, read when slapd starts.
    certs_dir: Path
    workdir: Path

    def login(self, username: str, password: str) -> tuple[HubClient, str, int]:
        """Post the hub's login form; return the session, the page and its status."""
        client = self.stack.client()
        response = client.login(username, password, follow=False)
        return client, response.text, response.status_code

    def modify(self, ldif: str) -> None:
        """Change entries as the directory's manager (an IT admin editing a group)."""
        command = ["ldapmodify", "-Q", "-Y", "EXTERNAL", "-H", "ldapi:///"]
        result = subprocess.run(
            ["docker", "exec", "-i", self.container.name, *command],
            input=ldif,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def log_mark(self) -> int:
        """Where the directory's log ends now, for `log_after`."""
        return len(self.container.logs())

    def log_after(self, mark: int) -> str:
        return self.container.logs()[mark:].decode(errors="replace")


def _run(*args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        args, cwd=REPO, text=True, capture_output=True, timeout=900, env=env, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def _wait_healthy(container: Container) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        container.reload()
        if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
            return
        if container.status not in ("created", "running", "restarting"):
            break
        time.sleep(0.5)
    logs = container.logs().decode(errors="replace")
    raise AssertionError(f"the directory did not come up:\n{logs[-3000:]}")


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    """The directory (up first: its name must resolve when the hub starts), then a stack
    with AUTH=ldap pointed at it; torn down in the reverse order."""
    workdir = tmp_path_factory.mktemp("ldap")
    _run("bash", "scripts/stage-extra-ca.sh")
    context = workdir / "context"
    shutil.copytree(REPO / ".build" / "extra-ca", context / ".build" / "extra-ca")
    shutil.copytree(SERVER_SRC, context / "tests" / "ldap-server")
    dockerfile = context / "tests" / "ldap-server" / "Dockerfile"
    _run("docker", "build", "-q", "-f", str(dockerfile), "-t", IMAGE, str(context))

    certs, server_certs = workdir / "certs", workdir / "server"
    certs.mkdir()
    server_certs.mkdir()
    server_certs.chmod(0o755)
    _run("bash", "scripts/make-certs.sh", env={**os.environ, "CERTS_DIR": str(certs)})
    make_campus_ca(certs)
    issue_certificate(certs, server_certs, f"DNS:{HOST}", HOST)
    api = docker.from_env()
    with contextlib.ExitStack() as cleanup:
        network = create_users_network(NAME, PORT)
        cleanup.callback(network.remove)
        container = api.containers.create(
            IMAGE,
            name=f"{NAME}-ldap-server",
            detach=True,
            volumes={str(server_certs): {"bind": "/certs", "mode": "ro"}},
        )
        cleanup.callback(container.remove, force=True)
        network.connect(container, aliases=[HOST])
        container.start()
        _wait_healthy(container)
        extra = {
            "CERTS_DIR": str(certs),
            "AUTH": "ldap",
            "LDAP_URL": f"ldap://{HOST}:1389",
            "LDAP_USER_SEARCH_BASE": "ou=people,dc=uni,dc=test",
            "LDAP_SEARCH_USER": "cn=labhub,ou=services,dc=uni,dc=test",
            "LDAP_SEARCH_PASSWORD": "search-account-password",
            "LDAP_GROUP_SEARCH_BASE": "ou=groups,dc=uni,dc=test",
            "ALLOWED_GROUPS": "students",
            "ADMIN_GROUPS": "staff",
            "ADMIN_USERS": "",
            "EXTRA_CA_FILE": str(certs / "campus-ca.crt"),
        }
        stack = cleanup.enter_context(launched_stack(tmp_path_factory, NAME, PORT, extra))
        yield Directory(stack, container, server_certs, workdir)


# --- Tests ----------------------------------------------------------------------------------


def test_student_in_the_allowed_group_logs_in_and_spawns(directory: Directory) -> None:
    USERS_CREATED.append("alice")  # her volume goes when the stack does
    client, page, status = directory.login("alice", PASSWORDS["alice"])
    assert status == 302 and client.logged_in, page[:500]
    model = client.api("GET", "/user").json()
    assert (model["name"], model["admin"], model["groups"]) == ("alice", False, ["students"])
    client.start_server("alice")
    output = directory.stack.run(client, "alice", "import os; print(os.environ['JUPYTERHUB_USER'])")
    assert output.strip() == "alice"
    client.stop_server("alice")


def test_a_username_in_capitals_is_the_same_account(directory: Directory) -> None:
    client, page, status = directory.login("Alice", PASSWORDS["alice"])
    assert status == 302 and client.logged_in, page[:500]
    assert client.api("GET", "/user").json()["name"] == "alice"


def test_staff_member_is_admin(directory: Directory) -> None:
    client, page, status = directory.login("bob", PASSWORDS["bob"])
    assert status == 302 and client.logged_in, page[:500]
    model = client.api("GET", "/user").json()
    assert (model["admin"], model["groups"]) == (True, ["staff"])
    # An admin-only endpoint answers: the hub really treats bob as an admin.
    users = client.api("GET", "/users")
    assert users.status_code == 200
    groups = client.api("GET", "/groups").json()
    assert {group["name"]: group["users"] for group in groups}["staff"] == ["bob"]


def test_outsider_with_the_right_password_gets_the_clear_403(directory: Directory) -> None:
    client, page, status = directory.login("eve", PASSWORDS["eve"])
    assert status == 403
    assert NOT_ALLOWED in page
    assert not client.logged_in
    assert client.api("GET", "/user").status_code == 403
    admin, _, _ = directory.login("bob", PASSWORDS["bob"])
    assert admin.api("GET", "/users/eve").status_code == 404


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong-password"), ("alice", ""), ("eve", PASSWORDS["alice"]), ("nobody", "x")],
    ids=["wrong-password", "empty-password", "another-users-password", "unknown-user"],
)
def test_a_wrong_password_fails(directory: Directory, username: str, password: str) -> None:
    client, page, status = directory.login(username, password)
    assert status == 403
    assert "Invalid username or password" in page
    assert NOT_ALLOWED not in page
    assert not client.logged_in


@pytest.mark.parametrize(
    "username",
    ["*", "al*", "alice)(uid=*", "*)(uid=*))(|(uid=*", "alice)(|(objectClass=*", "al\x00*", "\x00"],
    ids=["star", "prefix-star", "close-open", "or-all", "or-objectclass", "nul-star", "nul"],
)
def test_ldap_injection_in_the_username_finds_nobody(directory: Directory, username: str) -> None:
    """With alice's real password: had the username reached a filter unescaped, the
    search would have found her entry and the bind would have let the attacker in."""
    mark = directory.log_mark()
    client, page, status = directory.login(username, PASSWORDS["alice"])
    assert status == 403, page[:500]
    assert "Invalid username or password" in page
    assert not client.logged_in
    # At the directory: no search or bind ever named alice's entry.
    assert "uid=alice" not in directory.log_after(mark)


# In the hub's container: its settings from its environment, with LDAP_URL changed.
LDAPS_LOGIN = """
import asyncio, json, os
from traitlets.config import Config
from labhub.auth import authenticator_config, provider_ca_bundle
from labhub.ldap import LabLDAPAuthenticator
from labhub.settings import Settings
env = {**os.environ, "LDAP_URL": "ldaps://%s:1636"}
settings = Settings.from_env(env)
_, traits = authenticator_config(settings, provider_ca_bundle(settings))
hub = LabLDAPAuthenticator(config=Config({"LabLDAPAuthenticator": traits}))
model = asyncio.run(hub.authenticate(None, {"username": "alice", "password": "%s"}))
print(json.dumps([traits["tls_strategy"], traits["server_port"], model["groups"]]))
"""


def test_ldaps_on_connect_logs_in_too(directory: Directory) -> None:
    """LDAP_URL=ldaps://... (TLS from the first byte, as many AD set-ups), run with the
    hub's own settings code and CA bundle in its container."""
    code = LDAPS_LOGIN % (HOST, PASSWORDS["alice"])
    result = directory.stack.compose("exec", "-T", "hub", "python", "-c", code)
    assert result.stdout.strip().splitlines()[-1] == '["on_connect", 1636, ["students"]]'


def set_members(directory: Directory, members: dict[str, str]) -> None:
    """Make each group's members exactly the given person (groupOfNames needs one)."""
    directory.modify(
        "".join(
            f"dn: cn={group},ou=groups,dc=uni,dc=test\nchangetype: modify\nreplace: member\n"
            f"member: uid={person},ou=people,dc=uni,dc=test\n\n"
            for group, person in members.items()
        )
    )


def test_groups_and_admin_rights_follow_the_directory_at_the_next_login(
    directory: Directory,
) -> None:
    """IT moves bob from staff to students: at his next login the hub's groups say so
    and he is no longer an admin."""
    staff, _, _ = directory.login("bob", PASSWORDS["bob"])
    assert staff.api("GET", "/user").json()["admin"] is True
    try:
        set_members(directory, {"staff": "nobody", "students": "bob"})
        client, page, status = directory.login("bob", PASSWORDS["bob"])
        assert status == 302 and client.logged_in, page[:500]
        model = client.api("GET", "/user").json()
        assert (model["admin"], model["groups"]) == (False, ["students"])
        assert client.api("GET", "/users").status_code == 403
    finally:
        set_members(directory, {"staff": "bob", "students": "alice"})
    client, page, status = directory.login("bob", PASSWORDS["bob"])
    assert client.api("GET", "/user").json()["admin"] is True


def test_no_password_reaches_the_logs(directory: Directory) -> None:
    """After the logins above (right, wrong and refused): the search account's and the
    users' passwords appear in no service's log."""
    directory.login("alice", PASSWORDS["alice"])
    directory.login("eve", PASSWORDS["eve"])
    logs = directory.stack.compose("logs", "--no-color").stdout
    assert "labhub" in logs  # the logs were read
    for secret in ["search-account-password", *PASSWORDS.values()]:
        assert secret not in logs, secret


@needs_chromium
def test_chromium_logs_a_student_in_through_the_form(directory: Directory) -> None:
    with chromium(directory.stack) as browser:
        page = browser.new_page()
        # Six tries: on a host busy with other stacks, Chromium showed its error page
        # (chrome-error://) three times in a row in one of five runs.
        directory.stack.browser_login(
            page, "alice", attempts=6, next_url="/hub/home", password=PASSWORDS["alice"]
        )
        # The form's answer may still be on its way when browser_login returns.
        page.wait_for_url(directory.stack.base_url + "/hub/home", timeout=60_000)
        assert "alice" in page.content()


@pytest.mark.parametrize(
    ("impostor", "name", "reason"),
    [
        (True, HOST, "certificate verify failed"),
        (False, "other.uni.test", "match any name"),
    ],
    ids=["unknown-ca", "campus-ca-other-name"],
)
def test_a_certificate_the_hub_should_not_trust_is_refused(
    directory: Directory, impostor: bool, name: str, reason: str
) -> None:
    """The directory, restarted with a certificate for its name from a CA the hub does
    not trust (an impostor's), or from the campus CA for another host (any campus
    server's): the login stops at TLS with the directory's 502 page, and no password
    reaches the directory."""
    workdir = directory.workdir / f"{name}-{impostor}"
    real, issuer = workdir / "real", workdir / "ca"
    real.mkdir(parents=True)
    issuer.mkdir()
    if impostor:
        make_campus_ca(issuer, "impostor CA")
    else:
        for ca_file in ("campus-ca.crt", "campus-ca.key"):
            shutil.copy2(directory.stack.certs_dir / ca_file, issuer / ca_file)
    for tls_file in ("tls.crt", "tls.key"):
        shutil.copy2(directory.certs_dir / tls_file, real / tls_file)
    try:
        issue_certificate(issuer, directory.certs_dir, f"DNS:{name}", name)
        directory.container.restart()
        _wait_healthy(directory.container)
        mark = directory.log_mark()
        client, page, status = directory.login("alice", PASSWORDS["alice"])
        assert status == 502, page[:500]
        assert DIRECTORY_FAILED in page
        assert not client.logged_in
        # No bind with a name (the health check's anonymous ones have none): neither the
        # search account's password nor alice's reached the directory.
        logs = directory.log_after(mark)
        assert not re.search(r'BIND dn="[^"]+"', logs), logs[-2000:]
        hub_log = directory.stack.compose("logs", "--no-color", "--tail=50", "hub").stdout
        assert reason in hub_log, hub_log[-3000:]
    finally:
        for tls_file in ("tls.crt", "tls.key"):
            shutil.copy2(real / tls_file, directory.certs_dir / tls_file)
        directory.container.restart()
        _wait_healthy(directory.container)
    # The real certificate back: the same login works again.
    client, page, status = directory.login("alice", PASSWORDS["alice"])
    assert status == 302 and client.logged_in, page[:500]
