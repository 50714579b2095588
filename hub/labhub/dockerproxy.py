"""A filtering proxy in front of the Docker socket: a client gets only what it needs.

Whoever talks to the Docker socket holds the keys to the host. This proxy listens on
TCP (on a network only its client shares) and, for each connection, handles exactly
one request:

1. it reads the request head and validates the raw bytes strictly, before any
   parsing (`parse_head`): ASCII only, every line ends in CRLF (no bare CR or LF,
   which the engine's Go parser would take as a line end), no obs-fold, header names
   that are tokens, `METHOD SP /path SP HTTP/1.1`, at most one all-digit
   Content-Length, no Transfer-Encoding, a bounded head and body; anything else is
   400. A well-kept parser (h11) is not used: it accepts bare LF and unfolds
   obs-fold, the very differences this check exists to refuse, and after the check
   a head is just CRLF-separated `name: value` lines;
2. it reads exactly Content-Length body bytes, and refuses a request that came with
   more (a pipelined second request);
3. the policy (`labhub.dockerpolicy`, pure rules) checks method, target and body
   and, for a request that names one container, the relay asks the engine whether
   that container carries the owner label;
4. it builds the upstream request anew from what was checked: method, the rebuilt
   target, `Host: docker`, `Content-Type: application/json` and a recomputed
   `Content-Length` for the re-serialised body, `Connection: close`. No byte of
   the client's head is forwarded;
5. it streams the engine's answer back and closes both connections.

One request is answered by the relay itself: the metrics exporter's `GET /system/df`
(`DiskUsage`), from one engine call every DISK_USAGE_EVERY seconds, cut down to the
sizes of its stack's user volumes.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .datasets import DatasetsError, load_datasets
from .dockerpolicy import (
    DISK_USAGE_EVERY,
    MAX_BODY,
    Allowed,
    FrontendPolicy,
    MetricsPolicy,
    Policy,
    Refused,
    check_frontend_request,
    check_metrics_request,
    check_owner,
    check_request,
    check_swarm_request,
    inspect_target,
    user_volume_sizes,
)
from .settings import names

log = logging.getLogger("labhub.dockerproxy")

MAX_HEAD = 16 * 1024
MAX_HEADERS = 64
# How long a client may take to send its request (head and body).
REQUEST_TIMEOUT = 30.0
# RFC 9110 token (a header name) and field value (visible ASCII, inner SP/HTAB).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")
_REQUEST_LINE = re.compile(rb"(?P<method>[A-Z]{1,16}) (?P<target>/[\x21-\x7e]*) HTTP/1\.1")

Check = Callable[[str, str, bytes], Allowed]


class BadRequest(Exception):
    """A request whose framing the proxy will not guess at; the message says what is wrong."""


@dataclass(frozen=True)
class RequestHead:
    """What the proxy reads of a request head: method, target and body length."""

    method: str
    target: str
    content_length: int


def parse_head(head: bytes) -> RequestHead:
    """Validate a raw head (up to and including the blank line) and read it."""
    if len(head) > MAX_HEAD:
        raise BadRequest(f"request head longer than {MAX_HEAD} bytes")
    if not head.endswith(b"\r\n\r\n") or not head.isascii():
        raise BadRequest("request head must be ASCII and end with CRLF CRLF")
    lines = head[:-4].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise BadRequest("bare CR or LF in the request head: lines end with CRLF only")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if not request_line:
        raise BadRequest(f"request line {lines[0]!r} is not 'METHOD /path HTTP/1.1'")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} header lines")
    lengths: list[bytes] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obs-fold (a header line starting with a space) is not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(f"header name {name!r} is not a token (no spaces before ':')")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise BadRequest(f"header {name.decode()} has control characters in its value")
        if name.lower() == b"transfer-encoding":
            raise BadRequest("Transfer-Encoding is not accepted: send a Content-Length")
        if name.lower() == b"content-length":
            lengths.append(value)
    if len(lengths) > 1:
        raise BadRequest("Content-Length given more than once")
    length = 0
    if lengths:
        if not lengths[0].isdigit() or len(lengths[0]) > 8:
            raise BadRequest(f"Content-Length {lengths[0]!r} is not a plain number of bytes")
        length = int(lengths[0])
    if length > MAX_BODY:
        raise BadRequest(f"request body of {length} bytes is larger than {MAX_BODY}")
    return RequestHead(request_line["method"].decode(), request_line["target"].decode(), length)


def upstream_request(method: str, allowed: Allowed) -> bytes:
    """The request sent to the engine, built only from what the policy checked."""
    lines = [f"{method} {allowed.target} HTTP/1.1", "Host: docker"]
    if allowed.body:
        lines.append("Content-Type: application/json")
    if allowed.body or method == "POST":
        lines.append(f"Content-Length: {len(allowed.body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + allowed.body


async def read_request(reader: asyncio.StreamReader) -> tuple[RequestHead, bytes]:
    """One request's head and body; BadRequest for bad framing or pipelined extra bytes.

    Reads in chunks into a buffer of its own, so bytes that came with the request
    beyond its body (a pipelined second request) are seen, without waiting for them.
    Bytes sent later are never read: the connection closes after one answer.
    """
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_HEAD:
            raise BadRequest(f"request head longer than {MAX_HEAD} bytes")
        received += await _read_some(reader)
    head = parse_head(bytes(received[: end + 4]))
    body = received[end + 4 :]
    while len(body) < head.content_length:
        body += await _read_some(reader)
    if len(body) > head.content_length:
        raise BadRequest("bytes after the request body: one request per connection")
    return head, bytes(body)


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    chunk = await reader.read(65536)
    if not chunk:
        raise BadRequest("the client closed the connection before the request was complete")
    return chunk


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float = 30) -> None:
        super().__init__("docker", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _inspect(socket_path: str, target: str, timeout: float = 30) -> tuple[int, bytes]:
    connection = _UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class DiskUsage:
    """The engine's disk usage, read at most once every `every` seconds whatever the
    client asks (the engine reads every file of every volume to answer it)."""

    socket_path: str
    every: float = DISK_USAGE_EVERY
    read_at: float = float("-inf")
    usage: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def answer(self, allowed: Allowed) -> bytes:
        """`{"Volumes": {name: bytes}}` for the stack's user volumes (`allowed.volumes_of`)."""
        async with self.lock:  # one engine call at a time, the others wait for its answer
            if time.monotonic() - self.read_at >= self.every:
                status, body = await asyncio.to_thread(
                    _inspect, self.socket_path, allowed.target, self.every
                )
                if status != 200:
                    raise OSError(f"the engine answered {status} to {allowed.target}")
                self.usage, self.read_at = json.loads(body), time.monotonic()
        sizes = user_volume_sizes(self.usage, allowed.volumes_of)
        return json.dumps({"Volumes": sizes}).encode()


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
    check: Check,
    socket_path: str,
    disk_usage: DiskUsage,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Read one request, check it, send the engine a new one built from it, stream back."""
    method, target = "?", "?"
    try:
        try:
            head, body = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT)
        except TimeoutError:
            await _respond(writer, 400, f"bad request: not complete within {REQUEST_TIMEOUT} s")
            return
        except BadRequest as error:
            log.warning("bad request: %s", error)
            await _respond(writer, 400, f"bad request: {error}")
            return
        method, target = head.method, head.target
        try:
            allowed = check(method, target, body)
            if allowed.volumes_of:
                await _send_json(writer, 200, await disk_usage.answer(allowed))
                return
            if allowed.owned_container is not None:
                status, inspected = await asyncio.to_thread(
                    _inspect, socket_path, inspect_target(allowed)
                )
                check_owner(
                    allowed.owned_container, status, inspected,
                    kind=allowed.owned_kind, network=allowed.owner_network,
                )  # fmt: skip
                # A plain inspect (DockerSpawner polls it): answer with the check's own.
                if status == 200 and method == "GET" and allowed.target == inspect_target(allowed):
                    await _send_json(writer, 200, inspected)
                    return
            up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        except Refused as refused:
            log.warning("refused %s %s: %s", method, target.split("?", 1)[0], refused)
            await _respond(writer, 403, f"refused by labhub docker proxy: {refused}")
            return
        except OSError as error:
            await _respond(writer, 502, f"cannot reach the Docker socket: {error}")
            return
        try:
            up_writer.write(upstream_request(method, allowed))
            await up_writer.drain()
            await _pipe(up_reader, writer)
        finally:
            up_writer.close()
    except ConnectionError:
        log.info("connection lost during %s %s", method, target.split("?", 1)[0])
    finally:
        writer.close()


def policy_from_env(env: dict[str, str]) -> Check:
    """PROXY_POLICY=hub (default: ALLOWED_IMAGES, DOCKER_NETWORK, DATASETS, QUOTA_ROOT), swarm
    (the hub in front of a Swarm manager: ALLOWED_IMAGES, DOCKER_NETWORK), frontend
    (NGINX_PROXY_CONTAINER) or metrics (DOCKER_NETWORK): which client this proxy serves."""
    kind = env.get("PROXY_POLICY", "hub")
    if kind == "metrics":
        readable = MetricsPolicy(network=env.get("DOCKER_NETWORK", "labhub"))
        return lambda method, target, body: check_metrics_request(readable, method, target, body)
    if kind == "frontend":
        nginx = env.get("NGINX_PROXY_CONTAINER", "")
        if not nginx:
            raise SystemExit(
                "dockerproxy: NGINX_PROXY_CONTAINER is empty: set it to the nginx-proxy "
                "container's name (PROXY_POLICY=frontend)"
            )
        frontend = FrontendPolicy(nginx_container=nginx)
        return lambda method, target, body: check_frontend_request(frontend, method, target, body)
    if kind not in ("hub", "swarm"):
        raise SystemExit(f"dockerproxy: PROXY_POLICY={kind!r}: use hub, swarm, frontend or metrics")
    # The workspace image and WORKSPACE_IMAGES (compose joins them), in .env's list grammar.
    images = names(env.get("ALLOWED_IMAGES", ""))
    if not images:
        raise SystemExit(
            "dockerproxy: ALLOWED_IMAGES is empty: set it to the workspace image (and "
            "WORKSPACE_IMAGES)"
        )
    network = env.get("DOCKER_NETWORK", "labhub")
    if kind == "swarm":
        # In front of a Swarm manager: LabSwarmSpawner's service calls (no datasets or
        # disk quotas in Swarm mode yet: refused rather than silently left out).
        for unsupported in ("DATASETS", "QUOTA_ROOT"):
            if env.get(unsupported):
                raise SystemExit(
                    f"dockerproxy: {unsupported} is not supported with PROXY_POLICY=swarm yet: "
                    "leave it empty (docs/scale-out.md)"
                )
        swarm = Policy(allowed_images=images, network=network, frontend_containers=_frontends(env))
        return lambda method, target, body: check_swarm_request(swarm, method, target, body)
    try:
        datasets = load_datasets(env.get("DATASETS", ""), network)
    except DatasetsError as error:
        raise SystemExit(f"dockerproxy: {error}") from None
    policy = Policy(
        allowed_images=images,
        network=network,
        dataset_binds=frozenset(dataset.bind for dataset in datasets),
        quota_root=env.get("QUOTA_ROOT", ""),
    )
    return lambda method, target, body: check_request(policy, method, target, body)


def _frontends(env: dict[str, str]) -> frozenset[str]:
    """FRONTEND_CONTAINERS: the containers the hub may connect to users' networks, by name
    (a name of hex digits only could also be read as the prefix of another container's ID)."""
    frontends = names(env.get("FRONTEND_CONTAINERS", ""))
    if not frontends:
        raise SystemExit(
            "dockerproxy: FRONTEND_CONTAINERS is empty: set it to the names of the hub's and "
            "CHP's containers (LabSwarmSpawner.frontend_containers), PROXY_POLICY=swarm"
        )
    for name in frontends:
        if re.fullmatch(r"[0-9a-fA-F]+", name):
            raise SystemExit(
                f"dockerproxy: FRONTEND_CONTAINERS {name!r} looks like a container ID: "
                "name the frontends with a name that is not only hex digits"
            )
    return frontends


def main() -> None:
    """Serve on LISTEN_HOST:LISTEN_PORT (0.0.0.0:2375); settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="[dockerproxy] %(levelname)s %(message)s")
    check = policy_from_env(dict(os.environ))
    socket_path = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")
    port = int(os.environ.get("LISTEN_PORT", "2375"))
    # 0.0.0.0 inside its container (only its client's network reaches it); tests
    # running it on the host use 127.0.0.1.
    host = os.environ.get("LISTEN_HOST", "0.0.0.0")

    disk_usage = DiskUsage(socket_path)

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: handle(check, socket_path, disk_usage, r, w), host=host, port=port
        )
        log.info("forwarding checked requests to %s on %s:%d", socket_path, host, port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
