"""The Docker socket proxy against the real engine, with docker-py and with raw bytes.

The proxy runs here on a loopback port in front of /var/run/docker.sock, exactly as
its compose service runs it. A Docker client talking to it creates a container the
way LabSpawner does; a privileged container, an exec and a host bind are refused
with 403 before they reach the engine. Raw-socket requests try every framing trick
that made the engine read a request the proxy had not checked (issue 14); each gets
400, and the engine is asked afterwards whether a smuggled container exists.

The workspace image is not needed: the proxy checks the image's name, not its
content, so these tests run the base image under the allowed name's place.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from labhub.contract import (
    CONTAINER_USER,
    OWNER_LABEL,
    USER_LOG_CONFIG,
    container_name_prefix,
    volume_name_for,
)
from labhub.spawner import tmp_options
from stacks import STACK

from testsupport.acme_companion import RELOAD_EXEC
from testsupport.containers import user_container, user_containers
from testsupport.dockerproxy import running_proxy
from testsupport.images import ensure_base_image
from testsupport.spawners import proxied_spawner
from testsupport.waiting import wait_until

pytestmark = pytest.mark.integration

# Containers a smuggled request would create carry this label; none may ever exist.
SMUGGLED = "labhub.test=dockerproxy-smuggled"


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    for leftover in client.containers.list(all=True, filters={"label": SMUGGLED}):
        leftover.remove(force=True)


@pytest.fixture(scope="module")
def image() -> str:
    """The image the proxy allows in these tests (stands in for the workspace image)."""
    return ensure_base_image()


@pytest.fixture(scope="module")
def network(engine: docker.DockerClient) -> Iterator[str]:
    name = f"{STACK}-proxytest-{uuid.uuid4().hex[:6]}"
    net = engine.networks.create(name, internal=True, labels={"labhub.test": "dockerproxy"})
    try:
        yield name
    finally:
        for container in engine.containers.list(all=True, filters={"network": name}):
            container.remove(force=True)
        net.remove()


@pytest.fixture(scope="module")
def proxy_port(network: str, image: str) -> Iterator[int]:
    """The port of a dockerproxy we started (hub policy) in front of the real engine."""
    with running_proxy(ALLOWED_IMAGES=image, DOCKER_NETWORK=network) as port:
        yield port


@pytest.fixture(scope="module")
def proxied(proxy_port: int) -> docker.DockerClient:
    """A docker client whose every call goes through the proxy."""
    return docker.DockerClient(base_url=f"tcp://127.0.0.1:{proxy_port}", version="1.41", timeout=60)


def workspace_kwargs(image: str, network: str, volume: str, **extra: Any) -> dict[str, Any]:
    """What LabSpawner asks docker-py for (hub/labhub/spawner.py)."""
    return {
        "image": image,
        "command": ["sleep", "60"],
        "user": CONTAINER_USER,
        "labels": {OWNER_LABEL: "proxytest", "labhub.test": "dockerproxy"},
        "network_mode": network,
        "volumes": {volume: {"bind": "/home/jovyan", "mode": "rw"}},
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "pids_limit": 256,
        "mem_limit": "512m",
        "nano_cpus": 500_000_000,
        "shm_size": "64m",
        "read_only": True,
        "tmpfs": {"/tmp": tmp_options(64 << 20)},
        "log_config": USER_LOG_CONFIG,
        "environment": {"NVIDIA_VISIBLE_DEVICES": "void"},
        "detach": True,
        **extra,
    }


def refused(call: Any) -> str:
    with pytest.raises(docker.errors.APIError) as error:
        call()
    assert error.value.status_code == 403, error.value
    return str(error.value)


def test_a_workspace_container_passes_and_privilege_or_exec_are_refused(
    proxied: docker.DockerClient, engine: docker.DockerClient, network: str, image: str
) -> None:
    prefix = container_name_prefix(network)
    # The owner's own home: the proxy lets a container mount no other user volume.
    volume = volume_name_for("proxytest", network)
    try:
        container = proxied.containers.create(
            **workspace_kwargs(image, network, volume), name=prefix + "ok"
        )
        container.start()
        container.reload()
        assert container.status == "running"
        # The proxy answers a plain inspect with its owner check's own inspect.
        assert proxied.api.inspect_container(container.id) == engine.api.inspect_container(
            container.id
        )
        host = engine.containers.get(container.id).attrs["HostConfig"]
        assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]

        # Privileged: refused before the engine sees it; no container appears.
        message = refused(
            lambda: proxied.containers.create(
                **workspace_kwargs(image, network, volume, privileged=True),
                name=prefix + "priv",
            )
        )
        assert "Privileged not allowed" in message
        # Exec into the running workspace: refused.
        assert "not needed" in refused(lambda: proxied.api.exec_create(container.id, ["id"]))
        # The host's root directory as a bind: refused.
        host_bind = workspace_kwargs(image, network, volume)
        host_bind["volumes"] = {"/": {"bind": "/host", "mode": "ro"}}
        assert "bind" in refused(
            lambda: proxied.containers.create(**host_bind, name=prefix + "bind")
        )
        # Another image (here: the hub's, which holds the hub's code): refused.
        other = {**workspace_kwargs(image, network, volume), "image": "labhub/hub:test"}
        assert "image" in refused(lambda: proxied.containers.create(**other, name=prefix + "other"))
        # Nothing of the refused create reached the engine.
        names = {c.name for c in engine.containers.list(all=True, filters={"network": network})}
        assert prefix + "priv" not in names

        container.remove(force=True)
    finally:
        for leftover in engine.containers.list(all=True, filters={"network": network}):
            leftover.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(volume).remove(force=True)


def test_raw_requests_docker_would_read_differently_are_refused(
    proxied: docker.DockerClient, network: str, image: str
) -> None:
    """Bodies that pass a naive check but that Docker reads as privileged."""
    api = proxied.api
    base = {
        "Image": image,
        "User": CONTAINER_USER,
        "HostConfig": {
            "NetworkMode": network,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapDrop": ["ALL"],
        },
    }
    url = api._url("/containers/create") + f"?name={container_name_prefix(network)}raw"
    bodies = [
        {**base, "Privileged": True},  # top-level HostConfig field
        {**base, "HostConfig": {**base["HostConfig"], "privileged": True}},  # key case
    ]
    for body in bodies:
        response = api._post_json(url, data=body)
        assert response.status_code == 403, (body, response.text)
    duplicate = (
        b'{"HostConfig": {"Privileged": true}, "Image": "' + image.encode() + b'", '
        b'"User": "1000:100", "HostConfig": {"SecurityOpt": ["no-new-privileges:true"], '
        b'"CapDrop": ["ALL"]}}'
    )
    response = api._post(url, data=duplicate, headers={"Content-Type": "application/json"})
    assert response.status_code == 403, response.text
    # A start with an old API version and a HostConfig body.
    response = api._post(
        api.base_url + "/v1.20/containers/anything/start",
        data=b'{"Privileged": true}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 403, response.text


def test_the_hosts_other_containers_are_out_of_reach(
    proxied: docker.DockerClient, engine: docker.DockerClient, network: str
) -> None:
    """A container without the labhub.user label (another service on the host)."""
    bystander = engine.containers.run(
        ensure_base_image(),
        ["sleep", "120"],
        name=f"{network}-bystander",
        network=network,
        environment={"DATABASE_PASSWORD": "not-for-the-hub"},
        labels={"labhub.test": "dockerproxy"},
        detach=True,
    )
    try:
        for name, call in [
            ("inspect", lambda: proxied.api.inspect_container(bystander.id)),
            ("stop", lambda: proxied.api.stop(bystander.name, timeout=1)),
            ("kill", lambda: proxied.api.kill(bystander.id)),
            ("remove", lambda: proxied.api.remove_container(bystander.id, force=True)),
        ]:
            assert "not a labhub user container" in refused(call), name
        bystander.reload()
        assert bystander.status == "running"
        # A container that does not exist gets the engine's own 404, as DockerSpawner expects.
        with pytest.raises(docker.errors.NotFound):
            proxied.api.inspect_container(f"{network}-nobody")
    finally:
        bystander.remove(force=True)


# --- Framing: one request, read as the engine would read it, or 400 -------------------
def privileged_create(image: str, name: str) -> bytes:
    """A complete, unchecked POST /containers/create for a privileged container with
    the host's root directory mounted: what a smuggled request would ask the engine."""
    body = json.dumps(
        {
            "Image": image,
            "Cmd": ["true"],
            "Labels": {SMUGGLED.split("=")[0]: SMUGGLED.split("=")[1]},
            "HostConfig": {"Privileged": True, "Binds": ["/:/host:ro"]},
        }
    ).encode()
    return (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: docker\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def send_raw(port: int, data: bytes) -> bytes:
    """Send raw bytes to the proxy, half-close, and read its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def framing_tricks(smuggled: bytes) -> dict[str, bytes]:
    """Each trick carries the privileged create where the engine might read it."""
    ping = b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\n"
    n = str(len(smuggled)).encode()
    return {
        # The reproduced bypass: Go ends a header line at a bare LF, so "\n\n" ends the
        # head of the checked GET and the engine reads the rest as a second request.
        "bare-lf": ping + b"X-Note: a\n\n" + smuggled,
        "bare-cr": ping + b"X-Note: a\r\r\n\r\n" + smuggled,
        "obs-fold": ping + b"X-Note: a\r\n Content-Length: " + n + b"\r\n\r\n" + smuggled,
        "plus-length": ping + b"Content-Length: +" + n + b"\r\n\r\n" + smuggled,
        "underscore-length": ping + b"Content-Length: " + n[:1] + b"_" + n[1:] + b"\r\n\r\n"
        + smuggled,
        "duplicate-length": ping + b"Content-Length: 0\r\nContent-Length: " + n + b"\r\n\r\n"
        + smuggled,
        "length-and-chunked": ping + b"Content-Length: " + n
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggled,
        "bad-header-name": ping + b"X(Note): a\r\nContent-Length: " + n + b"\r\n\r\n" + smuggled,
        "space-before-colon": ping + b"Content-Length : " + n + b"\r\n\r\n" + smuggled,
        "pipelined": ping + b"\r\n" + smuggled,
        "oversized-head": ping + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n" + smuggled,
    }  # fmt: skip


@pytest.mark.parametrize("trick", sorted(framing_tricks(b"")))
def test_framing_tricks_get_400_and_smuggle_nothing_to_the_engine(
    proxy_port: int, engine: docker.DockerClient, network: str, image: str, trick: str
) -> None:
    name = f"{network}-smuggled-{trick}"
    answer = send_raw(proxy_port, framing_tricks(privileged_create(image, name))[trick])
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    # Exactly one answer: nothing of the smuggled request was answered by the engine.
    assert answer.count(b"HTTP/1.1 ") == 1, answer[:600]
    # Asked directly, the engine has no container from a smuggled create.
    assert not engine.containers.list(all=True, filters={"label": SMUGGLED})
    assert not engine.containers.list(all=True, filters={"name": name})


def test_the_same_create_sent_plainly_is_refused_by_the_policy(
    proxy_port: int, engine: docker.DockerClient, network: str, image: str
) -> None:
    """The smuggled request itself, sent as a request of its own: 403 (not a framing issue)."""
    answer = send_raw(
        proxy_port, privileged_create(image, container_name_prefix(network) + "plain")
    )
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:300]
    assert not engine.containers.list(all=True, filters={"label": SMUGGLED})


def test_a_well_formed_request_with_extra_headers_still_passes(proxy_port: int) -> None:
    """Headers the proxy does not forward (they are dropped, not refused)."""
    answer = send_raw(
        proxy_port,
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nUser-Agent: t\r\n"
        b"Upgrade: tcp\r\nConnection: Upgrade\r\nX-Registry-Auth: e30=\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:300]
    assert answer.endswith(b"OK")


# --- The real spawner through the proxy -----------------------------------------------
def test_labspawner_starts_and_stops_a_server_through_the_proxy(
    proxy_port: int, engine: docker.DockerClient, network: str, image: str, tmp_path: Any
) -> None:
    """LabSpawner's own calls (image inspect, lookup 404, create, start, inspect, stop,
    remove) all pass the policy and reach the real engine; nothing else is needed."""
    import asyncio

    from labhub.spawner import LabSpawner

    username = f"proxytest{uuid.uuid4().hex[:6]}"
    spawner = proxied_spawner(proxy_port, image, network, tmp_path, username)
    try:
        ip, _ = asyncio.run(spawner.start())
        container = user_container(network, username)
        assert container.name == container_name_prefix(network) + username
        assert container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"] == ip
        assert container.attrs["HostConfig"]["Memory"] == 256 * 1024**2
        asyncio.run(spawner.stop())
        # Removed (AutoRemove may still be finishing when stop() returns).
        wait_until(
            lambda: not user_containers(network, username),
            10,
            f"{username}'s container to be removed",
            interval=0.2,
        )
    finally:
        LabSpawner._client = None
        for leftover in user_containers(network, username):
            with contextlib.suppress(docker.errors.NotFound):
                leftover.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(volume_name_for(username, network)).remove(force=True)


# --- The nginx-proxy front's instance -------------------------------------------------
def test_the_front_instance_reads_and_reloads_only(
    engine: docker.DockerClient, network: str, image: str
) -> None:
    """PROXY_POLICY=frontend against the real engine, a stand-in for nginx-proxy."""
    nginx = engine.containers.run(
        image,
        ["sleep", "120"],
        name=f"{network}-nginx-proxy",
        network=network,
        labels={"labhub.test": "dockerproxy"},
        detach=True,
    )
    try:
        with running_proxy(PROXY_POLICY="frontend", NGINX_PROXY_CONTAINER=nginx.name) as port:
            front = docker.APIClient(base_url=f"tcp://127.0.0.1:{port}", version="1.41", timeout=10)
            # What docker-gen reads: the list, an inspect (environment included) and events.
            assert nginx.id in {c["Id"] for c in front.containers()}
            assert front.inspect_container(nginx.id)["Id"] == nginx.id
            now = int(time.time())
            events = front.events(decode=True, since=now - 60, until=now + 1)
            assert any(e.get("id") == nginx.id for e in events)
            # acme-companion's reload: SIGHUP to nginx-proxy (sleep, as PID 1, ignores it).
            front.kill(nginx.name, signal="SIGHUP")
            # The exec reload, sent as acme-companion's curl sends it, runs (here it fails
            # inside the stand-in, which has no nginx: the exit code is not the point).
            exec_url = front._url("/containers/{0}/exec", nginx.name)
            created = front._post_json(exec_url, data=RELOAD_EXEC)
            assert created.status_code == 201, created.text
            started = front._post_json(
                front._url("/exec/{0}/start", created.json()["Id"]),
                data={"Detach": False, "Tty": False},
            )
            assert started.status_code == 200, started.text
            # The stand-in's sh has no /app/docker-entrypoint.sh.
            assert b"not found" in started.content
            for call in (
                lambda: front.exec_create(nginx.name, ["id"]),
                lambda: front.kill(nginx.name, signal="SIGKILL"),
                lambda: front.stop(nginx.name),
                lambda: front.create_container(image, ["true"], name=f"{network}-front-create"),
            ):
                refused(call)
            nginx.reload()
            assert nginx.status == "running"
    finally:
        nginx.remove(force=True)


@pytest.mark.parametrize("name", ["json", "create"])
def test_containers_named_like_routes_are_owner_checked_too(
    proxy_port: int, engine: docker.DockerClient, network: str, image: str, name: str
) -> None:
    """DELETE /containers/json removes a container called "json": the first version let
    it through without the owner check. The names are global on an engine: the test skips
    if someone else's container already has one."""
    if engine.api.containers(all=True, filters={"name": f"^/{name}$"}):
        pytest.skip(f"a container named {name!r} exists and is not ours")
    bystander = engine.containers.create(
        image, ["sleep", "60"], name=name, network=network, labels={"labhub.test": "dockerproxy"}
    )
    try:
        for request in (
            f"DELETE /v1.41/containers/{name}?force=1 HTTP/1.1\r\nHost: docker\r\n\r\n",
            f"POST /v1.41/containers/{name}/start HTTP/1.1\r\nHost: docker\r\n"
            "Content-Length: 0\r\n\r\n",
            f"GET /v1.41/containers/{name}/json HTTP/1.1\r\nHost: docker\r\n\r\n",
        ):
            answer = send_raw(proxy_port, request.encode())
            assert answer.startswith(b"HTTP/1.1 403 "), (request, answer[:300])
            assert b"not a labhub user container" in answer
        bystander.reload()
        assert bystander.status == "created"  # neither removed nor started
    finally:
        with contextlib.suppress(docker.errors.NotFound):  # the old relay removed it
            bystander.remove(force=True)
