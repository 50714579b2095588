"""A filtering proxy in front of the Docker socket: the hub gets only what it needs.

The hub holds the keys to the host if it can talk to the Docker socket directly.
This proxy listens on TCP (on a network only the hub shares), forwards allowed
requests to the real socket and refuses everything else with 403:

* only the endpoints DockerSpawner uses (create/start/stop/remove/inspect/list
  containers, inspect images, create/inspect/remove user volumes, version/ping);
* `containers/create` only for the allowed image, never privileged, no added
  capabilities, no host paths, no host namespaces, no devices except GPU device
  requests, and always with no-new-privileges;
* no exec, no build, no pull, no attach, no archive, no networks or plugins.

Each client request is answered on a connection of its own (`Connection: close`),
which keeps the proxy a small, auditable piece of code.

Run: python -m labhub.dockerproxy (settings from the environment, see `main`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
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


def check_request(policy: Policy, method: str, path: str, body: bytes) -> None:
    """Raise Refused unless the request is one DockerSpawner legitimately makes."""
    route = path.split("?", 1)[0]
    if method in ("GET", "HEAD") and any(re.fullmatch(p, route) for p in _READ_ONLY):
        return
    if method == "POST" and re.fullmatch(_CONTAINER_ACTIONS, route):
        return
    if method == "DELETE" and re.fullmatch(_CONTAINER, route) and "/create" not in route:
        return
    if method == "POST" and re.fullmatch(_CREATE, route):
        check_container_create(policy, _json(body))
        return
    if method == "POST" and re.fullmatch(_VOLUME_CREATE, route):
        name = _json(body).get("Name", "")
        if not str(name).startswith(policy.volume_prefix):
            raise Refused(f"volume {name!r} is not a user volume ({policy.volume_prefix}*)")
        return
    volume = re.fullmatch(_VOLUME, route)
    if method == "DELETE" and volume:
        if not volume["name"].startswith(policy.volume_prefix):
            raise Refused(f"volume {volume['name']!r} is not a user volume")
        return
    raise Refused(f"{method} {route} is not needed by the hub")


def check_container_create(policy: Policy, spec: dict[str, Any]) -> None:
    """The container-create body: the allowed image, unprivileged, no host access."""
    image = spec.get("Image", "")
    if image not in policy.allowed_images:
        raise Refused(f"image {image!r} is not an allowed workspace image")
    if str(spec.get("User", "")).split(":")[0] in ("", "0", "root"):
        raise Refused("containers must run as a non-root user")
    host: dict[str, Any] = spec.get("HostConfig") or {}
    if host.get("Privileged"):
        raise Refused("privileged containers are not allowed")
    if host.get("CapAdd"):
        raise Refused(f"added capabilities {host['CapAdd']} are not allowed")
    if "no-new-privileges:true" not in (host.get("SecurityOpt") or []):
        raise Refused("containers must run with no-new-privileges")
    for key in ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        if host.get(key) == "host":
            raise Refused(f"{key}=host is not allowed")
    if host.get("NetworkMode") not in (policy.network, None, ""):
        raise Refused(f"network {host.get('NetworkMode')!r} is not the hub's network")
    if host.get("Devices"):
        raise Refused("host devices are not allowed (GPUs go through device requests)")
    for request in host.get("DeviceRequests") or []:
        if request.get("Driver") not in ("nvidia", "", None):
            raise Refused(f"device driver {request.get('Driver')!r} is not allowed")
    for bind in host.get("Binds") or []:
        source = bind.split(":", 1)[0]
        if source.startswith("/") or not source.startswith(policy.volume_prefix):
            raise Refused(f"bind {bind!r} is not a user volume")
    for mount in host.get("Mounts") or []:
        if mount.get("Type") != "volume" or not str(mount.get("Source", "")).startswith(
            policy.volume_prefix
        ):
            raise Refused(f"mount {mount!r} is not a user volume")


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
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
    payload = json.dumps({"message": message}).encode()
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
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
        except Refused as refused:
            log.warning("refused %s %s: %s", method, path.split("?", 1)[0], refused)
            await _respond(writer, 403, f"refused by labhub docker proxy: {refused}")
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
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
    """Serve on LISTEN_PORT (2375) for the hub; settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="[dockerproxy] %(levelname)s %(message)s")
    images = frozenset(i for i in os.environ.get("ALLOWED_IMAGES", "").split(",") if i)
    if not images:
        raise SystemExit("dockerproxy: ALLOWED_IMAGES is empty: set it to the workspace image")
    policy = Policy(allowed_images=images, network=os.environ.get("DOCKER_NETWORK", "labhub"))
    socket_path = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")
    port = int(os.environ.get("LISTEN_PORT", "2375"))

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: handle(policy, socket_path, r, w), host="0.0.0.0", port=port
        )
        log.info("forwarding allowed requests to %s on port %d", socket_path, port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
