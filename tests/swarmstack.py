"""`make up` with ENGINE=swarm on a test cluster (tests/swarm.py), for the tests that need the
whole platform on a Swarm: the .env, `make` against the manager's engine, and
`swarm_stack_up`, a cluster with the platform up on it.

The images reach the nodes without a registry (in their engines' data roots, tests/swarm.py)
unless a test brings them another way: the hub and proxy images to the manager, the workspace image
(TensorFlow, JupyterLab) to every node. With `registry`, Debian's docker-registry runs in
the manager's network namespace (`start_registry`) and the nodes pull from it what they lack.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
from labhub.contract import container_prefix
from stacks import (
    BUILD_ENV,
    HTTPS_PORT,
    STACK,
    VERSION,
    Stack,
    env_text,
    run_make,
    users_network_for,
)
from swarm import Node, Swarm, run

from testsupport.waiting import wait_until

HUB_IMAGE = f"labhub/hub:{VERSION}"
PROXY_IMAGE = f"labhub/proxy:{VERSION}"
EGRESS_IMAGE = f"labhub/egress:{VERSION}"
WORKSPACE_IMAGE = f"labhub/workspace:{VERSION}"
PROMETHEUS_IMAGE = f"labhub/prometheus:{VERSION}"
PREFIX = container_prefix(STACK)
# The nodes' Docker proxies' global service, as `make up` names it (the Makefile's NODE_PROXIES).
NODE_PROXIES = f"{STACK}-node-proxy"
# MONITORING=true: the nodes' read-only metrics proxies (the Makefile's METRICS_PROXIES).
METRICS_PROXIES = f"{STACK}-metrics-proxy"


def swarm_env(
    workdir: Path,
    manager_address: str,
    ports: tuple[int, int] = (HTTPS_PORT, HTTPS_PORT - 363),
    extra: Mapping[str, str] = {},
) -> Path:
    """A test stack's .env (tests/stacks.py's launched_stack) for ENGINE=swarm, nginx on the
    manager's address, on `ports` (HTTPS, HTTP); `extra` adds or overrides variables."""
    certs = workdir / "certs"
    certs.mkdir()
    values = {
        "ENGINE": "swarm",
        "STACK_NAME": STACK,
        "DOCKER_NETWORK": STACK,
        "DOMAIN": "localhost",
        # The certificate names the address this host reaches nginx at.
        "LAN_ADDRESSES": manager_address,
        "BIND_ADDRESS": manager_address,
        "HTTPS_PORT": str(ports[0]),
        "HTTP_PORT": str(ports[1]),
        "CERTS_DIR": str(certs),
        **BUILD_ENV,
        "ADMIN_USERS": "admin",
        "USER_MEM_LIMIT": "3G",
        # Swarm mode has no egress rules of its own yet; the test nodes have no route out.
        "USER_INTERNET": "false",
        # Compose's single-host file still names them, though Swarm mode does not use them.
        **users_network_for(HTTPS_PORT),
        "LOGIN_RATE_LIMIT": "100000",
        **extra,
    }
    env_file = workdir / ".env"
    env_file.write_text(env_text(values))
    return env_file


