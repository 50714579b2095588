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
   `Content-Length` for the re-serialised body, `Connection: close`, and for a Swarm
   service its own registry login (REGISTRY_USERNAME, `labhub.registry.pull_auth`). No
   byte of the client's head is forwarded;
5. it streams the engine's answer back and closes both connections.

A node's proxy (PROXY_POLICY=node) takes one streamed body: a home's tar upload, sent
chunked (`ChunkedBody`, strict) and forwarded as a new tar written member by member from
the checked fields (`labhub.hometar.rewrite`), never as the client's bytes. With disk
quotas it also relays two requests that are not the engine's, each sent as a new request
to its node's diskquota service: a home's subvolume and limit
(`labhub.diskquota.request_home`), and the deletion of a home's subvolume, only once the
engine has no volume of that name (`labhub.diskquota.request_removal`: no home in use is
deleted). It answers others itself: its stack's homes' usage on that node, read on the
service's usage socket (`labhub.diskquota.read_usage`), which reads nothing it is sent;
and its node's GPUs' utilisation and devices, read with nvidia-smi
(`labhub.gpu.inventory`).

One request is answered by the relay itself: the metrics exporter's `GET /system/df`
(`DiskUsage`), from one engine call every DISK_USAGE_EVERY seconds, cut down to the
sizes of its stack's user volumes.

Run: python -m labhub.dockerproxy (settings from the environment, see `main`).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import diskquota
from .contract import chp_host_names, nfs_export
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
    check_gpu_claim,
    check_metrics_request,
    check_node_request,
    check_owner,
    check_request,
    check_swarm_request,
    inspect_target,
    user_volume_sizes,
)
from .gpu import inventory
from .gpu.store import booked_devices
from .hometar import BadHomeArchive, rewrite
from .registry import check_pinned, image_digests, pull_auth
from .settings import boolean, names

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
    # `Transfer-Encoding: chunked` (only where `chunked_ok`: a node's tar upload).
    chunked: bool = False


def parse_head(head: bytes, chunked_ok: bool = False) -> RequestHead:
    """Validate a raw head (up to and including the blank line) and read it; with
    `chunked_ok`, exactly `Transfer-Encoding: chunked` and no Content-Length may stand in
    for a Content-Length."""
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
    encodings: list[bytes] = []
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
            encodings.append(value)
        if name.lower() == b"content-length":
            lengths.append(value)
    chunked = chunked_ok and encodings == [b"chunked"] and not lengths
    if encodings and not chunked:
        raise BadRequest("Transfer-Encoding is not accepted: send a Content-Length")
    if len(lengths) > 1:
        raise BadRequest("Content-Length given more than once")
    length = 0
    if lengths:
        if not lengths[0].isdigit() or len(lengths[0]) > 8:
            raise BadRequest(f"Content-Length {lengths[0]!r} is not a plain number of bytes")
        length = int(lengths[0])
    if length > MAX_BODY:
        raise BadRequest(f"request body of {length} bytes is larger than {MAX_BODY}")
    method, target = request_line["method"].decode(), request_line["target"].decode()
    return RequestHead(method, target, length, chunked)


