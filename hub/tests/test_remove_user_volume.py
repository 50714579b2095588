"""The remove-user-volume admin command, against the real Docker engine."""

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from labhub.contract import volume_name_for
from labhub.volumes import remove_user_volume

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
