"""Test stacks: the real platform, brought up with the README's own `make up` (on other
ports and names than a production stack), always torn down.

Test modules import from here (`from stacks import Stack, launched_stack`), never from
conftest: under pytest's importlib mode `import conftest` would load a second copy of
it, with its own list of users to clean up."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from labhub.contract import volume_name_for

from testsupport.browsing import ERROR_PAGE_URL, despite_network_changes, network_changed
from testsupport.containers import user_containers
from testsupport.hubclient import HubClient, run_in_kernel
from testsupport.images import REPO

# Every test user, whatever stack it ran on: their containers and volumes go at teardown.
USERS_CREATED: list[str] = []
# Several test stacks can run side by side on one engine (another name, other ports).
STACK = os.environ.get("LABHUB_TEST_STACK", "labhubtest")
HTTPS_PORT = int(os.environ.get("LABHUB_TEST_HTTPS_PORT", "18443"))
# The images' tag: another one lets two checkouts test side by side on one engine.
VERSION = os.environ.get("LABHUB_TEST_VERSION", "test")
# What every test stack's images are built with (CPU TensorFlow: no GPU here).
BUILD_ENV = {"LABHUB_VERSION": VERSION, "TENSORFLOW_PACKAGE": "tensorflow-cpu==2.21.0"}


def env_text(values: Mapping[str, str]) -> str:
    """A .env file's text: one NAME=value line each."""
    return "".join(f"{key}={value}\n" for key, value in values.items())


def build_env() -> str:
    """The .env `make test` builds the images with before its two runs (tests/run-all.sh):
    every test stack's, and the monitoring profile's image too."""
    return env_text({**BUILD_ENV, "MONITORING": "true"})


