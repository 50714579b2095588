"""The hub's Docker access through labhub.dockerproxy, against the real engine.

The proxy runs here on a loopback port in front of /var/run/docker.sock, exactly as
its compose service runs it. A Docker client talking to it creates a workspace
container the way DockerSpawner does; a privileged container, an exec and a host
bind are refused with 403 before they reach the engine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from stacks import STACK, ensure_base_image

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("LABHUB_TEST_WORKSPACE_IMAGE", "labhub/workspace:test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{IMAGE} is not built (make build)")
    return client


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
def proxied(network: str) -> Iterator[docker.DockerClient]:
    """A docker client whose every call goes through a dockerproxy we started."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "labhub.dockerproxy"],
        env={
            **os.environ,
            "ALLOWED_IMAGES": IMAGE,
            "DOCKER_NETWORK": network,
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", version="1.41", timeout=60)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield client
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        print(output)


def workspace_kwargs(network: str, volume: str, **extra: Any) -> dict[str, Any]:
    """What LabSpawner asks docker-py for (hub/labhub/spawner.py)."""
    return {
        "image": IMAGE,
        "command": ["sleep", "60"],
        "user": "1000:100",
        "labels": {"labhub.user": "proxytest", "labhub.test": "dockerproxy"},
        "network": network,
        "volumes": {volume: {"bind": "/home/jovyan", "mode": "rw"}},
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "pids_limit": 256,
        "mem_limit": "512m",
        "nano_cpus": 500_000_000,
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
    proxied: docker.DockerClient, engine: docker.DockerClient, network: str
) -> None:
    volume = f"labhub-user-proxytest-{uuid.uuid4().hex[:6]}"
    try:
        container = proxied.containers.create(
            **workspace_kwargs(network, volume), name=f"{network}-ok"
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
                **workspace_kwargs(network, volume, privileged=True), name=f"{network}-priv"
            )
        )
        assert "privileged" in message
        # Exec into the running workspace: refused.
        assert "not needed" in refused(lambda: proxied.api.exec_create(container.id, ["id"]))
        # The host's root directory as a bind: refused.
        host_bind = workspace_kwargs(network, volume)
        host_bind["volumes"] = {"/": {"bind": "/host", "mode": "ro"}}
        assert "bind" in refused(lambda: proxied.containers.create(**host_bind))
        # Another image (here: the hub's, which holds the hub's code): refused.
        other = workspace_kwargs(network, volume, image="labhub/hub:test")
        assert "image" in refused(lambda: proxied.containers.create(**other))
        # Nothing of the refused create reached the engine.
        names = {c.name for c in engine.containers.list(all=True, filters={"network": network})}
        assert f"{network}-priv" not in names

        container.remove(force=True)
    finally:
        for leftover in engine.containers.list(all=True, filters={"network": network}):
            leftover.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(volume).remove(force=True)


def test_raw_requests_docker_would_read_differently_are_refused(
    proxied: docker.DockerClient, network: str
) -> None:
    """Bodies that pass a naive check but that Docker reads as privileged."""
    api = proxied.api
    base = {
        "Image": IMAGE,
        "User": "1000:100",
        "HostConfig": {
            "NetworkMode": network,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapDrop": ["ALL"],
        },
    }
    url = api._url("/containers/create")
    bodies = [
        {**base, "Privileged": True},  # top-level HostConfig field
        {**base, "HostConfig": {**base["HostConfig"], "privileged": True}},  # key case
    ]
    for body in bodies:
        response = api._post_json(url, data=body)
        assert response.status_code == 403, (body, response.text)
    duplicate = (
        b'{"HostConfig": {"Privileged": true}, "Image": "' + IMAGE.encode() + b'", '
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
