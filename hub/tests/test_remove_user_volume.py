"""The remove-user-volume admin command, against the real Docker engine."""

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from labhub import homemove
from labhub.contract import volume_name_for
from labhub.swarmplacement import SwarmNode
from labhub.volumes import remove_from_nodes, remove_user_volume

from testsupport.dockerproxy import running_proxy
from testsupport.images import ensure_base_image

pytestmark = pytest.mark.integration
# A stack name no real stack uses: the test's volumes never meet a real user's.
NETWORK = "labhubvolumetest"


@pytest.fixture
def client() -> docker.DockerClient:
    try:
        api = docker.from_env()
        api.ping()
    except docker.errors.DockerException as error:
        pytest.skip(f"no Docker engine: {error}")
    return api


@pytest.fixture
def user_volume(client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    username = f"gone-{uuid.uuid4().hex[:8]}"
    volume = client.volumes.create(
        volume_name_for(username, NETWORK), labels={"labhub.test": "volumes"}
    )
    yield username, volume.name
    for leftover in client.volumes.list(filters={"label": "labhub.test=volumes"}):
        leftover.remove(force=True)


def hub_db(tmp_path: Path, *users: str) -> Path:
    path = tmp_path / "jupyterhub.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO users (name) VALUES (?)", [(u,) for u in users])
    return path


def test_refuses_while_the_user_exists(
    client: docker.DockerClient, user_volume: tuple[str, str], tmp_path: Path
) -> None:
    username, volume = user_volume
    with pytest.raises(SystemExit, match="still exists in the hub"):
        remove_user_volume(username, NETWORK, hub_db(tmp_path, username), client)
    assert client.volumes.get(volume)


def test_removes_a_deleted_users_volume(
    client: docker.DockerClient, user_volume: tuple[str, str], tmp_path: Path
) -> None:
    username, volume = user_volume
    report = remove_user_volume(username, NETWORK, hub_db(tmp_path, "someone-else"), client)
    assert report == f"removed {volume} ({username!r})"
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)


def test_refuses_while_a_container_uses_it(
    client: docker.DockerClient, user_volume: tuple[str, str], tmp_path: Path
) -> None:
    username, volume = user_volume
    container = client.containers.create(
        ensure_base_image(), "true", volumes={volume: {"bind": "/data", "mode": "rw"}}
    )
    try:
        with pytest.raises(SystemExit, match="is in use"):
            remove_user_volume(username, NETWORK, hub_db(tmp_path), client)
    finally:
        container.remove(force=True)


def test_in_swarm_mode_each_nodes_proxy_removes_it_and_a_silent_node_is_named(
    client: docker.DockerClient, user_volume: tuple[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The engine here behind a real node proxy (PROXY_POLICY=node) stands for node n1; n2
    is ready but its proxy does not answer: the volume goes from n1, which is said, and
    the command fails naming n2, whose copy, if any, stays. Still in use once a stopped
    server's container had time to go (here at once), it is refused."""
    monkeypatch.setattr(homemove, "OLD_VOLUME_WAIT", 0.0)
    username, volume = user_volume
    with running_proxy(
        PROXY_POLICY="node", ALLOWED_IMAGES=ensure_base_image(), DOCKER_NETWORK=NETWORK,
        DOCKER_SOCKET="/var/run/docker.sock",
    ) as port:  # fmt: skip
        proxies, db = {"n1": f"tcp://127.0.0.1:{port}"}, hub_db(tmp_path)
        nodes = [SwarmNode("n1", True, True), SwarmNode("n2", True, True)]
        container = client.containers.create(
            ensure_base_image(), "true", volumes={volume: {"bind": "/data", "mode": "rw"}}
        )
        try:
            with pytest.raises(SystemExit, match=f"{volume} on node n1 is still in use"):
                remove_from_nodes(username, NETWORK, db, proxies, nodes, False)
        finally:
            container.remove(force=True)
        with pytest.raises(SystemExit) as failed:
            remove_from_nodes(username, NETWORK, db, proxies, nodes, False)
    assert str(failed.value).splitlines() == [
        f"node n1: removed {volume} ({username!r})",
        "node n2 not reached (its Docker proxy does not answer): run this again once it is "
        "back, or its copy of the home, if any, stays",
    ]
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)