def make(
    target: str, env_file: Path, docker_host: str, *args: str, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`make TARGET` in this checkout, as an admin runs it, against the engine `docker_host`."""
    return run_make(target, *args, env_file=env_file, docker_host=docker_host, timeout=timeout)


def reach_from_the_host(swarm: Swarm) -> None:
    """Give this host the first address of the cluster's subnet on its bridge, so that it
    reaches the manager as a browser on the LAN would (removed with the bridge)."""
    subnet = ipaddress.ip_interface(f"{swarm.manager.address}/{swarm.prefix}").network
    run("ip", "addr", "add", f"{next(subnet.hosts())}/{swarm.prefix}", "dev", swarm.bridge)


@dataclass
class SwarmStack:
    swarm: Swarm
    stack: Stack
    env_file: Path
    docker_host: str
    # make's arguments for this stack (the record of `make push`, with a registry).
    make_args: tuple[str, ...] = ()
    # The test registry's log (its access log too), with a registry.
    registry_log: Path | None = None
    # What `make up` printed (its warnings among it).
    up_output: str = ""

    @property
    def manager(self) -> Node:
        return self.swarm.manager

    def make(self, target: str) -> subprocess.CompletedProcess[str]:
        return make(target, self.env_file, self.docker_host, *self.make_args)

    def node(self, node_id: str) -> Node:
        return next(node for node in self.swarm.nodes if node.node_id == node_id)

    def backup_into(self, root: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
        """`make backup` into `root`, as an admin runs it: its run and the one backup folder."""
        backup = make("backup", self.env_file, self.docker_host, f"BACKUP_ROOT={root}", timeout=600)
        assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
        [folder] = root.iterdir()
        return backup, folder


def link_each_nodes_socket(swarm: Swarm, engines: Path) -> str:
    """What a real node has at one path, its own engine's socket: here one link per node ID
    (the nodes share this host's filesystem, where /var/run/docker.sock is this host's
    engine). Returns the NODE_DOCKER_SOCKET template that names them."""
    engines.mkdir()
    for node in swarm.nodes:
        (engines / f"{node.node_id}.sock").symlink_to(node.socket)
    return f"{engines}/{{{{.Node.ID}}}}.sock"


@contextlib.contextmanager
def swarm_stack_up(
    workdir: Path,
    size: int = 2,
    extra: Mapping[str, str] = {},
    images: Sequence[str] = (WORKSPACE_IMAGE, HUB_IMAGE),
    manager_images: Sequence[str] = (PROXY_IMAGE, EGRESS_IMAGE),
    dockerd_args: Sequence[str] = (),
    extra_for: Callable[[Swarm], Mapping[str, str]] = lambda swarm: {},
    registry: bool = False,
    dockerd_path: Sequence[Path] = (),
) -> Iterator[SwarmStack]:
    """A `size`-engine test cluster with the platform up on it by `make up BUILD=no` (the
    images loaded, `extra` in its .env, and what `extra_for` makes of the cluster, e.g. an
    inventory naming node IDs; `dockerd_args` and `dockerd_path` for every node's engine);
    `make down` and the cluster removed after. The nodes' Docker proxies run the hub image on
    every node, each at its own engine's socket (`link_each_nodes_socket`). The hub's, CHP's
    and the proxy's last log lines are printed, for a failing test.

    With `registry`: a registry in the manager's namespace that every engine pulls from and
    that wants `PULL_LOGIN` for every pull and push, as a campus registry does; in the .env
    REGISTRY=<it>/labhub and that login as the nodes' pull login (REGISTRY_USERNAME); the
    admin's `docker login` (`admin_login`, in a Docker config of the test's) and the real
    `make push` (from the manager, which then needs the users' images in `manager_images`)
    before `make up`."""
    started = time.monotonic()
    with (
        Swarm(
            size, images=list(images), manager_images=list(manager_images),
            insecure_registry=registry, dockerd_args=dockerd_args, dockerd_path=dockerd_path,
        ) as swarm,
        contextlib.ExitStack() as cleanup,
    ):  # fmt: skip
        print(f"cluster with the images: {time.monotonic() - started:.0f} s")
        reach_from_the_host(swarm)
        registry_log, make_args, docker_config = None, (), None
        if registry:
            registry_root = workdir / "registry"
            registry_root.mkdir()
            cleanup.callback(stop_registry, start_registry(swarm, registry_root, PULL_LOGIN))
            registry_log = registry_root / "registry.log"
            username, password = PULL_LOGIN
            extra = {**extra, "REGISTRY": f"{swarm.registry}/labhub",
                     "REGISTRY_USERNAME": username, "REGISTRY_PASSWORD": password}  # fmt: skip
            make_args = (f"PUSHED_IMAGES={workdir / 'pushed-images.env'}",)
            docker_config = admin_login(swarm, workdir / "docker-config")
        sockets = link_each_nodes_socket(swarm, workdir / "engines")
        env_file = swarm_env(
            workdir,
            swarm.manager.address,
            extra={"NODE_DOCKER_SOCKET": sockets, **extra, **extra_for(swarm)},
        )
        running = SwarmStack(
            swarm,
            Stack(
                env_file,
                workdir / "certs",
                f"https://{swarm.manager.address}:{HTTPS_PORT}",
                f"http://{swarm.manager.address}:{HTTPS_PORT - 363}",
            ),
            env_file,
            f"unix://{swarm.manager.socket}",
            make_args,
            registry_log,
        )
        if registry:
            started = time.monotonic()
            pushed = run_make(
                "push", *make_args, env_file=env_file, docker_host=running.docker_host,
                docker_config=docker_config, timeout=1800,
            )  # fmt: skip
            print(f"make push: {time.monotonic() - started:.0f} s")
            assert pushed.returncode == 0, pushed.stdout[-4000:] + pushed.stderr[-4000:]
        started = time.monotonic()
        # The images are loaded, and the nodes have no way to a registry: nothing is built.
        up = make("up", env_file, running.docker_host, "BUILD=no", *make_args)
        print(f"make up: {time.monotonic() - started:.0f} s")
        running.up_output = up.stdout + up.stderr
        try:
            assert up.returncode == 0, f"make up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
            yield running
        finally:
            for container in ("hub", "proxy-chp", "docker-proxy-1"):  # shown when a test fails
                name = f"{STACK}-{container}"
                logs = subprocess.run(
                    ["docker", "-H", running.docker_host, "logs", "--tail=60", name],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                print(f"--- {container}\n{logs.stdout}{logs.stderr}")
            running.make("down")
            if registry_log is not None:
                print(registry_log.read_text()[-3000:])


# The test registry's one account, a campus registry's pull robot: nobody pulls without it.
PULL_LOGIN = ("robot-lab", "pull-t0ken")


def admin_login(swarm: Swarm, config: Path) -> Path:
    """What the admin does before `make push`: `docker login` to the test registry as
    PULL_LOGIN on the manager (the build host), kept in the Docker config `config`."""
    username, password = PULL_LOGIN
    run(
        "docker", "-H", f"unix://{swarm.manager.socket}", "login", "--username", username,
        "--password-stdin", swarm.registry, input=password,
        env={**os.environ, "DOCKER_CONFIG": str(config)},
    )  # fmt: skip
    return config


def start_registry(
    swarm: Swarm, root: Path, login: tuple[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Debian's docker-registry on the manager's address, storage under `root`; with
    `login` (username, password), that account's only, for pulls too (htpasswd, bcrypt)."""
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": swarm.registry},
    }
    if login:
        username, password = login
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        (root / "htpasswd").write_text(f"{username}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "labhub-test", "path": str(root / "htpasswd")}}
    (root / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    config_file = root / "config.yml"
    log = (root / "registry.log").open("ab")
    process = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{swarm.manager.name}", "docker-registry", "serve",
         str(config_file)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{(root / 'registry.log').read_text()}")
        # Up: /v2/ answers, 401 with a login.
        probe = ("curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}",
                 f"http://{swarm.registry}/v2/")  # fmt: skip
        code = run("nsenter", f"--net=/run/netns/{swarm.manager.name}", *probe, check=False)
        return code in ("200", "401")

    wait_until(answers, 30, "the test registry to answer", interval=0.2)
    return process


def served_by_digest(log: str, address: str, repository: str, digest: str) -> bool:
    """Whether the test registry's log shows it serving `repository`'s manifest by `digest`
    to `address` on a request it authorized (the registry has one account, PULL_LOGIN; its
    log names the account only on errors): the same request ID in both lines."""
    where = (f'http.request.remoteaddr="{address}:',
             f'http.request.uri="/v2/{repository}/manifests/{digest}"')  # fmt: skip
    ids: dict[str, set[str]] = {"authorized": set(), "served": set()}
    for line in log.splitlines():
        found = re.search(r"http\.request\.id=(\S+)", line)
        if found is None or not all(field in line for field in where):
            continue
        if 'msg="authorized request"' in line:
            ids["authorized"].add(found[1])
        elif 'msg="response completed"' in line and "http.response.status=200 " in line:
            ids["served"].add(found[1])
    return bool(ids["authorized"] & ids["served"])


def stop_registry(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
