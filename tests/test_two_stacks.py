"""Two stacks on one engine keep their users' files apart, and a stack made before
volumes were per stack gets its users' files back with `make migrate-volumes`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import docker
import pytest
from stacks import HTTPS_PORT, STACK, USERS_CREATED, Stack, launched_stack

from testsupport.images import ensure_base_image

pytestmark = pytest.mark.e2e

SECOND = f"{STACK}two"


@pytest.fixture(scope="module")
def second_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Another stack on the same engine: another STACK_NAME and DOCKER_NETWORK."""
    with launched_stack(tmp_path_factory, SECOND, HTTPS_PORT + 7) as running:
        yield running


def test_the_same_username_on_two_stacks_has_two_homes(
    stack: Stack, second_stack: Stack, username: str
) -> None:
    first = stack.login(username)
    first.start_server(username)
    stack.run(first, username, "open('/home/jovyan/course1.txt', 'w').write('one')")
    second = second_stack.login(username)
    second.start_server(username)
    listing = second_stack.run(second, username, "import os; print(sorted(os.listdir()))")
    assert "course1.txt" not in listing
    second_stack.run(second, username, "open('/home/jovyan/course2.txt', 'w').write('two')")
    listing = stack.run(first, username, "import os; print(sorted(os.listdir()))")
    assert "course1.txt" in listing and "course2.txt" not in listing
    first.stop_server(username)
    second.stop_server(username)


def test_migrate_volumes_copies_files_from_the_shared_era_volume(second_stack: Stack) -> None:
    from labhub.contract import volume_name_for

    username = f"old-{uuid.uuid4().hex[:8]}"
    USERS_CREATED.append(username)
    # The user exists in this stack's hub but has not started a server since the upgrade
    # (a login would spawn one, which would create the new, empty volume first).
    admin = second_stack.admin()
    assert admin.api("POST", f"/users/{username}").status_code == 201
    engine = docker.from_env()
    shared = volume_name_for(username, "labhub")
    engine.volumes.create(shared)
    try:
        engine.containers.run(
            ensure_base_image(),
            ["sh", "-c", "echo 'from before' > /data/thesis.txt && chown -R 1000:100 /data"],
            volumes={shared: {"bind": "/data", "mode": "rw"}},
            network_mode="none",
            remove=True,
        )
        result = second_stack.make("migrate-volumes")
        # (Other users' shared-era volumes on this engine may be copied too: that is what
        # they shared. Only this user's line and "nothing skipped" are ours to check.)
        copied = f"{username}: {shared} -> {volume_name_for(username, SECOND)}"
        assert copied in result.stdout and ", 0 skipped" in result.stdout, result.stdout
        again = second_stack.make("migrate-volumes")
        assert copied not in again.stdout and "0 copied, 0 skipped" in again.stdout
        client = second_stack.login(username)
        client.start_server(username)
        text = second_stack.run(client, username, "print(open('thesis.txt').read())")
        assert text.strip() == "from before"
        client.stop_server(username)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(shared).remove(force=True)