def run_make(
    *targets: str,
    env_file: Path,
    cwd: Path = REPO,
    check: bool = False,
    timeout: float = 3600,
    docker_host: str | None = None,
    docker_config: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """`make TARGETS ENV_FILE=env_file` in a checkout (this one by default), output kept;
    TARGETS may hold make's `NAME=value` arguments. With `docker_host`, against that engine;
    with `docker_config`, the Docker CLI's logins from there (as `docker login` keeps them)."""
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    if docker_config:
        env["DOCKER_CONFIG"] = str(docker_config)
    return subprocess.run(
        ["make", "--no-print-directory", *targets, f"ENV_FILE={env_file}"],
        cwd=cwd,
        text=True,
        capture_output=True,
        check=check,
        timeout=timeout,
        env=env,
    )


@dataclass(frozen=True)
class Stack:
    """A running test stack and what a test needs to talk to it."""

    env_file: Path
    certs_dir: Path
    base_url: str
    http_url: str

    @property
    def ca_file(self) -> str:
        return str(self.certs_dir / "labhub-ca.crt")

    def value(self, name: str) -> str:
        for line in self.env_file.read_text().splitlines():
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1]
        raise KeyError(name)

    def make(self, *targets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_make(*targets, env_file=self.env_file, check=check)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "docker",
                "compose",
                "-f",
                "compose/docker-compose.yml",
                "--env-file",
                str(self.env_file),
                *args,
            ],
            cwd=REPO,
            text=True,
            capture_output=True,
            check=check,
            timeout=900,
            env={**os.environ, "LABHUB_ENV_FILE": str(self.env_file)},
        )

    def tear_down(self, volumes: Iterable[str]) -> None:
        """Remove the stack as `make down` does, with its users' containers (compose cannot
        remove a network they are still on), its netguard chains and the `volumes`."""
        network = self.value("DOCKER_NETWORK")
        for container in user_containers(network):
            container.remove(force=True)
        self.compose("--profile", "monitoring", "down", "-v", "--remove-orphans", check=False)
        api = docker.from_env()
        for volume in volumes:
            # A volume still in use (409) belongs to a user of another stack that is still
            # up: that stack's own teardown removes it.
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.volumes.get(volume).remove(force=True)
        self.remove_netguard_rules()

    def remove_netguard_rules(self) -> None:
        """netguard's host firewall chains, by their own names (as `make down` does)."""
        self.compose(
            "run", "--rm", "--no-deps", "netguard", "labhub-netguard", "remove", check=False
        )

    def client(self) -> HubClient:
        return HubClient(self.base_url, self.ca_file)

    def run(self, client: HubClient, username: str, code: str) -> str:
        """Run Python in a fresh kernel of the user's running server; return stdout."""
        token = client.new_token(username)
        return run_in_kernel(self.base_url, self.ca_file, username, token, code)

    @property
    def admins(self) -> list[str]:
        return [name.strip() for name in self.value("ADMIN_USERS").split(",") if name.strip()]

    def password_of(self, username: str) -> str:
        """The password `username` logs in with on this stack.

        AUTH=native: the first admin's generated one; a student's own, derived from the
        stack's secret so that every test (and the browser) logs the same student in with
        the same password. Workshop mode: the shared passwords.
        """
        if self.value("AUTH") == "shared-password":
            kind = "ADMIN" if username in self.admins else "USER"
            return self.value(f"SHARED_{kind}_PASSWORD")
        if username in self.admins:
            return self.value("ADMIN_INITIAL_PASSWORD")
        seed = f"{self.value('CONFIGPROXY_AUTH_TOKEN')}:{username}".encode()
        return "pw-" + hashlib.sha256(seed).hexdigest()[:24]

    def ensure_account(self, username: str) -> str:
        """Sign `username` up with the class's code unless they exist; return their password.

        Signing up again under a taken name changes nothing (the hub refuses it).
        """
        password = self.password_of(username)
        if self.value("AUTH") == "native" and username not in self.admins:
            response = self.client().signup(username, password, self.value("SIGNUP_CODE"))
            assert response.status_code == 200, response.text[:500]
            if "waits for an administrator" in response.text:
                # A user a test made through the API: the code does not approve a name
                # the hub already knows, so the admin does, as a real admin would.
                admin = self.admin()
                approval = admin.session.get(admin.url(f"/hub/authorize/{username}"), timeout=60)
                assert approval.status_code == 200, approval.status_code
        return password

    def admin(self) -> HubClient:
        """The first admin's session, logged in without following the redirect to the
        spawn page (which would start a server for the admin too)."""
        client = self.client()
        name = self.admins[0]
        response = client.login(name, self.password_of(name), follow=False)
        assert response.status_code == 302 and client.logged_in, response.text[:300]
        return client

    def login(self, username: str) -> HubClient:
        """A session logged in through the hub's form, the account created if needed."""
        client = self.client()
        response = client.login(username, self.ensure_account(username))
        assert response.status_code == 200, response.text[:500]
        assert client.logged_in, f"{username} was not logged in: {response.text[:500]}"
        return client

    def browser_login(
        self,
        page: Any,
        username: str,
        attempts: int = 3,
        next_url: str = "",
        password: str | None = None,
    ) -> None:
        """Log `username` in on a Playwright page through the hub's form, as a student would
        (then on to `next_url`, e.g. /hub/admin, rather than the spawn page). `password`:
        an account this stack does not make (a directory's), else `ensure_account`'s.

        Tried again only for Chromium's reactions to this host's network changes
        (testsupport.browsing).
        """
        from playwright.sync_api import Error

        password = password or self.ensure_account(username)
        login_url = self.base_url + "/hub/login" + (f"?next={next_url}" if next_url else "")
        for attempt in range(attempts):
            try:
                # Chromium may reload its error page several times in a row: the goto
                # waits for each reload to finish before it tries again.
                despite_network_changes(lambda: page.goto(login_url))
                if "/hub/login" not in page.url:
                    return  # the form went through before the network changed
                page.fill("#username_input", username)
                page.fill("#password_input", password)
                # Until the answer to the form's POST has loaded (the hub's next page or
                # Chromium's error page), not just the login page that sent it.
                with page.expect_navigation(wait_until="domcontentloaded"):
                    page.click("#login_submit")
            except Error as error:
                if not network_changed(error) or attempt == attempts - 1:
                    raise
                continue
            if not page.url.startswith(ERROR_PAGE_URL):
                return
        raise AssertionError(f"{username}'s login never reached the hub: {page.url}")


