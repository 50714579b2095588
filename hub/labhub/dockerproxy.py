"""A filtering proxy in front of the Docker socket: the hub gets only what it needs.

The hub holds the keys to the host if it can talk to the Docker socket directly.
This proxy listens on TCP (on a network only the hub shares), forwards allowed
requests to the real socket and refuses everything else with 403:

* only the endpoints DockerSpawner uses (create/start/stop/remove/inspect/list
  containers, inspect images, create/inspect/remove user volumes, version/ping);
* `containers/create` only for the allowed image, never privileged, no added
  capabilities, no host paths, no host namespaces, no devices except GPU device
  requests, always with no-new-privileges, memory, CPU and process limits, and the
  `labhub.user` label;
* inspect, start, stop, kill, wait and remove only for containers that carry that
  label: the proxy inspects the target first, so the hub cannot touch the host's
  other containers (or read their environment);
* no exec, no build, no pull, no attach, no archive, no networks or plugins.

Each client request is answered on a connection of its own (`Connection: close`),
which keeps the proxy a small, auditable piece of code.

Run: python -m labhub.dockerproxy (settings from the environment, see `main`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("labhub.dockerproxy")

_VERSION = r"(?:/v[0-9.]+)?"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_READ_ONLY = [
    rf"{_VERSION}/_ping",
    rf"{_VERSION}/version",
    rf"{_VERSION}/info",
    rf"{_VERSION}/containers/json",
    rf"{_VERSION}/containers/{_ID}/json",
    rf"{_VERSION}/images/.+/json",
    rf"{_VERSION}/volumes",
    rf"{_VERSION}/volumes/{_ID}",
    rf"{_VERSION}/networks/{_ID}",
]
_CONTAINER_ACTIONS = rf"{_VERSION}/containers/{_ID}/(start|stop|kill|wait)"
_CONTAINER = rf"{_VERSION}/containers/{_ID}"
# Every route that names one container: (API version prefix, container id or name).
_ONE_CONTAINER = (
    rf"(?P<version>{_VERSION})/containers/(?!(?:create|json)$)(?P<id>{_ID})(?:/[a-z]+)?"
)
_CREATE = rf"{_VERSION}/containers/create"
_VOLUME_CREATE = rf"{_VERSION}/volumes/create"
_VOLUME = rf"{_VERSION}/volumes/(?P<name>{_ID})"
MAX_BODY = 1024 * 1024


class Refused(Exception):
    """A request the hub has no business making; the message says why."""


@dataclass(frozen=True)
class Policy:
    """What the hub may create: its image, its network, its volume prefix."""

    allowed_images: frozenset[str]
    network: str
    volume_prefix: str = "labhub-user-"
    # The label LabSpawner puts on every user container (its value: the user's name).
    owner_label: str = "labhub.user"


def check_request(policy: Policy, method: str, path: str, body: bytes) -> None:
    """Raise Refused unless the request is one DockerSpawner legitimately makes."""
    route = path.split("?", 1)[0]
    if method in ("GET", "HEAD") and any(re.fullmatch(p, route) for p in _READ_ONLY):
        return
    if method == "POST" and re.fullmatch(_CONTAINER_ACTIONS, route):
        # API versions before 1.24 applied a HostConfig sent to start (privileged...).
        if body.strip():
            raise Refused(f"{route} takes no request body")
        return
    if method == "DELETE" and re.fullmatch(_CONTAINER, route) and "/create" not in route:
        return
    if method == "POST" and re.fullmatch(_CREATE, route):
        check_container_create(policy, _json(body))
        return
    if method == "POST" and re.fullmatch(_VOLUME_CREATE, route):
        spec = _folded(_json(body))
        name = spec.get("name", "")
        if not str(name).startswith(policy.volume_prefix):
            raise Refused(f"volume {name!r} is not a user volume ({policy.volume_prefix}*)")
        # The local driver's options can bind any host path (type=none, o=bind, device=/).
        if spec.get("driver") not in (None, "", "local") or spec.get("driveropts"):
            raise Refused("volume drivers and driver options are not allowed")
        return
    volume = re.fullmatch(_VOLUME, route)
    if method == "DELETE" and volume:
        if not volume["name"].startswith(policy.volume_prefix):
            raise Refused(f"volume {volume['name']!r} is not a user volume")
        return
    raise Refused(f"{method} {route} is not needed by the hub")


# Top-level keys of a container-create body (container.Config, as docker-py sends
# them). Docker also reads HostConfig fields at the top level for old clients
# ("Privileged": true next to "Image"), so anything else is refused.
_CONFIG_KEYS = frozenset(
    k.casefold()
    for k in (
        "Hostname",
        "Domainname",
        "User",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ExposedPorts",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Env",
        "Cmd",
        "Healthcheck",
        "ArgsEscaped",
        "Image",
        "Volumes",
        "WorkingDir",
        "Entrypoint",
        "NetworkDisabled",
        "MacAddress",
        "OnBuild",
        "Labels",
        "StopSignal",
        "StopTimeout",
        "Shell",
        "HostConfig",
        "NetworkingConfig",
        "Runtime",
    )
)
_NAMESPACES = {
    "PidMode": ("",),
    "IpcMode": ("", "private", "shareable", "none"),
    "UTSMode": ("",),
    "UsernsMode": ("",),
    "CgroupnsMode": ("", "private"),
}
# Never set by DockerSpawner; each one opens a way out of the container.
_NEVER = {
    "volumesfrom": "mounting other containers' volumes",
    "links": "links to other containers",
    "devicecgrouprules": "device cgroup rules",
    "cgroupparent": "another cgroup parent (escapes the limits)",
    "cgroup": "another cgroup",
    "maskedpaths": "unmasking /proc paths",
    "readonlypaths": "changing read-only /proc paths",
    "portbindings": "publishing ports on the host (bypasses nginx)",
    "publishallports": "publishing ports on the host (bypasses nginx)",
    "sysctls": "sysctls",
    "oomkilldisable": "disabling the OOM killer",
}


def _folded(value: Any) -> Any:
    """Keys case-folded at every level, as Docker (Go) matches them case-insensitively.

    Refuses non-ASCII keys and keys that differ only by case, which Docker would merge
    but a case-sensitive check would read as two different keys.
    """
    if isinstance(value, list):
        return [_folded(item) for item in value]
    if not isinstance(value, dict):
        return value
    folded: dict[str, Any] = {}
    for key, item in value.items():
        if not key.isascii():
            raise Refused(f"non-ASCII key {key!r}")
        if key.casefold() in folded:
            raise Refused(f"key {key!r} given twice")
        folded[key.casefold()] = _folded(item)
    return folded


def check_container_create(policy: Policy, raw_spec: dict[str, Any]) -> None:
    """The container-create body: the allowed image, unprivileged, no host access."""
    spec = _folded(raw_spec)
    unknown = sorted(set(spec) - _CONFIG_KEYS)
    if unknown:
        raise Refused(f"top-level keys {unknown} are not container settings")
    image = spec.get("image", "")
    if image not in policy.allowed_images:
        raise Refused(f"image {image!r} is not an allowed workspace image")
    uid = str(spec.get("user", "")).split(":")[0]
    if not uid.isdigit() or int(uid) == 0:
        raise Refused("containers must run as a non-root numeric user (e.g. 1000:100)")
    labels = spec.get("labels") or {}
    if not isinstance(labels, dict) or not labels.get(policy.owner_label.casefold()):
        raise Refused(f"containers must carry the {policy.owner_label} label")
    host: dict[str, Any] = spec.get("hostconfig") or {}
    for limit, name in (("memory", "Memory"), ("pidslimit", "PidsLimit")):
        if not _positive(host.get(limit)):
            raise Refused(f"containers must have a {name} limit")
    if not (_positive(host.get("nanocpus")) or _positive(host.get("cpuquota"))):
        raise Refused("containers must have a CPU limit (NanoCpus or CpuQuota)")
    if host.get("privileged"):
        raise Refused("privileged containers are not allowed")
    if host.get("capadd"):
        raise Refused(f"added capabilities {host['capadd']} are not allowed")
    if "ALL" not in [str(c).upper() for c in host.get("capdrop") or []]:
        raise Refused("containers must drop all capabilities (CapDrop: ALL)")
    security = [str(o) for o in host.get("securityopt") or []]
    if "no-new-privileges:true" not in security:
        raise Refused("containers must run with no-new-privileges")
    if set(security) - {"no-new-privileges:true", "no-new-privileges"}:
        raise Refused(f"security options {security} are not allowed (seccomp, apparmor...)")
    for key, allowed in _NAMESPACES.items():
        # "host", or "container:<id>" (another user's processes, memory or files).
        value = host.get(key.casefold())
        if value not in (None, *allowed):
            raise Refused(f"{key}={value} is not allowed")
    for key, why in _NEVER.items():
        # For the /proc path lists, present at all counts: an empty list unmasks them.
        if host.get(key) if key not in ("maskedpaths", "readonlypaths") else key in host:
            raise Refused(f"{key} is not allowed: {why}")
    for runtime in (spec.get("runtime"), host.get("runtime")):
        if runtime not in (None, "", "runc"):
            raise Refused(f"runtime {runtime!r} is not allowed (GPUs go through device requests)")
    if host.get("networkmode") not in (policy.network, None, ""):
        raise Refused(f"network {host.get('networkmode')!r} is not the hub's network")
    if host.get("devices"):
        raise Refused("host devices are not allowed (GPUs go through device requests)")
    for request in host.get("devicerequests") or []:
        if request.get("driver") not in ("nvidia", "", None):
            raise Refused(f"device driver {request.get('driver')!r} is not allowed")
    for bind in host.get("binds") or []:
        source = str(bind).split(":", 1)[0]
        if source.startswith("/") or not source.startswith(policy.volume_prefix):
            raise Refused(f"bind {bind!r} is not a user volume")
    for mount in host.get("mounts") or []:
        if mount.get("type") != "volume" or not str(mount.get("source", "")).startswith(
            policy.volume_prefix
        ):
            raise Refused(f"mount {mount!r} is not a user volume")
        if (mount.get("volumeoptions") or {}).get("driverconfig"):
            raise Refused("volume driver options in mounts are not allowed")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def container_in_path(method: str, path: str) -> tuple[str, str] | None:
    """(API version prefix, container) when an allowed request names one container."""
    match = re.fullmatch(_ONE_CONTAINER, path.split("?", 1)[0])
    if not match or method not in ("GET", "HEAD", "POST", "DELETE"):
        return None
    return match["version"], match["id"]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str) -> None:
        super().__init__("docker", timeout=30)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _inspect_path(version: str, container: str) -> str:
    return f"{version}/containers/{container}/json"


def is_plain_inspect(method: str, path: str, target: tuple[str, str]) -> bool:
    """True when the request is the very inspect the owner check made (same path, no
    query): its answer is reused, so the engine is asked once instead of twice
    (DockerSpawner polls this every 30 s)."""
    return method == "GET" and path == _inspect_path(*target)


def _inspect(socket_path: str, version: str, container: str) -> tuple[int, bytes]:
    connection = _UnixHTTPConnection(socket_path)
    try:
        connection.request("GET", _inspect_path(version, container))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_owner(policy: Policy, container: str, status: int, inspected: bytes) -> None:
    """Refuse unless the inspected container carries the owner label (404s pass through)."""
    if status == 404:
        return  # the engine answers the real request with its own 404
    try:
        labels = (json.loads(inspected).get("Config") or {}).get("Labels") or {}
    except (ValueError, AttributeError) as error:
        raise Refused(f"cannot read the labels of container {container!r}") from error
    if not labels.get(policy.owner_label):
        raise Refused(f"container {container!r} is not a labhub user container")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse keys given twice (in any case): Docker would merge them, json keeps one."""
    folded = [key.casefold() for key, _ in pairs]
    if len(set(folded)) != len(folded):
        raise Refused(f"a key is given twice in {[key for key, _ in pairs]}")
    return dict(pairs)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}", object_pairs_hook=_unique_keys)
    except ValueError as error:
        raise Refused(f"request body is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise Refused("request body is not a JSON object")
    return value


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, list[bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = [line for line in lines[1:] if line]
    length = 0
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            raise Refused("chunked request bodies are not supported")
    if length > MAX_BODY:
        raise Refused(f"request body of {length} bytes is too large")
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    await _send_json(writer, status, json.dumps({"message": message}).encode())


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def handle(
    policy: Policy, socket_path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Check one request, forward it to the Docker socket, stream the answer back."""
    try:
        try:
            method, path, headers, body = await _read_request(reader)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await _respond(writer, 400, "malformed request")
            return
        try:
            check_request(policy, method, path, body)
            target = container_in_path(method, path)
            if target:
                status, inspected = await asyncio.to_thread(_inspect, socket_path, *target)
                check_owner(policy, target[1], status, inspected)
                if status == 200 and is_plain_inspect(method, path, target):
                    await _send_json(writer, 200, inspected)
                    return
            up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        except Refused as refused:
            log.warning("refused %s %s: %s", method, path.split("?", 1)[0], refused)
            await _respond(writer, 403, f"refused by labhub docker proxy: {refused}")
            return
        except OSError as error:
            await _respond(writer, 502, f"cannot reach the Docker socket: {error}")
            return
        kept = [h for h in headers if not h.lower().startswith((b"connection:", b"keep-alive:"))]
        up_writer.write(
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
            + b"\r\n".join([*kept, b"Connection: close"])
            + b"\r\n\r\n"
            + body
        )
        await up_writer.drain()
        try:
            await _pipe(up_reader, writer)
        finally:
            up_writer.close()
    except Refused as refused:
        await _respond(writer, 403, f"refused by labhub docker proxy: {refused}")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def main() -> None:
    """Serve on LISTEN_HOST:LISTEN_PORT (0.0.0.0:2375); settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="[dockerproxy] %(levelname)s %(message)s")
    images = frozenset(i for i in os.environ.get("ALLOWED_IMAGES", "").split(",") if i)
    if not images:
        raise SystemExit("dockerproxy: ALLOWED_IMAGES is empty: set it to the workspace image")
    policy = Policy(allowed_images=images, network=os.environ.get("DOCKER_NETWORK", "labhub"))
    socket_path = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")
    port = int(os.environ.get("LISTEN_PORT", "2375"))
    # 0.0.0.0 inside its container (only the docker-api network reaches it); tests
    # running it on the host use 127.0.0.1.
    host = os.environ.get("LISTEN_HOST", "0.0.0.0")

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: handle(policy, socket_path, r, w), host=host, port=port
        )
        log.info("forwarding allowed requests to %s on %s:%d", socket_path, host, port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
