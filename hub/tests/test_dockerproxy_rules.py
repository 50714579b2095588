"""The Docker socket proxy's rules: what DockerSpawner needs passes, the rest is refused."""

import json
from typing import Any

import pytest
from labhub.dockerproxy import Policy, Refused, check_request

pytestmark = pytest.mark.unit
POLICY = Policy(allowed_images=frozenset({"labhub/workspace:0.1.0"}), network="labhub")


def create_body(**host_config: Any) -> bytes:
    spec = {
        "Image": "labhub/workspace:0.1.0",
        "User": "1000:100",
        "HostConfig": {
            "NetworkMode": "labhub",
            "SecurityOpt": ["no-new-privileges:true"],
            "CapDrop": ["ALL"],
            "Binds": ["labhub-user-alice:/home/jovyan:rw"],
            **host_config,
        },
    }
    return json.dumps(spec).encode()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1.41/_ping", b""),
        ("GET", "/version", b""),
        ("GET", "/v1.41/containers/json?all=1&filters=%7B%7D", b""),
        ("GET", "/v1.41/containers/labhub-user-alice/json", b""),
        ("GET", "/v1.41/images/labhub/workspace:0.1.0/json", b""),
        ("POST", "/v1.41/containers/create?name=labhub-user-alice", create_body()),
        ("POST", "/v1.41/containers/abc123/start", b""),
        ("POST", "/v1.41/containers/abc123/stop?t=10", b""),
        ("DELETE", "/v1.41/containers/abc123?v=False&force=False", b""),
        ("POST", "/v1.41/volumes/create", b'{"Name": "labhub-user-alice"}'),
        ("DELETE", "/v1.41/volumes/labhub-user-alice", b""),
        (
            "POST",
            "/v1.41/containers/create",
            create_body(
                DeviceRequests=[{"Driver": "nvidia", "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}]
            ),
        ),
    ],
)
def test_what_the_spawner_needs_passes(method: str, path: str, body: bytes) -> None:
    check_request(POLICY, method, path, body)


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("POST", "/v1.41/containers/abc/exec", b"{}", "not needed"),
        ("POST", "/v1.41/exec/abc/start", b"{}", "not needed"),
        ("POST", "/v1.41/images/create?fromImage=alpine", b"", "not needed"),
        ("POST", "/v1.41/build", b"", "not needed"),
        ("GET", "/v1.41/containers/abc/archive?path=/", b"", "not needed"),
        ("POST", "/v1.41/containers/abc/attach", b"", "not needed"),
        ("DELETE", "/v1.41/volumes/labhub-hub-data", b"", "not a user volume"),
        ("POST", "/v1.41/volumes/create", b'{"Name": "other"}', "not a user volume"),
        ("POST", "/v1.41/containers/create", create_body(Privileged=True), "privileged"),
        ("POST", "/v1.41/containers/create", create_body(CapAdd=["SYS_ADMIN"]), "capabilities"),
        ("POST", "/v1.41/containers/create", create_body(SecurityOpt=[]), "no-new-privileges"),
        ("POST", "/v1.41/containers/create", create_body(PidMode="host"), "PidMode=host"),
        ("POST", "/v1.41/containers/create", create_body(NetworkMode="host"), "network"),
        ("POST", "/v1.41/containers/create", create_body(Binds=["/:/host"]), "bind"),
        (
            "POST",
            "/v1.41/containers/create",
            create_body(Binds=["/var/run/docker.sock:/var/run/docker.sock"]),
            "bind",
        ),
        (
            "POST",
            "/v1.41/containers/create",
            create_body(Mounts=[{"Type": "bind", "Source": "/etc", "Target": "/x"}]),
            "mount",
        ),
        (
            "POST",
            "/v1.41/containers/create",
            create_body(Devices=[{"PathOnHost": "/dev/sda"}]),
            "devices",
        ),
        ("POST", "/v1.41/containers/create", b"not json", "not JSON"),
    ],
)
def test_everything_else_is_refused(method: str, path: str, body: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_request(POLICY, method, path, body)


def test_other_images_and_root_are_refused() -> None:
    spec = json.loads(create_body())
    with pytest.raises(Refused, match="image"):
        check_request(
            POLICY,
            "POST",
            "/containers/create",
            json.dumps({**spec, "Image": "debian:trixie-slim"}).encode(),
        )
    with pytest.raises(Refused, match="non-root"):
        check_request(
            POLICY, "POST", "/containers/create", json.dumps({**spec, "User": "0"}).encode()
        )
