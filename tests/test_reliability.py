"""Reliability, end to end: what survives a hub restart, a proxy restart, a killed
container, an image upgrade, and a backup/restore round trip.

Every check runs against the real test stack (`make up`), through nginx on https;
Docker is only used to do the damage (restart, kill) and to look at containers.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from stacks import STACK, USERS_CREATED, VERSION, Stack

from testsupport.containers import user_container
from testsupport.hubclient import HubClient, Kernel
from testsupport.waiting import wait_until

pytestmark = pytest.mark.e2e

# How long a restarted proxy may take to serve every user again: the hub re-adds
# missing routes every `last_activity_interval` (30 s), plus the proxy's own start.
ROUTES_BACK_WITHIN = 60.0


# --- helpers -------------------------------------------------------------------------
def wait_hub_healthy(stack: Stack, timeout: float = 180) -> float:
    """Poll the hub's health endpoint through nginx; return the seconds it took."""
    session = requests.Session()
    session.trust_env = False
    session.verify = stack.ca_file
    start = time.monotonic()
    wait_until(
        lambda: session.get(stack.base_url + "/hub/health", timeout=5).status_code,
        timeout,
        "the hub's /hub/health to answer 200",
        done=lambda status: status == 200,
        ignoring=(requests.RequestException,),
    )
    return time.monotonic() - start


def server_status(stack: Stack, username: str, token: str) -> requests.Response:
    """The user's own server's /api/status through nginx and the proxy (no redirects)."""
    session = requests.Session()
    session.trust_env = False
    return session.get(
        f"{stack.base_url}/user/{username}/api/status",
        headers={"Authorization": f"token {token}"},
        verify=stack.ca_file,
        allow_redirects=False,
        timeout=10,
    )


def routed(stack: Stack, username: str, token: str) -> bool:
    """True when the proxy sends /user/<name>/ to the user's server (not the hub)."""
    try:
        response = server_status(stack, username, token)
    except requests.RequestException:
        return False
    return response.status_code == 200 and "started" in response.json()


def started_user(stack: Stack, username: str) -> tuple[HubClient, str]:
    client = stack.login(username)
    client.start_server(username)
    return client, client.new_token(username)


# --- hub restart ------------------------------------------------------------------------
def test_hub_restart_keeps_servers_running_and_reachable(stack: Stack, username: str) -> None:
    client, token = started_user(stack, username)
    before = user_container(STACK, username).id
    kernel = Kernel(stack.base_url, stack.ca_file, username, token)
    kernel.execute("x = 6 * 7\nopen('/home/jovyan/notes.txt', 'w').write('before restart')")
    assert routed(stack, username, token)  # also fills the server's token cache

    # While the hub is down, the user's server keeps answering through the proxy.
    stack.compose("stop", "hub")
    try:
        response = server_status(stack, username, token)
        assert response.status_code == 200, response.text[:300]
        assert kernel.execute("", "x") == "42"
    finally:
        stack.compose("start", "hub")
        wait_hub_healthy(stack)

    # A plain restart, as an admin would do it after changing .env.
    stack.compose("restart", "hub")
    wait_hub_healthy(stack)

    container = user_container(STACK, username)
    assert container.id == before, "the hub restart replaced the user's container"
    assert container.status == "running"
    # The hub picked the server back up: ready, same container, same kernel state, files.
    client = stack.login(username)
    model = client.api("GET", f"/users/{username}").json()
    assert model["servers"][""]["ready"], model
    assert kernel.execute("", "x") == "42"
    assert kernel.execute("", "open('/home/jovyan/notes.txt').read()") == "'before restart'"
    assert routed(stack, username, client.new_token(username))
    client.stop_server(username)


# --- proxy restart -----------------------------------------------------------------------
def test_proxy_restart_restores_every_route(stack: Stack, username: str) -> None:
    second = username + "-b"
    USERS_CREATED.append(second)
    users = {name: started_user(stack, name) for name in (username, second)}
    for name, (_, token) in users.items():
        assert routed(stack, name, token)

    stack.compose("restart", "proxy-chp")
    restarted = time.monotonic()
    # A restarted configurable-http-proxy has an empty routing table: until the hub
    # re-adds the routes, /user/<name>/ falls through to the hub.
    wait_until(
        lambda: sorted(
            name for name, (_, token) in users.items() if not routed(stack, name, token)
        ),
        ROUTES_BACK_WITHIN + 30,
        "every user's route back in the restarted proxy (names: still missing)",
        done=lambda missing: not missing,
    )
    took = time.monotonic() - restarted
    assert took <= ROUTES_BACK_WITHIN, f"routes came back after {took:.0f} s"
    print(f"every route back {took:.1f} s after the proxy restart")
    for name, (client, _) in users.items():
        assert stack.run(client, name, "print(1 + 1)").strip() == "2"
        client.stop_server(name)


