"""Images through a registry (REGISTRY, `make push`), pulled by digest on the Swarm nodes.

The unit tests hold the rules: what a digest reference of the registry is, the settings
check, and the Docker proxy of a Swarm manager admitting exactly the recorded digest.

The integration tests run Debian's `docker-registry` (the Distribution registry) in the
manager's network namespace of a real two-engine Swarm (tests/swarm.py). The manager
stands for the build host: it holds the built image and runs the real `make push`. The
worker gets nothing by `docker load`: its only source is the registry, which wants a login
for every pull and push (htpasswd), as a campus registry does: the admin's `docker login`
for `make push`; for the nodes, the pull login of the settings (REGISTRY_USERNAME), which
the Docker proxy adds to each user's service and `make up` to its global services. The
worker has no login of its own: an anonymous pull there fails. The engines trust
the test registry through `--insecure-registry` for its one address (plain HTTP on the
test bridge, which has no route off the machine): Docker's trust store for a TLS registry,
/etc/docker/certs.d/<host:port>/, is one folder for every engine of a machine, the shared
engine of this machine included. A lab uses TLS with its CA (docs/scale-out.md, "Images").
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyterhub.objects import Hub, Server
from labhub.contract import container_prefix
from labhub.dockerpolicy import Policy, Refused, check_swarm_request
from labhub.dockerproxy import policy_from_env
from labhub.registry import check_pinned, image_digests, is_digest_reference, registry_address
from labhub.settings import Settings, SettingsError
from labhub.swarmspawner import HOME_NODE_STATE, LabSwarmSpawner, swarm_spawner_config
from stacks import run_make
from swarm import STATE_ROOT, Swarm, run
from swarmlab import (
    HubUser,
    assert_reached_on_its_network,
    frontend_for,
    make_user_network,
    service_body,
    spawners_through,
    swarm_proxy,
    wait_for_running_task,
)
from swarmstack import (
    PULL_LOGIN,
    admin_login,
    served_by_digest,
    start_registry,
    stop_registry,
)
from tornado import web

from testsupport.dockerproxy import raw_request
from testsupport.images import REPO
from testsupport.minimal_env import MINIMAL_ENV
from testsupport.waiting import wait_until

# Its clusters: the `swarm` run of `make test` (tests/run-all.sh).
pytestmark = pytest.mark.swarm

REGISTRY = "registry.lab.example.edu:5000/labhub"
PINNED = f"{REGISTRY}/workspace@sha256:{'a' * 64}"


# --- Unit: the rules ----------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize(
    "raw", ["", "registry.lab.example.edu", "10.0.0.5:5000", "reg.example.edu:5000/lab/images"]
)
def test_a_registry_address_is_a_host_an_optional_port_and_path(raw: str) -> None:
    assert registry_address(raw) == raw


@pytest.mark.unit
@pytest.mark.parametrize(
    "raw", ["https://reg.example.edu", "reg.example.edu/lab:0.1.0", "Reg.Example.edu", "reg/"]
)
def test_a_registry_address_with_a_scheme_tag_or_capitals_is_refused_with_an_example(
    raw: str,
) -> None:
    with pytest.raises(ValueError, match=r"host\[:port\]\[/path\].*e\.g\. registry\.lab"):
        registry_address(raw)


@pytest.mark.unit
@pytest.mark.parametrize(
    "image",
    [
        f"{REGISTRY}/workspace:0.1.0",  # a tag: the registry can point it at other bytes
        f"{REGISTRY}/workspace@sha256:{'a' * 63}",  # not a whole digest
        f"elsewhere.example.edu/labhub/workspace@sha256:{'a' * 64}",  # another registry
        f"{REGISTRY}evil/workspace@sha256:{'a' * 64}",  # a registry path that only starts so
        "labhub/workspace:0.1.0",
    ],
)
def test_only_a_digest_reference_in_the_registry_is_pinned(image: str) -> None:
    with pytest.raises(ValueError, match="run `make push`"):
        check_pinned(REGISTRY, image)
    assert check_pinned(REGISTRY, PINNED) == PINNED
    assert is_digest_reference(PINNED)


def settings_problems(**env: str) -> str:
    try:
        Settings.from_env({**MINIMAL_ENV, **env})
    except SettingsError as error:
        return str(error)
    return ""


@pytest.mark.unit
def test_swarm_settings_with_a_registry_refuse_a_workspace_image_by_tag() -> None:
    tagged = settings_problems(
        ENGINE="swarm", REGISTRY=REGISTRY, WORKSPACE_IMAGE=f"{REGISTRY}/workspace:0.1.0"
    )
    assert "WORKSPACE_IMAGE=" in tagged and "run `make push`" in tagged
    pinned = settings_problems(ENGINE="swarm", REGISTRY=REGISTRY, WORKSPACE_IMAGE=PINNED)
    assert "WORKSPACE_IMAGE" not in pinned  # (ENGINE=swarm itself is still refused)
    # One host, no registry: the tag as before.
    assert not settings_problems(WORKSPACE_IMAGE="labhub/workspace:0.1.0")
    assert Settings.from_env({**MINIMAL_ENV}).registry == ""


# The same name with another tag or digest, the local tag, another image.
NOT_THE_PINNED_IMAGE = [
    f"{REGISTRY}/workspace:0.1.0",
    f"{REGISTRY}/workspace@sha256:{'b' * 64}",
    "labhub/workspace:0.1.0",
    f"{REGISTRY}/other@sha256:{'a' * 64}",
]


@pytest.mark.unit
@pytest.mark.parametrize("image", NOT_THE_PINNED_IMAGE)
def test_the_swarm_proxy_creates_services_of_the_recorded_digest_only(image: str) -> None:
    policy = Policy(allowed_images=frozenset({PINNED}), network="labhub")
    target = "/v1.41/services/create"
    pinned = service_body(image=PINNED, network="labhub")
    assert check_swarm_request(policy, "POST", target, pinned).target == target
    with pytest.raises(Refused, match="not an allowed workspace image"):
        check_swarm_request(policy, "POST", target, service_body(image=image, network="labhub"))


@pytest.mark.unit
def test_the_swarm_proxy_inspects_the_recorded_digest_as_docker_py_escapes_it() -> None:
    policy = Policy(allowed_images=frozenset({PINNED}), network="labhub")
    # docker-py quotes "@" as %40 in the path; the engine reads it as "@".
    escaped = PINNED.replace("@", "%40")
    allowed = check_swarm_request(policy, "GET", f"/v1.41/images/{escaped}/json", b"")
    assert allowed.target == f"/v1.41/images/{PINNED}/json"
    other = f"{REGISTRY}/workspace%40sha256:{'b' * 64}"
    with pytest.raises(Refused, match="not an allowed workspace image"):
        check_swarm_request(policy, "GET", f"/v1.41/images/{other}/json", b"")
    # Other escapes stay refused: the engine would decode them into another path.
    with pytest.raises(Refused, match="no %-escapes"):
        check_swarm_request(policy, "GET", f"/v1.41/images/{escaped}%2Fx/json", b"")


@pytest.mark.unit
def test_a_swarm_proxy_with_a_registry_refuses_to_start_on_a_tag() -> None:
    env = {
        "PROXY_POLICY": "swarm",
        "REGISTRY": REGISTRY,
        "DOCKER_NETWORK": "labhub",
        "FRONTEND_CONTAINERS": "labhub-hub",
    }
    with pytest.raises(SystemExit, match=r"ALLOWED_IMAGES holds .*workspace:0\.1\.0.*make push"):
        policy_from_env({**env, "ALLOWED_IMAGES": f"{REGISTRY}/workspace:0.1.0"})
    assert policy_from_env({**env, "ALLOWED_IMAGES": PINNED})


def swarm_spawner(user: str, image: str, registry: str, network: str) -> LabSwarmSpawner:
    settings = Settings.from_env(
        {**MINIMAL_ENV, "DOCKER_NETWORK": network, "WORKSPACE_IMAGE": image, "REGISTRY": registry}
    )
    spawner = LabSwarmSpawner(
        user=HubUser(user), hub=Hub(), cmd=["perl", "-e", USER_SERVER, "--"],
        frontend_containers=[frontend_for(network)], **swarm_spawner_config(settings),
    )  # fmt: skip
    spawner.server = Server(base_url=f"/user/{user}/")
    return spawner


@pytest.mark.unit
def test_the_spawner_with_a_registry_never_creates_a_service_from_a_tag() -> None:
    spawner = swarm_spawner("alice", f"{REGISTRY}/workspace:0.1.0", REGISTRY, "labhub")
    with pytest.raises(web.HTTPError) as refused:
        spawner.service_image()
    assert refused.value.status_code == 500 and "run `make push`" in str(refused.value.log_message)
    assert swarm_spawner("alice", PINNED, REGISTRY, "labhub").service_image() == PINNED


# --- Integration: a registry, `make push`, and a worker that pulls by digest --------------
# The user's "server": a one-line perl server (perl-base is in the base image).
USER_SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8888, Listen => 5, "
    "ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c "
    '"hello from $ENV{JUPYTERHUB_USER}\\n"; close $c }'
)
# Any small image stands for the workspace on its way through the registry.
BASE_IMAGE = "debian:trixie-slim"
VERSION = "regtest"
NETWORK = os.environ.get("LABHUB_TEST_STACK", "lhreg")


@dataclass
class RegistryCluster:
    swarm: Swarm
    registry: str  # REGISTRY: host:port/path
    registry_log: Path
    pinned: str  # what make push recorded
    proxy_port: int
    process: subprocess.Popen[bytes] | None = None
    hub_pinned: str = ""  # the hub image, as make push recorded it

    @property
    def worker(self) -> Any:
        return self.swarm.workers[0]

    def in_manager_namespace(self, *command: str, check: bool = True) -> str:
        return run("nsenter", f"--net=/run/netns/{self.swarm.manager.name}", *command, check=check)

    def manifest_digest(self, reference: str) -> str:
        """The digest the registry itself serves for `<REGISTRY>/workspace:<reference>`."""
        headers = self.in_manager_namespace(
            "curl", "--silent", "--fail", "--head", "--user", ":".join(PULL_LOGIN), "--header",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
            f"http://{self.swarm.registry}/v2/labhub/workspace/manifests/{reference}",
        )  # fmt: skip
        [digest] = re.findall(r"(?im)^docker-content-digest: (sha256:[0-9a-f]{64})", headers)
        return digest

    def spawner(self, user: str, home: str) -> LabSwarmSpawner:
        spawner = swarm_spawner(user, self.pinned, self.registry, NETWORK)
        spawner.load_state({HOME_NODE_STATE: home})
        return spawner


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryCluster]:
    """Two engines; a registry on the manager that wants a login (PULL_LOGIN), pushes and
    pulls alike; the base image built (loaded) on the manager only, tagged as the workspace
    and pushed there by `make push` after the admin's `docker login`; the proxy in front of
    the manager admitting what `make push` recorded, with the pull login of the settings."""
    root = tmp_path_factory.mktemp("registry")
    with Swarm(2, manager_images=[BASE_IMAGE], insecure_registry=True) as swarm:
        registry = start_registry(swarm, root, login=PULL_LOGIN)
        try:
            manager = swarm.manager
            # The base image stands for the workspace image and for the hub image (the
            # nodes' proxies run it), which make push both pushes.
            manager.docker("tag", BASE_IMAGE, f"labhub/workspace:{VERSION}")
            manager.docker("tag", BASE_IMAGE, f"labhub/hub:{VERSION}")
            env_file, record = root / "env", root / "pushed-images.env"
            registry_setting = f"{swarm.registry}/labhub"
            env_file.write_text(f"LABHUB_VERSION={VERSION}\nREGISTRY={registry_setting}\n")
            # What the admin does first: `docker login` (kept in a config of the test's).
            logins = admin_login(swarm, root / "docker-config")
            username, password = PULL_LOGIN
            pushed = run_make(
                "push", f"PUSHED_IMAGES={record}", env_file=env_file,
                docker_host=f"unix://{manager.socket}", docker_config=logins, timeout=300,
            )  # fmt: skip
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
            [recorded] = re.findall(r"(?m)^IMAGE_DIGESTS=(\S+)$", record.read_text())
            digests = image_digests(recorded)
            pinned = digests[f"labhub/workspace:{VERSION}"]
            manager.docker("network", "create", "--driver", "overlay", "--attachable", NETWORK)
            with (
                swarm_proxy(
                    swarm, NETWORK, BASE_IMAGE, ALLOWED_IMAGES=pinned, REGISTRY=registry_setting,
                    REGISTRY_USERNAME=username, REGISTRY_PASSWORD=password,
                ) as port,
                spawners_through(port),
            ):  # fmt: skip
                yield RegistryCluster(
                    swarm, registry_setting, root / "registry.log", pinned, port, registry,
                    hub_pinned=digests[f"labhub/hub:{VERSION}"],
                )  # fmt: skip
        finally:
            stop_registry(registry)
            print((root / "registry.log").read_text()[-3000:])  # shown when a test fails
    assert not [node.name for node in swarm.nodes if (STATE_ROOT / node.name).exists()]


def worker_images(cluster: RegistryCluster) -> list[str]:
    return cluster.worker.docker("image", "ls", "--quiet", "--no-trunc").split()


def run_server(cluster: RegistryCluster, user: str, home: str) -> LabSwarmSpawner:
    spawner = cluster.spawner(user, home)
    assert_reached_on_its_network(asyncio.run(spawner.start()))
    return spawner


@pytest.mark.integration
def test_make_push_records_the_registrys_digest_and_the_worker_pulls_and_runs_exactly_it(
    cluster: RegistryCluster,
) -> None:
    # The record is the registry's own digest for the pushed tag, as a reference by digest.
    digest = cluster.manifest_digest(VERSION)
    assert cluster.pinned == f"{cluster.registry}/workspace@{digest}"
    # The worker has no image at all: nothing was loaded there, and it has no login of
    # its own for the registry.
    assert worker_images(cluster) == []
    anonymous = cluster.worker.docker("pull", cluster.pinned, check=False)
    assert worker_images(cluster) == [], anonymous
    spawner = run_server(cluster, "alice", cluster.worker.node_id)
    try:
        service = f"{container_prefix(NETWORK)}-alice"
        assert wait_for_running_task(cluster.swarm, service) == cluster.worker.node_id
        # The service names the digest, not a tag.
        spec_image = cluster.swarm.manager.docker(
            "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", service
        ).strip()
        assert spec_image == cluster.pinned
        # The manager keeps the pull login for the node, and shows it to nobody.
        inspected = cluster.swarm.manager.docker("service", "inspect", service)
        assert PULL_LOGIN[1] not in inspected and "RegistryAuth" not in inspected, inspected
        # The worker's engine holds the image under that digest, and its container runs it.
        repo_digests = json.loads(
            cluster.worker.docker("image", "inspect", "--format", "{{json .RepoDigests}}",
                                  cluster.pinned)
        )  # fmt: skip
        assert repo_digests == [cluster.pinned]
        [container] = cluster.worker.docker(
            "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={service}"
        ).split()
        image_id = cluster.worker.docker("inspect", "--format", "{{.Image}}", container).strip()
        assert worker_images(cluster) == [image_id]
        # The registry served that manifest, by digest, to the worker's address, signed in
        # as the pull login.
        log = cluster.registry_log.read_text()
        worker = cluster.worker.address
        assert served_by_digest(log, worker, "labhub/workspace", digest), log[-2000:]
    finally:
        asyncio.run(spawner.stop())


@pytest.mark.integration
@pytest.mark.parametrize("image", ["tag", "other-digest", "local-tag", "base-image"])
def test_the_proxy_refuses_a_service_of_any_image_but_the_recorded_digest(
    cluster: RegistryCluster, image: str
) -> None:
    name, tag = cluster.pinned.split("@")[0], f"workspace:{VERSION}"
    attack = {
        "tag": f"{cluster.registry}/{tag}",  # pushed, exists in the registry and on the manager
        "other-digest": f"{name}@sha256:{'b' * 64}",
        "local-tag": f"labhub/{tag}",
        "base-image": BASE_IMAGE,
    }[image]
    status, answer = raw_request(
        cluster.proxy_port,
        "POST",
        "/v1.41/services/create",
        service_body(image=attack, network=NETWORK),
    )
    assert status == 403 and "not an allowed workspace image" in answer, answer
    services = cluster.swarm.manager.docker("service", "ls", "--format", "{{.Name}}").split()
    assert f"{container_prefix(NETWORK)}-mallory" not in services
    # The same request with the recorded digest reaches the engine: the refusal was the image.
    make_user_network(cluster.proxy_port, network=NETWORK)
    status, answer = raw_request(
        cluster.proxy_port, "POST", "/v1.41/services/create",
        service_body(image=cluster.pinned, network=NETWORK),
    )  # fmt: skip
    assert status == 201, answer
    created = json.loads(answer)["ID"]
    assert raw_request(cluster.proxy_port, "DELETE", f"/v1.41/services/{created}")[0] == 200


@pytest.mark.integration
def test_the_spawner_reads_the_image_by_digest_through_the_proxy_on_the_manager(
    cluster: RegistryCluster,
) -> None:
    """What DockerSpawner does without a `cmd` (the workspace image's own command): inspect
    the image on the manager, which holds it as the build host, by digest through docker-py,
    which escapes the "@"."""
    spawner = cluster.spawner("bob", cluster.worker.node_id)

    async def inspect() -> dict[str, Any]:
        return dict(await spawner.docker("inspect_image", cluster.pinned))

    inspected = asyncio.run(inspect())
    # (The manager holds it as the hub image too, under that name's digest reference.)
    assert cluster.pinned in inspected["RepoDigests"]
    other = cluster.pinned.split("@")[0] + "%40sha256:" + "b" * 64
    status, answer = raw_request(cluster.proxy_port, "GET", f"/v1.41/images/{other}/json")
    assert status == 403 and "not an allowed workspace image" in answer


def worker_task_state(cluster: RegistryCluster, service: str) -> str:
    """The state and error of the service's task on the worker, as `docker service ps`."""
    return cluster.swarm.manager.docker(
        "service", "ps", "--no-trunc", "--filter", f"node={cluster.worker.node_id}",
        "--format", "{{.CurrentState}} {{.Error}}", service,
    ).strip()  # fmt: skip


@pytest.mark.integration
def test_make_ups_global_services_pull_with_the_settings_login_not_the_admins(
    cluster: RegistryCluster, tmp_path: Path
) -> None:
    """How `make up` creates the nodes' Docker proxies and diskquota service
    (scripts/swarm-manager.sh's service_create), of the hub image as make push pushed it:
    the worker pulls it with ENV_FILE's pull login; without one it cannot (this Docker CLI
    has no login of its own for the registry either)."""
    name = f"{NETWORK}-global-pull"
    create = (
        "source scripts/swarm-manager.sh && service_create --detach --quiet --name "
        f"{name} --mode global --no-resolve-image {cluster.hub_pinned} sleep infinity"
    )
    env_file = tmp_path / "env"
    manager = {**os.environ, "DOCKER_HOST": f"unix://{cluster.swarm.manager.socket}",
               "DOCKER_CONFIG": str(tmp_path / "no-login"), "ENV_FILE": str(env_file)}  # fmt: skip
    username, password = PULL_LOGIN
    try:
        env_file.write_text(f"REGISTRY={cluster.registry}\n")
        run("bash", "-c", create, cwd=REPO, env=manager)
        refused = wait_until(
            lambda: worker_task_state(cluster, name), 60, "the worker to fail the pull",
            done=lambda state: "No such image" in state or "denied" in state,
        )  # fmt: skip
        assert not cluster.worker.docker("image", "ls", "--quiet", cluster.hub_pinned), refused
        run("docker", "service", "rm", name, env=manager)
        env_file.write_text(
            f"REGISTRY={cluster.registry}\nREGISTRY_USERNAME={username}\n"
            f"REGISTRY_PASSWORD={password}\n"
        )
        run("bash", "-c", create, cwd=REPO, env=manager)
        wait_until(
            lambda: worker_task_state(cluster, name), 120, "the worker's task to run",
            done=lambda state: state.startswith("Running"),
        )  # fmt: skip
        assert cluster.worker.docker("image", "ls", "--quiet", cluster.hub_pinned).strip()
        assert not (tmp_path / "no-login").exists()  # the caller's Docker config untouched
    finally:
        run("docker", "service", "rm", name, env=manager, check=False)


@pytest.mark.integration
def test_a_registry_that_is_down_stops_only_spawns_on_nodes_without_the_image(
    cluster: RegistryCluster,
) -> None:
    service = f"{container_prefix(NETWORK)}-carol"
    assert cluster.process is not None
    stop_registry(cluster.process)
    # The worker pulled the image before: it runs without the registry.
    spawner = run_server(cluster, "carol", cluster.worker.node_id)
    asyncio.run(spawner.stop())
    wait_until(
        lambda: not cluster.worker.docker("ps", "-aq", "--filter", f"name={service}"),
        60,
        "carol's task to be gone from the worker",
    )
    # Without the image there, the spawn fails at once, naming the image and the registry.
    cluster.worker.docker("image", "rm", cluster.pinned)
    spawner = cluster.spawner("carol", cluster.worker.node_id)
    try:
        with pytest.raises(web.HTTPError) as failed:
            asyncio.run(spawner.start())
        message = str(failed.value.log_message)
        assert failed.value.status_code == 503
        assert f"could not get the image {cluster.pinned}" in message
        assert f"from the registry {cluster.registry}" in message
        assert "No such image" in message and "docker service ps" in message
    finally:
        asyncio.run(spawner.stop())


def make_push(tmp_path: Path, env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "env").write_text(env)
    return run_make(
        "push", f"PUSHED_IMAGES={tmp_path / 'pushed.env'}", env_file=tmp_path / "env", timeout=120
    )


@pytest.mark.unit
def test_make_push_without_a_registry_says_which_setting_is_missing_and_records_nothing(
    tmp_path: Path,
) -> None:
    pushed = make_push(tmp_path, "LABHUB_VERSION=regtest\n")
    assert pushed.returncode != 0
    assert "REGISTRY is empty in the env file" in pushed.stderr
    assert not (tmp_path / "pushed.env").exists()


@pytest.mark.integration
def test_make_push_of_an_image_not_built_here_says_make_build(tmp_path: Path) -> None:
    pushed = make_push(tmp_path, "LABHUB_VERSION=never-built\nREGISTRY=127.0.0.1:9/labhub\n")
    assert pushed.returncode != 0
    assert "labhub/workspace:never-built is not built on this Docker host" in pushed.stderr
    assert "make build" in pushed.stderr
    assert not (tmp_path / "pushed.env").exists()
