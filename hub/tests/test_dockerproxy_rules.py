"""The Docker socket proxy's rules: what DockerSpawner needs passes, the rest is refused."""

import json
from typing import Any

import pytest
from labhub.dockerproxy import (
    Policy,
    Refused,
    check_owner,
    check_request,
    container_in_path,
    is_plain_inspect,
)

pytestmark = pytest.mark.unit
POLICY = Policy(allowed_images=frozenset({"labhub/workspace:0.1.0"}), network="labhub")


def spec(**host_config: Any) -> dict[str, Any]:
    """A create body as DockerSpawner sends it, with `host_config` merged in."""
    return {
        "Image": "labhub/workspace:0.1.0",
        "User": "1000:100",
        "Labels": {"labhub.user": "alice"},
        "HostConfig": {
            "NetworkMode": "labhub",
            "Memory": 4 * 1024**3,
            "PidsLimit": 1024,
            "NanoCpus": 2_000_000_000,
            "SecurityOpt": ["no-new-privileges:true"],
            "CapDrop": ["ALL"],
            "Binds": ["labhub-user-alice:/home/jovyan:rw"],
            **host_config,
        },
    }


def create_body(**host_config: Any) -> bytes:
    return json.dumps(spec(**host_config)).encode()


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


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Labels": {}}, "labhub.user label"),
        ({"Labels": {"labhub.user": ""}}, "labhub.user label"),
        ({"HostConfig": {**spec()["HostConfig"], "Memory": 0}}, "Memory limit"),
        ({"HostConfig": {**spec()["HostConfig"], "PidsLimit": -1}}, "PidsLimit limit"),
        ({"HostConfig": {**spec()["HostConfig"], "PidsLimit": True}}, "PidsLimit limit"),
        ({"HostConfig": {**spec()["HostConfig"], "NanoCpus": 0}}, "CPU limit"),
    ],
    ids=["no-label", "empty-label", "no-memory", "unlimited-pids", "bool-pids", "no-cpu"],
)
def test_unlabelled_or_unlimited_containers_are_refused(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Refused, match=reason):
        check_request(POLICY, "POST", CREATE, json.dumps({**spec(), **change}).encode())


def test_cpu_limit_may_come_as_a_quota() -> None:
    host = {k: v for k, v in spec()["HostConfig"].items() if k != "NanoCpus"}
    body = {**spec(), "HostConfig": {**host, "CpuPeriod": 100_000, "CpuQuota": 150_000}}
    check_request(POLICY, "POST", CREATE, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("method", "path", "target"),
    [
        ("GET", "/v1.41/containers/labhub-user-alice/json", ("/v1.41", "labhub-user-alice")),
        ("POST", "/containers/abc123/stop", ("", "abc123")),
        ("DELETE", "/v1.41/containers/abc123?force=1", ("/v1.41", "abc123")),
        ("GET", "/v1.41/containers/json?all=1", None),
        ("GET", "/v1.41/containers/json", None),  # the list: never answered from a check
        ("POST", "/v1.41/containers/create?name=x", None),
    ],
)
def test_requests_naming_one_container_are_found(
    method: str, path: str, target: tuple[str, str] | None
) -> None:
    assert container_in_path(method, path) == target


@pytest.mark.parametrize(
    ("method", "path", "answered_from_owner_check"),
    [
        ("GET", "/v1.41/containers/labhub-user-alice/json", True),
        ("GET", "/containers/abc123/json", True),
        ("GET", "/v1.41/containers/abc123/json?size=1", False),  # a different answer
        ("GET", "/v1.41/containers/abc123/logs", False),
        ("POST", "/v1.41/containers/abc123/json", False),
        ("POST", "/v1.41/containers/abc123/stop", False),
    ],
)
def test_only_plain_inspects_reuse_the_owner_check(
    method: str, path: str, answered_from_owner_check: bool
) -> None:
    target = container_in_path(method, path)
    assert target is not None
    assert is_plain_inspect(method, path, target) is answered_from_owner_check


def test_only_labelled_containers_may_be_touched() -> None:
    inspected = {"Config": {"Labels": {"labhub.user": "alice"}}}
    check_owner(POLICY, "labhub-user-alice", 200, json.dumps(inspected).encode())
    check_owner(POLICY, "gone", 404, b'{"message": "No such container: gone"}')
    for labels in ({}, None, {"labhub.user": ""}, {"com.example.db": "1"}):
        body = json.dumps({"Config": {"Labels": labels}}).encode()
        with pytest.raises(Refused, match="not a labhub user container"):
            check_owner(POLICY, "postgres", 200, body)
    with pytest.raises(Refused, match="cannot read"):
        check_owner(POLICY, "odd", 200, b"[]")


def test_other_images_and_root_are_refused() -> None:
    good = spec()
    with pytest.raises(Refused, match="image"):
        check_request(
            POLICY,
            "POST",
            "/containers/create",
            json.dumps({**good, "Image": "debian:trixie-slim"}).encode(),
        )
    with pytest.raises(Refused, match="non-root"):
        check_request(
            POLICY, "POST", "/containers/create", json.dumps({**good, "User": "0"}).encode()
        )


# --- Ways around the first rules, found in review; each is refused now. -------------
# Docker (Go) matches JSON keys case-insensitively, merges duplicate keys, reads
# HostConfig fields at the top level of a create body, and applied a HostConfig sent
# to `start` for API versions before 1.24. The proxy must read a body as Docker does.
CREATE = "/v1.41/containers/create"