# --- killed container --------------------------------------------------------------------
def test_killed_container_starts_again_with_files(stack: Stack, username: str) -> None:
    client, _ = started_user(stack, username)
    stack.run(client, username, "open('/home/jovyan/data.csv', 'w').write('a,b\\n1,2\\n')")
    killed = user_container(STACK, username)
    killed.kill()

    # The user just asks again: the hub polls the dead container and starts a new one.
    def asked_again() -> bool:
        response = client.api("POST", f"/users/{username}/server")
        # 400 "already running" until the hub's poll has noticed the dead container.
        assert response.status_code in (201, 202, 400), response.text
        return response.status_code != 400

    wait_until(asked_again, 120, "the hub to notice the killed container", interval=2)
    client.wait_ready(username)
    assert user_container(STACK, username).id != killed.id
    output = stack.run(client, username, "print(open('/home/jovyan/data.csv').read())")
    assert output == "a,b\n1,2\n\n"
    client.stop_server(username)


# --- backup and restore ------------------------------------------------------------------
def stop_every_server(admin: HubClient) -> None:
    """What a whole restore asks of the admin first (the admin panel's Stop All)."""
    for user in admin.api("GET", "/users").json():
        if user.get("servers"):
            admin.stop_server(user["name"])


def backup_of(stack: Stack, root: str, username: str) -> Path:
    """`make backup` of the databases and only this user's files; the folder it wrote."""
    backup = stack.make("backup", f"BACKUP_ROOT={root}", f"ONLY_USERS={username}")
    folder = Path(backup.stdout.strip().splitlines()[-1].split()[-1])
    assert folder.is_dir(), backup.stdout
    return folder


def test_backup_and_whole_restore_round_trip(stack: Stack, username: str) -> None:
    from labhub.contract import volume_name_for

    client, _ = started_user(stack, username)
    stack.run(client, username, "open('/home/jovyan/results.txt', 'w').write('epoch 12: 99.1%')")
    client.stop_server(username)
    admin = stack.admin()
    created = admin.api("POST", f"/users/{username}-later")
    assert created.status_code == 201, created.text
    USERS_CREATED.append(f"{username}-later")

    with tempfile.TemporaryDirectory() as tmp:
        folder = backup_of(stack, tmp, username)
        assert (folder / "jupyterhub.sqlite").stat().st_size > 0
        assert (folder / "volumes" / f"{volume_name_for(username, STACK)}.tar.gz").is_file()

        # Disaster: the users' records in the hub and the user's volume are gone.
        for name in (username, f"{username}-later"):
            deleted = admin.api("DELETE", f"/users/{name}")
            assert deleted.status_code == 204, deleted.text
        with contextlib.suppress(docker.errors.NotFound):  # the hub may have removed it
            docker.from_env().volumes.get(volume_name_for(username, STACK)).remove()
        assert not docker.from_env().volumes.list(
            filters={"name": volume_name_for(username, STACK)}
        )
        assert admin.api("GET", f"/users/{username}").status_code == 404

        stop_every_server(admin)
        restore = stack.make("restore", f"BACKUP={folder}", check=False)
        assert restore.returncode == 0, restore.stdout + restore.stderr
    wait_hub_healthy(stack)

    admin = stack.admin()
    assert admin.api("GET", f"/users/{username}").status_code == 200
    assert admin.api("GET", f"/users/{username}-later").status_code == 200
    client = stack.login(username)
    client.start_server(username)
    output = stack.run(client, username, "print(open('/home/jovyan/results.txt').read())")
    assert output.strip() == "epoch 12: 99.1%"
    client.stop_server(username)


def test_whole_restore_refuses_while_servers_run_and_names_each(
    stack: Stack, username: str
) -> None:
    started_user(stack, username)
    container = user_container(STACK, username).name
    hub_started = hub_start_time(stack)
    with tempfile.TemporaryDirectory() as tmp:
        folder = backup_of(stack, tmp, username)
        restore = stack.make("restore", f"BACKUP={folder}", check=False)
    assert restore.returncode != 0
    assert f"server {container} is running" in restore.stderr
    assert "nothing changed" in restore.stderr
    assert hub_start_time(stack) == hub_started, "the hub was stopped for a refused restore"
    stack.login(username).stop_server(username)


