"""Shared datasets on the real engine: read-only, for their groups only, nothing else mountable.

LabSpawner starts servers through our own instance of the Docker socket proxy (run as
its compose service runs it, with DATASETS set), for a user in the dataset's group and
for one outside it. What is mounted is read from the engine; what a student can do is
tried inside the container as the student's uid. Other host mounts are sent through
the proxy and the engine is asked afterwards whether such a container exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from labhub.contract import OWNER_LABEL
from labhub.spawner import LabSpawner
from stacks import STACK

from testsupport.dockerproxy import running_proxy
from testsupport.images import ensure_base_image
from testsupport.spawners import proxied_spawner

pytestmark = pytest.mark.integration
TEST_LABEL = "labhub.test=datasets"


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    return docker.from_env()


@pytest.fixture(scope="module")
def world(
    engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A network, a host-folder dataset for everyone, a volume dataset for `radiology`,
    and a proxy that knows both."""
    suffix = uuid.uuid4().hex[:6]
    network = f"{STACK}-dstest-{suffix}"
    folder = tmp_path_factory.mktemp("mnist")
    (folder / "train.idx").write_text("pixels\n")
    folder.chmod(0o755)
    volume = f"{STACK}-dstest-scans-{suffix}"
    image = ensure_base_image()
    labels = {"labhub.test": "datasets"}
    net = engine.networks.create(network, internal=True, labels=labels)
    engine.volumes.create(volume, labels=labels)
    # Put a file in the volume dataset (as an admin would), with the engine directly.
    engine.containers.run(
        image,
        ["sh", "-c", "echo scan > /v/scan.txt"],
        volumes={volume: {"bind": "/v"}},
        remove=True,
    )
    declared = json.dumps(
        [
            {"name": "mnist", "source": str(folder)},
            {"name": "scans", "source": volume, "groups": ["radiology"]},
        ]
    )
    try:
        with running_proxy(ALLOWED_IMAGES=image, DOCKER_NETWORK=network, DATASETS=declared) as port:
            yield {
                "network": network,
                "image": image,
                "port": port,
                "folder": folder,
                "datasets": declared,
            }
    finally:
        for container in engine.containers.list(all=True, filters={"label": TEST_LABEL}):
            container.remove(force=True)
        for container in engine.containers.list(all=True, filters={"network": network}):
            container.remove(force=True)
        net.remove()
        for name in [volume] + [v.name for v in engine.volumes.list(filters={"name": network})]:
            with contextlib.suppress(docker.errors.NotFound):
                engine.volumes.get(name).remove(force=True)


@contextlib.contextmanager
def server_of(world: dict[str, Any], groups: tuple[str, ...], tmp_path: Path) -> Iterator[str]:
    """Start a user's server with LabSpawner through the proxy; yield its container id.
    (Its home volume goes with the network, in `world`'s teardown.)"""
    username = f"dstest{uuid.uuid4().hex[:6]}"
    spawner = proxied_spawner(
        world["port"], world["image"], world["network"], tmp_path, username, groups,
        # The same DATASETS as the proxy's environment, as compose passes it to both.
        env={"DATASETS": world["datasets"]},
    )  # fmt: skip
    try:
        asyncio.run(spawner.start())
        assert spawner.container_id
        yield spawner.container_id
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(spawner.stop())
        LabSpawner._client = None
        engine = docker.from_env()
        for leftover in engine.api.containers(
            all=True, filters={"label": f"{OWNER_LABEL}={username}"}
        ):
            # AutoRemove may be removing it already (404 or 409).
            with contextlib.suppress(docker.errors.APIError):
                engine.api.remove_container(leftover["Id"], force=True)


def as_student(engine: docker.DockerClient, container: str, script: str) -> tuple[int, str]:
    """Run ``script`` in the container as the student's uid, as a terminal would."""
    code, output = engine.containers.get(container).exec_run(["sh", "-c", script], user="1000:100")
    return code, output.decode()


def dataset_mounts(engine: docker.DockerClient, container: str) -> dict[str, bool]:
    """Mount point -> writable, for /datasets/*, as the engine reports them."""
    mounts = engine.api.inspect_container(container)["Mounts"]
    return {m["Destination"]: m["RW"] for m in mounts if m["Destination"].startswith("/datasets")}


def test_a_group_member_gets_both_datasets_read_only_and_cannot_write(
    engine: docker.DockerClient, world: dict[str, Any], tmp_path: Path
) -> None:
    with server_of(world, ("radiology",), tmp_path) as container:
        assert dataset_mounts(engine, container) == {
            "/datasets/mnist": False,
            "/datasets/scans": False,
        }
        code, out = as_student(engine, container, "cat /datasets/mnist/train.idx /datasets/scans/*")
        assert (code, out) == (0, "pixels\nscan\n")
        for target in ("/datasets/mnist/new", "/datasets/scans/scan.txt"):
            code, out = as_student(engine, container, f"echo x > {target}")
            assert code != 0 and "Read-only file system" in out, out
        # Not even a root-like remount: the container has no capability to do it.
        code, out = as_student(engine, container, "mount -o remount,rw /datasets/mnist")
        assert code != 0, out
    assert sorted(p.name for p in world["folder"].iterdir()) == ["train.idx"]


def test_a_student_outside_the_group_does_not_see_its_dataset(
    engine: docker.DockerClient, world: dict[str, Any], tmp_path: Path
) -> None:
    with server_of(world, ("students",), tmp_path) as container:
        assert dataset_mounts(engine, container) == {"/datasets/mnist": False}
        code, out = as_student(engine, container, "ls /datasets")
        assert (code, out.split()) == (0, ["mnist"])


@pytest.mark.parametrize(
    "bind",
    [
        "/etc:/datasets/mnist:ro",
        "/:/host:ro",
        "/var/run/docker.sock:/var/run/docker.sock",
        "{folder}:/datasets/mnist:rw",
        "{folder}/..:/datasets/mnist:ro",
        "{folder}:/home/jovyan/mnist:ro",
    ],
)
def test_any_other_host_mount_is_refused_before_the_engine(
    engine: docker.DockerClient, world: dict[str, Any], bind: str
) -> None:
    name = f"{world['network']}-user-attack{uuid.uuid4().hex[:6]}"
    proxied = docker.APIClient(base_url=f"tcp://127.0.0.1:{world['port']}", version="1.41")
    host_config = proxied.create_host_config(
        binds=[bind.format(folder=world["folder"])],
        network_mode=world["network"],
        mem_limit="256m",
        nano_cpus=10**9,
        pids_limit=64,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
    )
    with pytest.raises(docker.errors.APIError) as error:
        proxied.create_container(
            world["image"],
            ["sleep", "60"],
            name=name,
            user="1000:100",
            labels={OWNER_LABEL: "attacker", "labhub.test": "datasets"},
            host_config=host_config,
        )
    assert error.value.status_code == 403 and "nor a declared dataset" in str(error.value)
    time.sleep(0.2)
    assert not engine.api.containers(all=True, filters={"name": name})
