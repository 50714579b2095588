"""`make up` with ENGINE=swarm and REGISTRY: every users' image runs by the digest `make push`
recorded, on nodes that pull it from the registry.

The unit tests hold the wiring: IMAGE_DIGESTS (what `make push` records) turns the workspace
image and each WORKSPACE_IMAGES image, tags in .env and in profiles, into the registry's
digest references for the hub's spawner and the Docker proxy, and a tag without one is
refused naming `make push`.

The e2e test runs the README's commands on a two-engine test cluster (tests/swarmstack.py)
with Debian's docker-registry in the manager's network namespace, which wants a login for
every pull and push (tests/swarmstack.py PULL_LOGIN): the manager, the build host, holds
the hub, proxy and users' images; the worker holds none and has no login of its own. After
the admin's `docker login`, the real `make push`
pushes the TensorFlow workspace image and a second users' image (WORKSPACE_IMAGES), the real
`make up BUILD=no` reads the record and hands the nodes the pull login (REGISTRY_USERNAME),
and two students log in through nginx over TLS and
spawn: the worker's server runs the workspace image it pulled from the registry by digest.
An image tagged again after the push, or no record, stops `make up` naming `make push`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub.objects import Hub
from labhub.dockerpolicy import Refused
from labhub.dockerproxy import policy_from_env
from labhub.gpu.profiles import Profile, with_images
from labhub.settings import Settings, SettingsError
from labhub.swarmspawner import LabSwarmSpawner, swarm_spawner_config
from stacks import STACK, run_make
from swarm import run
from swarmlab import service_body, wait_for_running_task
from swarmstack import (
    EGRESS_IMAGE,
    HUB_IMAGE,
    NODE_PROXIES,
    PREFIX,
    PROXY_IMAGE,
    PULL_LOGIN,
    WORKSPACE_IMAGE,
    SwarmStack,
    make,
    served_by_digest,
    swarm_stack_up,
)

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.pushed import HUB, PUSHED, REGISTRY, TORCH, WORKSPACE, recorded, swarm_registry_env
from testsupport.swarmstandins import HubUser

# Its clusters: the `swarm` run of `make test` (tests/run-all.sh).
pytestmark = pytest.mark.swarm

WORKSPACE_PINNED, TORCH_PINNED, HUB_PINNED = PUSHED[WORKSPACE], PUSHED[TORCH], PUSHED[HUB]
# No record yet: each test gives its own IMAGE_DIGESTS.
SWARM_ENV = swarm_registry_env(NAMED_SERVERS="0", USER_INTERNET="false", IMAGE_DIGESTS="")
# What `make push` records for both users' images and the hub image (the nodes' proxies').
DIGESTS = recorded()


def settings_problems(env: dict[str, str]) -> str:
    try:
        Settings.from_env(env)
    except SettingsError as error:
        return str(error)
    return ""


# --- Unit: the record's digests, where each part takes them --------------------------------


@pytest.mark.unit
def test_swarm_settings_run_each_users_image_by_the_digest_make_push_recorded() -> None:
    settings = Settings.from_env({**SWARM_ENV, "IMAGE_DIGESTS": DIGESTS})
    assert settings.pinned_image("labhub/workspace:0.1.0") == WORKSPACE_PINNED
    assert settings.pinned_image("labhub/workspace-torch:0.1.0") == TORCH_PINNED
    # The spawner creates services of the workspace image's digest reference.
    config = swarm_spawner_config(settings)
    assert config["image"] == WORKSPACE_PINNED
    spawner = LabSwarmSpawner(user=HubUser("alice"), hub=Hub(), **config)
    assert spawner.service_image() == WORKSPACE_PINNED
    # The copy helpers of backups and moves run the nodes' proxies' image, as pulled.
    assert settings.copy_helper_image == HUB_PINNED


@pytest.mark.unit
def test_without_a_registry_the_copy_helpers_run_the_hub_image_by_tag() -> None:
    env = {**SWARM_ENV, "REGISTRY": "", "LABHUB_VERSION": "2.0.1"}
    assert Settings.from_env(env).copy_helper_image == "labhub/hub:2.0.1"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("digests", "missing"),
    [
        ("", "WORKSPACE_IMAGE='labhub/workspace:0.1.0'"),
        (f"labhub/workspace:0.1.0={WORKSPACE_PINNED}", "WORKSPACE_IMAGES='labhub/workspace-torch"),
        (
            f"labhub/workspace:0.1.0={WORKSPACE_PINNED},"
            f"labhub/workspace-torch:0.1.0=elsewhere.edu/workspace-torch@sha256:{'b' * 64}",
            "WORKSPACE_IMAGES='elsewhere.edu/workspace-torch",
        ),
        (
            f"labhub/workspace:0.1.0={WORKSPACE_PINNED},"
            f"labhub/workspace-torch:0.1.0={TORCH_PINNED}",
            "LABHUB_VERSION='labhub/hub:0.1.0'",
        ),
    ],
    ids=["no-record", "workspace-images-not-pushed", "another-registry", "hub-not-pushed"],
)
def test_a_users_image_without_a_digest_of_the_registry_is_refused_naming_make_push(
    digests: str, missing: str
) -> None:
    problems = settings_problems({**SWARM_ENV, "IMAGE_DIGESTS": digests})
    assert missing in problems and "run `make push`" in problems, problems


@pytest.mark.unit
@pytest.mark.parametrize(
    "env",
    [
        {**MINIMAL_ENV, "IMAGE_DIGESTS": DIGESTS},  # one host
        {**SWARM_ENV, "REGISTRY": "", "IMAGE_DIGESTS": DIGESTS},  # Swarm, no registry
    ],
    ids=["one-host", "no-registry"],
)
def test_digests_without_swarm_and_registry_are_refused_rather_than_half_used(
    env: dict[str, str],
) -> None:
    assert "IMAGE_DIGESTS is only for ENGINE=swarm with REGISTRY" in settings_problems(env)


@pytest.mark.unit
def test_a_record_that_is_not_tag_equals_digest_reference_is_refused() -> None:
    problems = settings_problems(
        {**SWARM_ENV, "IMAGE_DIGESTS": "labhub/workspace:0.1.0=registry/workspace:0.1.0"}
    )
    assert "IMAGE_DIGESTS" in problems and "<image:tag>=<name>@sha256:" in problems, problems


@pytest.mark.unit
def test_profiles_name_images_by_tag_and_run_their_digests() -> None:
    settings = Settings.from_env({**SWARM_ENV, "IMAGE_DIGESTS": DIGESTS})
    cpu = Profile(slug="cpu", display_name="CPU")
    torch = Profile(slug="torch", display_name="PyTorch", image="labhub/workspace-torch:0.1.0")
    resolved = with_images([cpu, torch], settings.allowed_images, settings.pinned_image)
    assert [profile.image for profile in resolved] == [WORKSPACE_PINNED, TORCH_PINNED]


@pytest.mark.unit
def test_the_swarm_proxy_allows_exactly_the_recorded_digests_of_allowed_images() -> None:
    env = {
        "PROXY_POLICY": "swarm",
        "DOCKER_NETWORK": "labhub",
        "FRONTEND_CONTAINERS": "labhub-hub",
        "REGISTRY": REGISTRY,
        # As compose gives it: the tags, then the record.
        "ALLOWED_IMAGES": "labhub/workspace:0.1.0,labhub/workspace-torch:0.1.0",
        "IMAGE_DIGESTS": DIGESTS,
    }
    check = policy_from_env(env)
    target = "/v1.41/services/create"
    for pinned in (WORKSPACE_PINNED, TORCH_PINNED):
        assert check("POST", target, service_body(image=pinned, network="labhub")).target
    for tagged in ("labhub/workspace:0.1.0", f"{REGISTRY}/workspace-torch:0.1.0"):
        with pytest.raises(Refused, match="not an allowed workspace image"):
            check("POST", target, service_body(image=tagged, network="labhub"))
    # An allowed image make push did not record: the proxy does not start.
    unrecorded = {**env, "IMAGE_DIGESTS": f"labhub/workspace:0.1.0={WORKSPACE_PINNED}"}
    with pytest.raises(SystemExit, match=r"workspace-torch:0\.1\.0.*run `make push`"):
        policy_from_env(unrecorded)
    # Without REGISTRY the tags, as before.
    untouched = policy_from_env({**env, "REGISTRY": "", "IMAGE_DIGESTS": ""})
    body = service_body(image="labhub/workspace:0.1.0", network="labhub")
    assert untouched("POST", target, body).target == target


# --- E2E: make push, make up, a student's server pulled by digest ---------------------------
EXTRA_IMAGE = f"labhub/workspace-extra:{WORKSPACE_IMAGE.rsplit(':', 1)[1]}"


@pytest.fixture(scope="module")
def registry_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    # A second users' image (WORKSPACE_IMAGES): any small image stands for it.
    run("docker", "tag", "debian:trixie-slim", EXTRA_IMAGE)
    try:
        with swarm_stack_up(
            tmp_path_factory.mktemp("swarm-images"),
            # The worker gets no image but what it pulls: the hub image for its node
            # proxy, the workspace image for a server.
            images=(),
            manager_images=(HUB_IMAGE, PROXY_IMAGE, EGRESS_IMAGE, WORKSPACE_IMAGE, EXTRA_IMAGE),
            extra={"WORKSPACE_IMAGES": EXTRA_IMAGE},
            registry=True,
        ) as running:
            yield running
    finally:
        run("docker", "image", "rm", EXTRA_IMAGE)


def record_of(stack: SwarmStack) -> Path:
    """Where `make push` wrote its record for this stack (PUSHED_IMAGES)."""
    [record] = [arg.split("=", 1)[1] for arg in stack.make_args if arg.startswith("PUSHED_IMAGES=")]
    return Path(record)


def recorded(stack: SwarmStack) -> dict[str, str]:
    [line] = re.findall(r"(?m)^IMAGE_DIGESTS=(\S+)$", record_of(stack).read_text())
    return dict(item.split("=", 1) for item in line.split(","))


def registry_digest(stack: SwarmStack, name: str, tag: str) -> str:
    """The digest the registry itself serves for `<REGISTRY>/<name>:<tag>`."""
    headers = run(
        "nsenter", f"--net=/run/netns/{stack.manager.name}",
        "curl", "--silent", "--fail", "--head", "--user", ":".join(PULL_LOGIN), "--header",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
        f"http://{stack.swarm.registry}/v2/labhub/{name}/manifests/{tag}",
    )  # fmt: skip
    [digest] = re.findall(r"(?im)^docker-content-digest: (sha256:[0-9a-f]{64})", headers)
    return digest


@pytest.mark.e2e
@pytest.mark.timeout(2400)
def test_make_up_runs_the_pushed_digest_on_a_node_that_pulls_it_from_the_registry(
    registry_stack: SwarmStack,
) -> None:
    stack, manager, worker = registry_stack, registry_stack.manager, registry_stack.swarm.workers[0]
    registry = f"{stack.swarm.registry}/labhub"
    version = WORKSPACE_IMAGE.rsplit(":", 1)[1]
    # make push recorded both users' images and the hub image, each as the registry's own
    # digest for its tag.
    digests = recorded(stack)
    assert digests == {
        WORKSPACE_IMAGE: f"{registry}/workspace@{registry_digest(stack, 'workspace', version)}",
        EXTRA_IMAGE: f"{registry}/workspace-extra@"
        + registry_digest(stack, "workspace-extra", version),
        HUB_IMAGE: f"{registry}/hub@{registry_digest(stack, 'hub', version)}",
    }
    pinned, hub_pinned = digests[WORKSPACE_IMAGE], digests[HUB_IMAGE]
    # The registry wants a login, as a campus registry does: anonymous, a manifest is refused.
    anonymous = run(
        "nsenter", f"--net=/run/netns/{manager.name}", "curl", "--silent", "--output",
        "/dev/null", "--write-out", "%{http_code}",
        f"http://{stack.swarm.registry}/v2/labhub/workspace/manifests/{version}",
    )  # fmt: skip
    assert anonymous == "401"
    # make up gave the record to the hub and the proxy.
    for container in ("hub", "docker-proxy-1"):
        env = json.loads(
            manager.docker("inspect", "--format", "{{json .Config.Env}}", f"{STACK}-{container}")
        )
        assert f"IMAGE_DIGESTS={','.join(f'{k}={v}' for k, v in digests.items())}" in env
    # The worker's node proxy runs the hub image it pulled by digest, its only image yet.
    assert json.loads(
        worker.docker("image", "inspect", "--format", "{{json .RepoDigests}}", hub_pinned)
    ) == [hub_pinned]
    hub_image = worker.docker("image", "inspect", "--format", "{{.Id}}", hub_pinned).strip()
    assert worker.docker("image", "ls", "--quiet", "--no-trunc").split() == [hub_image]
    proxy_task = worker.docker(
        "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={NODE_PROXIES}"
    ).split()
    assert len(proxy_task) == 1
    users = ("imgann", "imgbob")
    clients, nodes = {}, {}
    for user in users:
        client = clients[user] = stack.stack.client()
        login = client.login(user, stack.stack.ensure_account(user), follow=False)
        assert login.status_code == 302 and client.logged_in, login.text[:300]
        started = time.monotonic()
        client.start_server(user, timeout=900)
        print(f"{user}'s spawn: {time.monotonic() - started:.0f} s")
        response = client.session.get(stack.stack.base_url + f"/user/{user}/api", timeout=60)
        assert response.status_code == 200 and "version" in response.json(), response.text
        service = f"{PREFIX}-{user}"
        nodes[user] = wait_for_running_task(stack.swarm, service)
        spec_image = manager.docker(
            "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", service
        ).strip()
        assert spec_image == pinned
    # One server on each node: the worker's engine got the workspace image from the
    # registry, under the pushed digest only, and its container runs it.
    [on_worker] = [user for user in users if nodes[user] == worker.node_id]
    assert json.loads(
        worker.docker("image", "inspect", "--format", "{{json .RepoDigests}}", pinned)
    ) == [pinned]
    [container] = worker.docker(
        "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={PREFIX}-{on_worker}"
    ).split()
    image_id = worker.docker("inspect", "--format", "{{.Image}}", container).strip()
    assert set(worker.docker("image", "ls", "--quiet", "--no-trunc").split()) == {
        image_id,
        hub_image,
    }
    # make backup reads the worker's home through its proxy, with a copy helper of the image
    # the worker pulled for that proxy (it has no workspace image under a tag).
    backup = make(
        "backup", stack.env_file, stack.docker_host,
        f"BACKUP_ROOT={stack.env_file.parent / 'backups'}", f"ONLY_USERS={on_worker}",
    )  # fmt: skip
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    assert f"backup: {on_worker} (" in backup.stdout and "on its node" in backup.stdout
    # The registry wants a login for every pull, and the worker has none of its own: it
    # pulled both images with the pull login make up and the Docker proxy gave it.
    assert stack.registry_log is not None
    log = stack.registry_log.read_text()
    for repository, reference in (("labhub/workspace", pinned), ("labhub/hub", hub_pinned)):
        digest = reference.split("@", 1)[1]
        assert served_by_digest(log, worker.address, repository, digest), log[-2000:]
    for user in users:
        clients[user].stop_server(user)


@pytest.mark.e2e
def test_make_up_stops_naming_make_push_when_an_image_was_rebuilt_or_never_pushed(
    registry_stack: SwarmStack,
) -> None:
    stack, manager = registry_stack, registry_stack.manager
    record = record_of(stack)
    project = ("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={STACK}")

    def up() -> subprocess.CompletedProcess[str]:
        return make("up", stack.env_file, stack.docker_host, "BUILD=no", *stack.make_args)

    assert stack.make("down").returncode == 0
    # The extra image's tag moves to other bytes here, as a rebuild after the push does.
    manager.docker("tag", PROXY_IMAGE, EXTRA_IMAGE)
    stale = up()
    assert stale.returncode != 0
    assert f"{EXTRA_IMAGE} here is not the image make push recorded" in stale.stderr, stale.stderr
    assert "run make push" in stale.stderr
    assert not manager.docker(*project).strip()  # nothing started
    # No record at all.
    record.rename(record.with_suffix(".moved"))
    missing = up()
    assert missing.returncode != 0
    assert f"make up: {record} is missing" in missing.stderr, missing.stderr
    assert "run make push" in missing.stderr
    assert not manager.docker(*project).strip()


def pushed_images_check(
    tmp_path: Path, env: str, record: str | None
) -> subprocess.CompletedProcess[str]:
    """`make pushed-images` (make up's step before the settings check) with this .env and record."""
    (tmp_path / ".env").write_text(env)
    if record is not None:
        (tmp_path / "pushed-images.env").write_text(record)
    return run_make(
        "pushed-images",
        f"PUSHED_IMAGES={tmp_path / 'pushed-images.env'}",
        env_file=tmp_path / ".env",
        timeout=120,
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "env",
    ["ENGINE=swarm\n", "ENGINE=docker\nREGISTRY=registry.lab.example.edu:5000/labhub\n"],
    ids=["swarm-without-registry", "one-host-with-registry"],
)
def test_without_swarm_and_registry_make_up_needs_no_record(tmp_path: Path, env: str) -> None:
    checked = pushed_images_check(tmp_path, f"LABHUB_VERSION=0.1.0\n{env}", None)
    assert checked.returncode == 0 and not checked.stderr, checked.stderr


@pytest.mark.unit
def test_make_up_stops_on_a_record_without_a_users_image_naming_make_push(tmp_path: Path) -> None:
    env = (
        "LABHUB_VERSION=0.1.0\nENGINE=swarm\nREGISTRY=registry.lab.example.edu:5000/labhub\n"
        "WORKSPACE_IMAGES=labhub/workspace-torch:0.1.0\n"
    )
    # Pushed before WORKSPACE_IMAGES listed the PyTorch image.
    checked = pushed_images_check(
        tmp_path, env, f"IMAGE_DIGESTS=labhub/workspace:0.1.0={WORKSPACE_PINNED}\n"
    )
    assert checked.returncode != 0
    assert "has no digest for labhub/workspace-torch:0.1.0: run make push" in checked.stderr


@pytest.mark.unit
def test_make_up_stops_on_a_record_without_the_hub_image_the_node_proxies_run(
    tmp_path: Path,
) -> None:
    env = "LABHUB_VERSION=0.1.0\nENGINE=swarm\nREGISTRY=registry.lab.example.edu:5000/labhub\n"
    # Recorded by a make push that pushed the users' images only.
    checked = pushed_images_check(
        tmp_path, env, f"IMAGE_DIGESTS=labhub/workspace:0.1.0={WORKSPACE_PINNED}\n"
    )
    assert checked.returncode != 0
    assert "has no digest for labhub/hub:0.1.0: run make push" in checked.stderr