def test_restoring_one_users_files_leaves_the_hub_and_others_running(
    stack: Stack, username: str
) -> None:
    alice, bob = username, f"{username}-bob"
    USERS_CREATED.append(bob)
    client, _ = started_user(stack, alice)
    stack.run(client, alice, "open('/home/jovyan/thesis.txt', 'w').write('chapter 1')")
    client.stop_server(alice)
    with tempfile.TemporaryDirectory() as tmp:
        folder = backup_of(stack, tmp, alice)
        # Afterwards: alice loses her file, bob starts working, a new user appears.
        client.start_server(alice)
        stack.run(client, alice, "import os; os.remove('/home/jovyan/thesis.txt')")
        client.stop_server(alice)
        bob_client, bob_token = started_user(stack, bob)
        bob_container = user_container(STACK, bob).id
        admin = stack.admin()
        assert admin.api("POST", f"/users/{username}-newer").status_code == 201
        USERS_CREATED.append(f"{username}-newer")
        hub_started = hub_start_time(stack)

        restore = stack.make("restore", f"BACKUP={folder}", f"ONLY_USERS={alice}", check=False)
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert "hub and databases untouched" in restore.stdout

    assert hub_start_time(stack) == hub_started, "the hub was restarted"
    assert user_container(STACK, bob).id == bob_container
    assert routed(stack, bob, bob_token), "bob's running server stopped answering"
    assert admin.api("GET", f"/users/{username}-newer").status_code == 200
    client.start_server(alice)
    assert stack.run(client, alice, "print(open('/home/jovyan/thesis.txt').read())") == (
        "chapter 1\n"
    )
    client.stop_server(alice)
    bob_client.stop_server(bob)


def hub_start_time(stack: Stack) -> str:
    hub = docker.from_env().containers.get(stack.compose("ps", "-q", "hub").stdout.strip())
    return str(hub.attrs["State"]["StartedAt"])


# --- image upgrade (last: it changes the stack's version and puts it back) ----------------
UPGRADE_DOCKERFILE = """\
FROM labhub/workspace:test
USER root
# A new release: a new file in the workspace skeleton and a changed notebook (the
# skeleton's fingerprint is what start-workspace.sh compares to copy new files).
RUN printf 'new in this release\\n' > /opt/workspace/mnist/RELEASE-NOTES.md && \\
    sed -i 's/"nbformat": 4/"nbformat": 4, "metadata_upgraded": true/' \\
        /opt/workspace/mnist/MNIST.ipynb
USER 1000
"""


def set_env_value(env_file: Path, name: str, value: str) -> None:
    text = env_file.read_text()
    text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
    env_file.write_text(text)


@pytest.fixture
def upgrade_tag(stack: Stack) -> Iterator[str]:
    """Images for a new LABHUB_VERSION: the same hub/proxy, a changed workspace."""
    tag = f"{STACK}-upgrade"
    api = docker.from_env()
    for name in ("hub", "proxy"):
        api.images.get(f"labhub/{name}:{VERSION}").tag(f"labhub/{name}", tag)
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(UPGRADE_DOCKERFILE)
        subprocess.run(
            ["docker", "build", "-q", "-t", f"labhub/workspace:{tag}", context],
            check=True,
            capture_output=True,
            timeout=600,
        )
    try:
        yield tag
    finally:
        set_env_value(stack.env_file, "LABHUB_VERSION", VERSION)
        stack.compose("up", "-d", "--wait", check=False)
        for name in ("hub", "proxy", "workspace"):
            with contextlib.suppress(docker.errors.APIError):
                api.images.remove(f"labhub/{name}:{tag}")


def test_image_upgrade_keeps_every_users_files(
    stack: Stack, username: str, upgrade_tag: str
) -> None:
    edited = 'print("my own version")'
    client, _ = started_user(stack, username)
    old_marker = stack.run(
        client,
        username,
        "import json\n"
        "path = '/home/jovyan/mnist/MNIST.ipynb'\n"
        "nb = json.load(open(path))\n"
        f"nb['cells'][0]['source'] = {edited!r}\n"
        "json.dump(nb, open(path, 'w'))\n"
        "open('/home/jovyan/mine.txt', 'w').write('untouched')\n"
        "print(open('/home/jovyan/.mnist_workspace_version').read().strip())",
    ).strip()
    old_image = user_container(STACK, username).image.id

    # The upgrade: point the stack at the new version and recreate the services.
    set_env_value(stack.env_file, "LABHUB_VERSION", upgrade_tag)
    stack.compose("up", "-d", "--wait")
    wait_hub_healthy(stack)
    client = stack.login(username)
    client.stop_server(username)
    client.start_server(username)
    container = user_container(STACK, username)
    assert container.image.id != old_image
    assert container.image.tags == [f"labhub/workspace:{upgrade_tag}"]

    output = stack.run(
        client,
        username,
        "import json\n"
        "nb = json.load(open('/home/jovyan/mnist/MNIST.ipynb'))\n"
        "print(nb['cells'][0]['source'])\n"
        "print('metadata_upgraded' in nb)\n"
        "print(open('/home/jovyan/mine.txt').read())\n"
        "print(open('/home/jovyan/mnist/RELEASE-NOTES.md').read().strip())\n"
        "print(open('/home/jovyan/.mnist_workspace_version').read().strip())",
    )
    source, upgraded, mine, notes, marker = output.strip().splitlines()
    assert source == edited  # the student's edit wins over the image's new notebook
    assert upgraded == "False"
    assert mine == "untouched"
    assert notes == "new in this release"  # new files from the image do appear
    assert marker != old_marker and len(marker) == 16  # the new skeleton was recorded
    client.stop_server(username)