def upstream_request(method: str, allowed: Allowed) -> bytes:
    """The request sent to the engine, built only from what the policy checked."""
    lines = [f"{method} {allowed.target} HTTP/1.1", "Host: docker"]
    if allowed.registry_auth:
        lines.append(f"X-Registry-Auth: {allowed.registry_auth}")
    if allowed.body:
        lines.append("Content-Type: application/json")
    if allowed.body or method == "POST":
        lines.append(f"Content-Length: {len(allowed.body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + allowed.body


async def read_request(
    reader: asyncio.StreamReader, chunked_ok: bool = False
) -> tuple[RequestHead, bytes]:
    """One request's head and body; BadRequest for bad framing or pipelined extra bytes.

    Reads in chunks into a buffer of its own, so bytes that came with the request
    beyond its body (a pipelined second request) are seen, without waiting for them.
    Bytes sent later are never read: the connection closes after one answer. A chunked
    body (`chunked_ok`) is not read here: the bytes after the head are returned, the
    start of the stream `ChunkedBody` reads.
    """
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_HEAD:
            raise BadRequest(f"request head longer than {MAX_HEAD} bytes")
        received += await _read_some(reader)
    head = parse_head(bytes(received[: end + 4]), chunked_ok)
    body = received[end + 4 :]
    if head.chunked:
        return head, bytes(body)
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


class ChunkedBody(io.RawIOBase):
    """A chunked request body, read strictly, as a blocking file (for a worker thread):
    `<hex size>CRLF<data>CRLF` up to `0CRLF CRLF`; no chunk extensions, no trailers."""

    def __init__(
        self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop, start: bytes
    ) -> None:
        self._reader, self._loop = reader, loop
        self._buffer = bytearray(start)
        self._left = 0  # bytes left in the current chunk
        self._done = False

    def readable(self) -> bool:
        return True

    def _more(self) -> None:
        future = asyncio.run_coroutine_threadsafe(_read_some(self._reader), self._loop)
        self._buffer += future.result(REQUEST_TIMEOUT)

    def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 64:
                raise BadRequest("a chunk size line longer than 64 bytes")
            self._more()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            return 0
        if not self._left:
            size = self._line()
            if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size):
                raise BadRequest(f"chunk size {size[:20]!r} is not 1 to 8 hex digits")
            self._left = int(size, 16)
            if not self._left:
                if self._line() != b"" or self._buffer:
                    raise BadRequest("no trailers and nothing after the last chunk")
                self._done = True
                return 0
        if not self._buffer:
            self._more()
        count = min(len(buffer), self._left, len(self._buffer))
        buffer[:count] = self._buffer[:count]
        del self._buffer[:count]
        self._left -= count
        if not self._left and self._line() != b"":
            raise BadRequest("a chunk's data is not followed by CRLF")
        return count

    def drain(self, most: int) -> None:
        """Read the rest of the body (a tar's zero padding), at most `most` bytes."""
        while self.read(65536):
            most -= 65536
            if most < 0:
                raise BadRequest("bytes after the end of the tar archive")