def users_network_for(https_port: int) -> dict[str, str]:
    """A users' network of its own for each test stack (its port is unique on the host):
    bridge lh<port>, subnet 10.<port // 256>.<port % 256>.0/24."""
    prefix = f"10.{https_port >> 8}.{https_port & 255}"
    return {
        "USERS_BRIDGE": f"lh{https_port}",
        "USERS_SUBNET": f"{prefix}.0/24",
        "USERS_IP_RANGE": f"{prefix}.128/25",
        "HUB_USERS_IP": f"{prefix}.2",
        "PROXY_USERS_IP": f"{prefix}.3",
    }


def create_users_network(name: str, https_port: int) -> Any:
    """The users' network of the stack on `https_port`, made before the stack as compose
    would make it (bridge name, subnet, range), so that a provider can join it first."""
    layout = users_network_for(https_port)
    return docker.from_env().networks.create(
        name,
        driver="bridge",
        options={"com.docker.network.bridge.name": layout["USERS_BRIDGE"]},
        ipam=docker.types.IPAMConfig(
            pool_configs=[
                docker.types.IPAMPool(
                    subnet=layout["USERS_SUBNET"], iprange=layout["USERS_IP_RANGE"]
                )
            ]
        ),
    )


def stack_in(
    workdir: Path, name: str, https_port: int, extra_env: dict[str, str] | None = None
) -> Stack:
    """A test stack's .env in `workdir` (CPU TensorFlow, loopback-only ports, its own names
    and `extra_env` on top), not started."""
    certs = workdir / "certs"
    certs.mkdir()
    values = {
        "STACK_NAME": name,
        "DOCKER_NETWORK": name,
        "DOMAIN": "localhost",
        "BIND_ADDRESS": "127.0.0.1",
        "HTTP_PORT": str(https_port - 363),
        "HTTPS_PORT": str(https_port),
        "CERTS_DIR": str(certs),
        **BUILD_ENV,
        "ADMIN_USERS": "admin",
        "USER_MEM_LIMIT": "3G",
        **users_network_for(https_port),
        # Used only when a test starts Prometheus (tests/test_monitoring.py).
        "PROMETHEUS_PORT": str(https_port - 8000),
        # Tests log in hundreds of times a minute from one address (the login fuzz);
        # tests/test_front.py checks the default limit on a proxy of its own.
        "LOGIN_RATE_LIMIT": "100000",
        **(extra_env or {}),
    }
    env_file = workdir / ".env"
    env_file.write_text(env_text(values))
    domain = values["DOMAIN"]
    # A module may bring its own CERTS_DIR (e.g. a CA it made before the stack starts).
    return Stack(
        env_file,
        Path(values["CERTS_DIR"]),
        f"https://{domain}:{https_port}",
        f"http://{domain}:{https_port - 363}",
    )


@contextlib.contextmanager
def launched_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    https_port: int,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """`make up` with a test .env (`stack_in`), yielded running and always torn down with
    its users' volumes.

    Test modules that need another configuration (OAuth, GPUs, subdomains) make their
    own module-scoped fixture from this, under another name and port.
    """
    stack = stack_in(tmp_path_factory.mktemp(name), name, https_port, extra_env)
    running = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={name}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    if running:
        # Never take over (and at teardown remove) a stack another fixture or run has.
        pytest.fail(
            f"a stack named {name} is already running: another test run on this engine has"
            " it (give this fixture its own name), or a run that was killed left it"
            " (make test removes those first: tests/leftovers.py)"
        )
    up = stack.make("up", check=False)
    if up.returncode != 0:
        logs = stack.compose("logs", "--no-color", "--tail=200", check=False).stdout
        stack.tear_down([])
        pytest.fail(f"make up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}\n{logs}")
    try:
        yield stack
    finally:
        if os.environ.get("LABHUB_TEST_LOGS"):
            print(stack.compose("logs", "--no-color", "--tail=300", check=False).stdout)
        # The admin too: tests log in as admin, and a login spawns a server (and a volume).
        stack.tear_down(volume_name_for(user, name) for user in [*USERS_CREATED, *stack.admins])