def refused(body: str | bytes, reason: str, path: str = CREATE) -> None:
    data = body.encode() if isinstance(body, str) else body
    with pytest.raises(Refused, match=reason):
        check_request(POLICY, "POST", path, data)


GOOD = json.dumps(spec())[1:-1]  # the members of a good body, to splice into bad ones


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # Top-level HostConfig fields, which Docker reads when HostConfig is absent.
        (json.dumps({**spec(), "Privileged": True}), "top-level"),
        (json.dumps({**spec(), "Binds": ["/:/host"]}), "top-level"),
        # Case: Go's decoder matches "privileged" to Privileged, "hostconfig" to HostConfig.
        (json.dumps(spec(privileged=True)), "privileged"),
        (json.dumps(spec(binds=["/:/host"])), "given twice|bind"),
        (
            json.dumps(
                {k: v for k, v in spec().items() if k != "HostConfig"}
                | {"hostconfig": {**spec()["HostConfig"], "Privileged": True}}
            ),
            "privileged",
        ),
        # Duplicate keys: Python keeps the last, Go merges both into one struct.
        ('{"HostConfig": {"Privileged": true}, ' + GOOD + "}", "given twice"),
        ("{" + GOOD + ', "hostConfig": {"Privileged": true}}', "given twice"),
        # Go folds the long s (U+017F) and the Kelvin sign onto s and k.
        ("{" + GOOD.replace('"Binds"', '"Bind\\u017f"') + "}", "non-ASCII"),
        # A way into another container, or out of the limits.
        (json.dumps(spec(PidMode="container:hub")), "PidMode"),
        (json.dumps(spec(IpcMode="container:labhub-user-bob")), "IpcMode"),
        (json.dumps(spec(NetworkMode="container:hub")), "network"),
        (json.dumps(spec(VolumesFrom=["labhub-hub-1"])), "volumesfrom"),
        (
            json.dumps(spec(SecurityOpt=["no-new-privileges:true", "seccomp=unconfined"])),
            "security",
        ),
        (
            json.dumps(spec(SecurityOpt=["no-new-privileges:true", "apparmor=unconfined"])),
            "security",
        ),
        (json.dumps(spec(CapDrop=[])), "CapDrop"),
        (json.dumps(spec(DeviceCgroupRules=["b *:* rwm"])), "device cgroup"),
        (json.dumps(spec(CgroupParent="/")), "cgroup"),
        (json.dumps(spec(MaskedPaths=[])), "masked|unmask"),
        (json.dumps(spec(PortBindings={"8888/tcp": [{"HostPort": "8888"}]})), "publishing"),
        (json.dumps(spec(PublishAllPorts=True)), "publishing"),
        (json.dumps(spec(Runtime="nvidia")), "runtime"),
        (json.dumps({**spec(), "Runtime": "nvidia"}), "runtime"),
        (json.dumps({**spec(), "User": "00"}), "non-root"),
        (json.dumps({**spec(), "User": "root:root"}), "non-root"),
        (
            json.dumps(
                spec(
                    Binds=[],
                    Mounts=[
                        {
                            "Type": "volume",
                            "Source": "labhub-user-evil",
                            "Target": "/host",
                            "VolumeOptions": {
                                "DriverConfig": {
                                    "Name": "local",
                                    "Options": {"type": "none", "o": "bind", "device": "/"},
                                }
                            },
                        }
                    ],
                )
            ),
            "driver options",
        ),
        (json.dumps(spec(Mounts=[{"type": "bind", "source": "/", "target": "/h"}])), "mount"),
    ],
)
def test_create_bodies_that_docker_reads_differently_are_refused(body: str, reason: str) -> None:
    refused(body, reason)


def test_a_volume_bound_to_a_host_path_is_refused() -> None:
    refused(
        json.dumps(
            {
                "Name": "labhub-user-evil",
                "Driver": "local",
                "DriverOpts": {"type": "none", "o": "bind", "device": "/"},
            }
        ),
        "driver",
        "/v1.41/volumes/create",
    )
    refused('{"Name": "labhub-user-x", "name": "other"}', "given twice", "/v1.41/volumes/create")


def test_start_with_a_host_config_body_is_refused() -> None:
    refused('{"Privileged": true}', "no request body", "/v1.20/containers/abc/start")


def test_what_docker_py_sends_for_the_spawner_still_passes() -> None:
    """The exact body docker-py 7.2 builds for DockerSpawner's create call."""
    from docker.api.container import ContainerApiMixin
    from docker.types import HostConfig

    host = HostConfig(
        version="1.41",
        binds=["labhub-user-alice:/home/jovyan:rw"],
        network_mode="labhub",
        security_opt=["no-new-privileges:true"],
        cap_drop=["ALL"],
        pids_limit=1024,
        shm_size="1g",
        mem_limit=4 << 30,
        nano_cpus=2_000_000_000,
        init=False,
        links={},  # DockerSpawner always passes its (empty) links
        device_requests=[{"Driver": "nvidia", "DeviceIDs": ["0"], "Capabilities": [["gpu"]]}],
    )

    class Fake(ContainerApiMixin):
        _version = "1.41"

    config = Fake().create_container_config(
        image="labhub/workspace:0.1.0",
        command=None,
        user="1000:100",
        environment={"NVIDIA_VISIBLE_DEVICES": "void"},
        labels={"labhub.user": "alice"},
        host_config=host,
    )
    body = {k: v for k, v in config.items() if v is not None}
    check_request(POLICY, "POST", CREATE + "?name=labhub-user-alice", json.dumps(body).encode())