def _put_tar(socket_path: str, allowed: Allowed, body: ChunkedBody) -> tuple[int, bytes]:
    """Stream the client's tar to the engine through `hometar.rewrite` (chunked): the
    engine gets only re-written, checked members. Refused on the first bad member; the
    engine then sees the stream cut off, without its last chunk."""
    connection = _UnixHTTPConnection(socket_path)
    try:
        connection.putrequest("PUT", allowed.target, skip_host=True, skip_accept_encoding=True)
        for name, value in (
            ("Host", "docker"),
            ("Content-Type", "application/x-tar"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
        ):
            connection.putheader(name, value)
        connection.endheaders()
        try:
            for chunk in rewrite(body):
                if chunk:
                    connection.send(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
            body.drain(1024 * 1024)
            connection.send(b"0\r\n\r\n")
        except BadHomeArchive as error:
            raise Refused(f"tar upload: {error}") from None
        except (BrokenPipeError, ConnectionResetError):
            pass  # the engine answered before the end (an error): its answer is read below
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


async def _quota_home(socket_path: str, volume: str, limit: int) -> tuple[int, bytes]:
    """The node's diskquota service's answer for a home: 200 {"used", "limit"}, or 502
    {"message"} saying why not (no such service, a limit above its DISK_QUOTA_MAX, ...)."""
    try:
        found = await diskquota.request_home(volume, limit, socket_path)
    except diskquota.DiskQuotaError as error:
        log.warning("quota home %s: %s", volume, error)
        return 502, json.dumps({"message": str(error)}).encode()
    return 200, json.dumps({"used": found.used, "limit": found.limit}).encode()


async def _quota_home_removal(
    engine_socket: str, quota_socket: str, volume: str
) -> tuple[int, bytes]:
    """Delete the subvolume of the home ``volume``, once the node's engine has no volume of
    that name (which it keeps while a container uses it): 200 {"removed": bool}, 409 while
    the volume is there, or 502 {"message"} saying why not."""
    status, _ = await asyncio.to_thread(_inspect, engine_socket, f"/volumes/{volume}")
    if status != 404:
        why = (
            f"the volume {volume} is still on this node: remove it first (docker volume rm "
            f"{volume}), then its home"
            if status == 200
            else f"the engine answered {status} about the volume {volume}"
        )
        return (409 if status == 200 else 502), json.dumps({"message": why}).encode()
    try:
        removed = await diskquota.request_removal(volume, quota_socket)
    except diskquota.DiskQuotaError as error:
        log.warning("quota home removal %s: %s", volume, error)
        return 502, json.dumps({"message": str(error)}).encode()
    log.info("quota home %s: %s", volume, "deleted" if removed else "none to delete")
    return 200, json.dumps({"removed": removed}).encode()


async def _quota_usage(socket_path: str, prefix: str) -> tuple[int, bytes]:
    """The usage of the node's homes named ``prefix``* (this stack's): 200 {"volume":
    [used, limit]}, or 502 {"message"} saying why not (no diskquota service, no btrfs)."""
    try:
        found = await diskquota.read_usage(socket_path)
    except diskquota.DiskQuotaError as error:
        log.warning("quota usage: %s", error)
        return 502, json.dumps({"message": str(error)}).encode()
    homes = {v: [u.used, u.limit] for v, u in found.items() if v.startswith(prefix)}
    return 200, json.dumps(homes).encode()


async def _nvidia_smi(route: str) -> tuple[int, bytes]:
    """This node's GPUs, read with nvidia-smi here (the proxy runs with all of its node's
    GPUs visible, `scripts/swarm-manager.sh`): their utilisation, 200 {"index": [percent,
    MiB used]}; or the devices detected, 200 {"devices": [...]}. None on a node without GPUs
    or NVML."""
    if route == inventory.NODE_DEVICES_ROUTE:
        found = await asyncio.to_thread(inventory.detect_inventory)
        return 200, json.dumps(inventory.inventory_json(found)).encode()
    usage = await asyncio.to_thread(inventory.read_utilisation)
    return 200, json.dumps(inventory.utilisation_json(usage)).encode()


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    await _send_json(writer, status, json.dumps({"message": message}).encode())


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: bytes) -> None:
    reason = http.client.responses.get(status, "Unknown")
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


def verify_gpu_claim(gpu_db: str, socket_path: str, allowed: Allowed) -> None:
    """A Swarm GPU service: the record at GPU_DB books exactly its devices for its holder,
    on the node it is pinned to (read from the manager's node list). Blocking."""
    claim = allowed.gpu_claim
    if claim is None:
        return
    if not gpu_db:
        raise Refused("this proxy has no GPU record (GPU_DB): GPU services are refused")
    try:
        booked = booked_devices(gpu_db, claim.holder)
    except sqlite3.Error as error:
        raise Refused(f"cannot read the GPU record {gpu_db}: {error}") from error
    status, nodes = _inspect(socket_path, f"{allowed.version}/nodes")
    if status != 200:
        raise Refused(f"cannot read the node list (the engine answered {status})")
    check_gpu_claim(claim, booked, json.loads(nodes))


async def handle(
    check: Check,
    socket_path: str,
    disk_usage: DiskUsage,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    gpu_db: str = "",
    uploads: bool = False,
    quota_socket: str = diskquota.SOCKET,
    usage_socket: str = diskquota.NODE_USAGE_SOCKET,
) -> None:
    """Read one request, check it, send the engine a new one built from it, stream back.

    ``gpu_db``: the hub's GPU record (PROXY_POLICY=swarm), read only, for GPU services.
    With ``uploads`` (a node's proxy), a chunked tar upload is streamed through the checks.
    ``quota_socket``: the node's diskquota service, for a checked `quota_home`; and
    ``usage_socket`` its usage socket, for `quota_usage_of`."""
    method, target = "?", "?"
    try:
        try:
            head, body = await asyncio.wait_for(read_request(reader, uploads), REQUEST_TIMEOUT)
        except TimeoutError:
            await _respond(writer, 400, f"bad request: not complete within {REQUEST_TIMEOUT} s")
            return
        except BadRequest as error:
            log.warning("bad request: %s", error)
            await _respond(writer, 400, f"bad request: {error}")
            return
        method, target = head.method, head.target
        try:
            allowed = check(method, target, b"" if head.chunked else body)
            if head.chunked != allowed.tar_upload:
                await _respond(
                    writer, 400, "bad request: a tar upload, and only a tar upload, is sent chunked"
                )
                return
            if allowed.volumes_of:
                await _send_json(writer, 200, await disk_usage.answer(allowed))
                return
            if allowed.quota_home is not None:
                await _send_json(writer, *await _quota_home(quota_socket, *allowed.quota_home))
                return
            if allowed.quota_home_removal:
                removal = _quota_home_removal(socket_path, quota_socket, allowed.quota_home_removal)
                await _send_json(writer, *await removal)
                return
            if allowed.quota_usage_of:
                await _send_json(writer, *await _quota_usage(usage_socket, allowed.quota_usage_of))
                return
            if allowed.nvidia_smi:
                await _send_json(writer, *await _nvidia_smi(allowed.nvidia_smi))
                return
            if allowed.gpu_claim is not None:
                await asyncio.to_thread(verify_gpu_claim, gpu_db, socket_path, allowed)
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
            if allowed.tar_upload:
                source = ChunkedBody(reader, asyncio.get_running_loop(), body)
                status, answer = await asyncio.to_thread(_put_tar, socket_path, allowed, source)
                await _send_json(writer, status, answer or b"{}")
                return
            up_reader, up_writer = await asyncio.open_unix_connection(socket_path)
        except Refused as refused:
            log.warning("refused %s %s: %s", method, target.split("?", 1)[0], refused)
            await _respond(writer, 403, f"refused by labhub docker proxy: {refused}")
            return
        except BadRequest as error:
            await _respond(writer, 400, f"bad request: {error}")
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
    (the hub in front of a Swarm manager: ALLOWED_IMAGES, DOCKER_NETWORK, with REGISTRY their
    IMAGE_DIGESTS and the pull login REGISTRY_USERNAME and REGISTRY_PASSWORD, HOME_NFS,
    QUOTA_ROOT), node (in front of
    each Swarm node's engine, for home moves: ALLOWED_IMAGES, DOCKER_NETWORK), frontend
    (NGINX_PROXY_CONTAINER), metrics (DOCKER_NETWORK) or node-metrics (the same, in front
    of each Swarm node's engine): which client this proxy serves."""
    kind = env.get("PROXY_POLICY", "hub")
    if kind in ("metrics", "node-metrics"):
        readable = MetricsPolicy(
            network=env.get("DOCKER_NETWORK", "labhub"), swarm=kind == "node-metrics"
        )
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
    if kind not in ("hub", "swarm", "node"):
        raise SystemExit(
            f"dockerproxy: PROXY_POLICY={kind!r}: use hub, swarm, node, frontend, metrics "
            "or node-metrics"
        )
    if kind != "swarm" and env.get("HOME_NFS"):
        raise SystemExit(
            f"dockerproxy: HOME_NFS is only for PROXY_POLICY=swarm (the hub's proxy in front "
            f"of a Swarm manager), not {kind}: leave it empty here"
        )
    # The workspace image and WORKSPACE_IMAGES (compose joins them), in .env's list grammar.
    images = names(env.get("ALLOWED_IMAGES", ""))
    if not images:
        raise SystemExit(
            "dockerproxy: ALLOWED_IMAGES is empty: set it to the workspace image (and "
            "WORKSPACE_IMAGES)"
        )
    network = env.get("DOCKER_NETWORK", "labhub")
    if kind == "node":
        # In front of one node's engine: users' volumes and copy helpers (labhub.homemove),
        # and the relay to the node's diskquota service (its sockets, when make up runs one).
        # With QUOTA_ROOT a user volume may be made bound onto its folder there (a home
        # moved or restored into a quota home), as the manager's proxy allows for services.
        node = Policy(allowed_images=images, network=network, quota_root=env.get("QUOTA_ROOT", ""))
        return lambda method, target, body: check_node_request(node, method, target, body)
    if kind == "swarm":
        # In front of a Swarm manager: LabSwarmSpawner's service calls, the datasets
        # read-only, each home plain, on NFS (HOME_NFS) or a disk-quota home (QUOTA_ROOT).
        if env.get("QUOTA_ROOT") and env.get("HOME_NFS"):
            raise SystemExit(
                "dockerproxy: QUOTA_ROOT and HOME_NFS are both set: the homes are either on "
                "the NFS server or in the nodes' QUOTA_ROOT; leave one empty"
            )
        images = _pinned_images(env, images)
        swarm = Policy(
            allowed_images=images,
            network=network,
            frontend_containers=_frontends(env),
            chp_host_names=_chp_host_names(env),
            dataset_binds=_dataset_binds(env, network),
            home_nfs=_home_nfs(env),
            quota_root=env.get("QUOTA_ROOT", ""),
            registry_auth=_registry_auth(env),
        )
        return lambda method, target, body: check_swarm_request(swarm, method, target, body)
    policy = Policy(
        allowed_images=images,
        network=network,
        dataset_binds=_dataset_binds(env, network),
        quota_root=env.get("QUOTA_ROOT", ""),
    )
    return lambda method, target, body: check_request(policy, method, target, body)


def _home_nfs(env: dict[str, str]) -> str:
    """HOME_NFS, checked as the settings check it (labhub.contract.nfs_export)."""
    raw = env.get("HOME_NFS", "")
    if raw:
        try:
            nfs_export(raw)
        except ValueError as error:
            raise SystemExit(f"dockerproxy: HOME_NFS={raw!r} {error}") from None
    return raw


def _dataset_binds(env: dict[str, str], network: str) -> frozenset[str]:
    """The declared datasets' read-only binds (DATASETS), the only host mounts allowed."""
    try:
        datasets = load_datasets(env.get("DATASETS", ""), network)
    except DatasetsError as error:
        raise SystemExit(f"dockerproxy: {error}") from None
    return frozenset(dataset.bind for dataset in datasets)


def _pinned_images(env: dict[str, str], images: frozenset[str]) -> frozenset[str]:
    """With REGISTRY, the proxy of a Swarm manager admits that registry's digest references
    only: each of ALLOWED_IMAGES as `make push` recorded it (IMAGE_DIGESTS), since a tag
    could be pointed at other bytes."""
    registry = env.get("REGISTRY", "")
    if not registry:
        return images
    try:
        digests = image_digests(env.get("IMAGE_DIGESTS", ""))
    except ValueError as error:
        raise SystemExit(f"dockerproxy: IMAGE_DIGESTS {error}") from None
    pinned = frozenset(digests.get(image, image) for image in images)
    for image in sorted(pinned):
        try:
            check_pinned(registry, image)
        except ValueError as error:
            raise SystemExit(f"dockerproxy: ALLOWED_IMAGES holds {error}") from None
    return pinned


def _registry_auth(env: dict[str, str]) -> str:
    """REGISTRY_USERNAME and REGISTRY_PASSWORD, checked as the settings check them: the
    X-Registry-Auth of every service this proxy creates, or empty (anonymous pulls)."""
    registry, username = env.get("REGISTRY", ""), env.get("REGISTRY_USERNAME", "")
    password = env.get("REGISTRY_PASSWORD", "")
    if not username and not password:
        return ""
    if not registry or not username or not password:
        raise SystemExit(
            "dockerproxy: REGISTRY_USERNAME and REGISTRY_PASSWORD go together, and with "
            "REGISTRY: set both (a pull account of the registry) or neither"
        )
    return pull_auth(registry, username, password)


def _chp_host_names(env: dict[str, str]) -> frozenset[str]:
    """The names a user's service may resolve to configurable-http-proxy, from DOMAIN and
    SUBDOMAINS as the hub reads them (labhub.contract.chp_host_names)."""
    try:
        subdomains = boolean(env.get("SUBDOMAINS") or "false")
    except ValueError as error:
        raise SystemExit(f"dockerproxy: SUBDOMAINS={env['SUBDOMAINS']!r} {error}") from None
    return frozenset(chp_host_names(env.get("DOMAIN") or "localhost", subdomains))


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
    # PROXY_POLICY=swarm: the hub's GPU record (its data volume, mounted read-only).
    gpu_db = os.environ.get("GPU_DB", "")
    uploads = os.environ.get("PROXY_POLICY") == "node"

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: handle(check, socket_path, disk_usage, r, w, gpu_db, uploads),
            host=host,
            port=port,
        )
        log.info("forwarding checked requests to %s on %s:%d", socket_path, host, port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
