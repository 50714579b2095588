"""Test stacks: the real platform, brought up with the README's own `make up` (on other
ports and names than a production stack), always torn down.

Test modules import from here (`from stacks import Stack, launched_stack`), never from
conftest: under pytest's importlib mode `import conftest` would load a second copy of
it, with its own list of users to clean up."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from hubclient import HubClient, run_in_kernel

REPO = Path(__file__).resolve().parents[1]
# Every test user, whatever stack it ran on: their containers and volumes go at teardown.
USERS_CREATED: list[str] = []
# Several test stacks can run side by side on one engine (another name, other ports).
STACK = os.environ.get("LABHUB_TEST_STACK", "labhubtest")
HTTPS_PORT = int(os.environ.get("LABHUB_TEST_HTTPS_PORT", "18443"))
# The images' tag: another one lets two checkouts test side by side on one engine.
VERSION = os.environ.get("LABHUB_TEST_VERSION", "test")
# The Dockerfiles' base image; small test containers run it too.
BASE_IMAGE = "debian:trixie-slim"


@functools.cache
def ensure_base_image() -> str:
    """BASE_IMAGE, pulled or (no registry) built with debootstrap when the engine lacks it.

    Integration tests that run before any stack is built need it on a fresh machine.
    """
    subprocess.run(
        ["bash", "scripts/build-base-image.sh", BASE_IMAGE], cwd=REPO, check=True, timeout=1800
    )
    return BASE_IMAGE


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
        return subprocess.run(
            ["make", "--no-print-directory", *targets, f"ENV_FILE={self.env_file}"],
            cwd=REPO,
            text=True,
            capture_output=True,
            check=check,
            timeout=3600,
        )

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

    def login(self, username: str) -> HubClient:
        """A session logged in through the hub's form; admins use the admin password."""
        client = self.client()
        admins = self.value("ADMIN_USERS").split(",")
        password = self.value(
            "SHARED_ADMIN_PASSWORD" if username in admins else "SHARED_USER_PASSWORD"
        )
        response = client.login(username, password)
        assert response.status_code == 200, response.text[:500]
        assert client.session.cookies.get("jupyterhub-session-id"), "login set no session"
        return client


def _remove_user_resources(network: str, usernames: list[str] | None = None) -> None:
    from labhub.contract import volume_name_for

    api = docker.from_env()
    for container in api.containers.list(all=True, filters={"name": f"{network}-user-"}):
        container.remove(force=True)
    for name in usernames or []:
        with contextlib.suppress(docker.errors.NotFound):
            api.volumes.get(volume_name_for(name, network)).remove(force=True)


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


@contextlib.contextmanager
def launched_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    https_port: int,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """`make up` with a test .env (CPU TensorFlow, loopback-only ports, its own names and
    `extra_env` on top), yielded running and always torn down with its users' volumes.

    Test modules that need another configuration (OAuth, GPUs, subdomains) make their
    own module-scoped fixture from this, under another name and port.
    """
    workdir = tmp_path_factory.mktemp(name)
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
        "LABHUB_VERSION": VERSION,
        "TENSORFLOW_PACKAGE": "tensorflow-cpu==2.21.0",
        "ADMIN_USERS": "admin",
        "USER_MEM_LIMIT": "3G",
        **users_network_for(https_port),
        # Tests log in hundreds of times a minute from one address (the login fuzz);
        # tests/test_front.py checks the default limit on a proxy of its own.
        "LOGIN_RATE_LIMIT": "100000",
        **(extra_env or {}),
    }
    env_file = workdir / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    domain = values["DOMAIN"]
    # A module may bring its own CERTS_DIR (e.g. a CA it made before the stack starts).
    certs = Path(values["CERTS_DIR"])
    stack = Stack(
        env_file, certs, f"https://{domain}:{https_port}", f"http://{domain}:{https_port - 363}"
    )
    up = stack.make("up", check=False)
    if up.returncode != 0:
        logs = stack.compose("logs", "--no-color", "--tail=200", check=False).stdout
        stack.compose("down", "-v", check=False)
        stack.remove_netguard_rules()
        pytest.fail(f"make up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}\n{logs}")
    try:
        yield stack
    finally:
        if os.environ.get("LABHUB_TEST_LOGS"):
            print(stack.compose("logs", "--no-color", "--tail=300", check=False).stdout)
        stack.compose("down", "-v", "--remove-orphans", check=False)
        _remove_user_resources(name, USERS_CREATED)
        stack.remove_netguard_rules()
