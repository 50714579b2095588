"""Disk quotas the kernel enforces: each user's home is a btrfs subvolume with a qgroup limit.

With QUOTA_ROOT set (a host folder on btrfs with quotas enabled), a user's home volume
is a `local` volume bound to ``QUOTA_ROOT/<volume name>``, a subvolume whose qgroup limit
is the user's quota: past it, writes fail with EDQUOT ("Disk quota exceeded") and the
rest of the disk stays free for everyone else.

Why btrfs: project quotas need XFS built with quota support or ext4 with the v2 quota
format, and neither is in every kernel (nor in the one labhub is tested on); btrfs qgroups
are, and Docker's `local` driver binds a subvolume like any folder. Setting a qgroup limit
needs CAP_SYS_ADMIN, so it is done by the `diskquota` service (`labhub-diskquota run`),
not the hub: root in a container with CAP_SYS_ADMIN and CHOWN only, no network, no
secret, no Docker socket, and only QUOTA_ROOT mounted. The hub asks it over a Unix socket
to prepare a home (`request_home`) or delete a removed user's (`request_removal`); it
accepts only user volume names and limits up to its own DISK_QUOTA_MAX. On a second
socket, which reads nothing, it answers every home's usage and limit (`read_usage`, for
the per-user metrics of `labhub.containermetrics`).

In Swarm mode a home is on one node, so its subvolume is made there: `make up` runs this
service on every node (still no network), its socket in a volume it shares with that
node's Docker proxy alone. The hub asks the home node's proxy, which it already reaches
for home moves (labhub.homemove.find_node_proxies), at `QUOTA_HOME_ROUTE` +
<volume name> (`request_home_through`); that proxy checks the request
(labhub.dockerpolicy.check_node_request) and relays it to the socket as a new one. A
DELETE there deletes the subvolume of a home whose volume that node's engine no longer
has (`request_removal_through`: a home moved away, restored, or of a removed user). The
node's usage socket is in that volume too (`NODE_USAGE_SOCKET`): at `GET
QUOTA_USAGE_ROUTE` the node's proxy answers the usage of that node's homes of its stack,
which the GPU service reads on every node for api/me and the *Homes* table
(labhub.gpu.homes).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import CONTAINER_USER

# Where the hub and the diskquota service meet (a volume both mount).
SOCKET = "/run/labhub-diskquota/diskquota.sock"
# Where the metrics exporter reads every home's usage (another volume, read-only service).
USAGE_SOCKET = "/run/labhub-diskquota-usage/usage.sock"
# Swarm mode: a node's usage socket, beside SOCKET in the volume that only the node's Docker
# proxy also mounts (scripts/swarm-manager.sh gives it as --usage-socket).
NODE_USAGE_SOCKET = "/run/labhub-diskquota/usage.sock"
# A node proxy's routes that are not the engine's: POST <this><volume name>,
# {"Limit": bytes}; DELETE <this><volume name>; GET <the other>: the usage of the node's
# homes of the proxy's stack, answered as the usage socket answers (`usages`).
QUOTA_HOME_ROUTE = "/labhub/quota-homes/"
QUOTA_USAGE_ROUTE = "/labhub/quota-usage"
# `<DOCKER_NETWORK>-user-<escaped name>` (labhub.contract.volume_name_for): one path part.
_VOLUME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}-user-[a-z0-9_-]{1,127}")


class DiskQuotaError(RuntimeError):
    """A home cannot be prepared or read; the message says why and what to do."""


@dataclass(frozen=True)
class DiskQuotas:
    """Who gets how many bytes: a user's own limit, else the largest of their groups',
    else the default. ``root`` empty: quotas are off (plain named volumes)."""

    root: str = ""
    default: int = 0
    groups: Mapping[str, int] = field(default_factory=dict)
    users: Mapping[str, int] = field(default_factory=dict)

    def limit_for(self, username: str, groups: Iterable[str]) -> int:
        if username in self.users:
            return self.users[username]
        limits = [self.groups[g] for g in groups if g in self.groups]
        return max(limits) if limits else self.default


@dataclass(frozen=True)
class Usage:
    used: int
    limit: int


def _btrfs(*args: str) -> str:
    result = subprocess.run(
        ["btrfs", *args], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        said = result.stderr.strip() or f"exit {result.returncode}, no message"
        raise DiskQuotaError(f"btrfs {' '.join(args)}: {said}")
    return result.stdout


def _home_qgroups(root: Path) -> dict[str, str]:
    """Each home's qgroup ("0/<subvolume id>") by volume name, read on ``root`` itself:
    a home is 0700 to its student, and this service (no CAP_DAC_OVERRIDE) cannot open it."""
    qgroups = {}
    for line in _btrfs("subvolume", "list", "-o", str(root)).splitlines():
        # ID 256 gen 13 top level 5 path <path from the filesystem's top>
        head, _, path = line.partition(" path ")
        name = Path(path).name
        if head.startswith("ID ") and is_home_volume(name):
            qgroups[name] = f"0/{head.split()[1]}"
    return qgroups


def homes_usage(root: Path) -> dict[str, Usage]:
    """Every home under ``root`` by volume name: bytes used and allowed (0: no limit).
    Two btrfs calls on ``root``, however many homes there are."""
    volumes = {qgroup: volume for volume, qgroup in _home_qgroups(root).items()}
    found = {}
    for line in _btrfs("qgroup", "show", "--raw", "-re", str(root)).splitlines():
        columns = line.split()
        if columns and columns[0] in volumes:
            limit = columns[3]
            found[volumes[columns[0]]] = Usage(
                int(columns[1]), 0 if limit == "none" else int(limit)
            )
    return dict(sorted(found.items()))


def ensure_home(root: Path, volume: str, limit: int) -> Usage:
    """Create ``root/volume`` as a subvolume owned by the container user, limited to
    ``limit`` bytes (set again each time: the limit follows the settings)."""
    if not is_home_volume(volume):
        raise DiskQuotaError(f"{volume!r} is not a user volume name")
    home = root / volume
    if not home.exists():
        _btrfs("subvolume", "create", str(home))
        uid, gid = (int(part) for part in CONTAINER_USER.split(":"))
        os.chown(home, uid, gid)
    qgroup = _home_qgroups(root).get(volume)
    if qgroup is None:
        raise DiskQuotaError(f"{home} is not a btrfs subvolume: move it away, then start again")
    # By qgroup id on QUOTA_ROOT: once the student's server ran, the home is 0700 to them.
    _btrfs("qgroup", "limit", str(limit), qgroup, str(root))
    return usage(home)


def usage(home: Path) -> Usage:
    """One home's bytes used and limit (0: none), read on its QUOTA_ROOT."""
    found = homes_usage(home.parent).get(home.name)
    if found is None:
        raise DiskQuotaError(
            f"{home}: no qgroup; run `btrfs quota enable` on QUOTA_ROOT's filesystem"
        )
    return found


def check_root(root: Path) -> None:
    """QUOTA_ROOT must be on btrfs with quotas on, or no limit could be enforced."""
    if not root.is_dir():
        raise DiskQuotaError(f"QUOTA_ROOT={root} is not a folder here: create it on a btrfs fs")
    try:
        _btrfs("qgroup", "show", str(root))
    except DiskQuotaError as error:
        raise DiskQuotaError(
            f"QUOTA_ROOT={root} has no btrfs quotas ({error}); it must be on btrfs, then "
            f"run `btrfs quota enable {root}` once (docs/admin-guide.md#disk-quotas)"
        ) from None


def remove_home(root: Path, volume: str) -> bool:
    """Delete the home subvolume of a user whose volume was removed; False if none."""
    if not is_home_volume(volume):
        raise DiskQuotaError(f"{volume!r} is not a user volume name")
    qgroup = _home_qgroups(root).get(volume)
    if qgroup is None:
        if (root / volume).exists():
            raise DiskQuotaError(f"{root / volume} is not a btrfs subvolume: not deleted")
        return False
    # By its ID on QUOTA_ROOT: `btrfs subvolume delete <path>` opens the home, which once
    # the student's server ran is 0700 to them, and this service has no CAP_DAC_READ_SEARCH.
    _btrfs("subvolume", "delete", "--subvolid", qgroup.removeprefix("0/"), str(root))
    return True


async def _answer(
    root: Path, most: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One request per connection: {"volume", "limit": bytes} -> its usage;
    {"volume", "remove": true} -> whether a home was deleted; or an error."""
    try:
        request = json.loads(await reader.readline())
        volume = str(request["volume"])
        answer: dict[str, object]
        if request.get("remove") is True:
            answer = {"removed": await asyncio.to_thread(remove_home, root, volume)}
        else:
            limit = request["limit"]
            if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= most:
                raise DiskQuotaError(f"limit {limit!r} is not 1 to DISK_QUOTA_MAX={most} bytes")
            found = await asyncio.to_thread(ensure_home, root, volume, limit)
            answer = {"used": found.used, "limit": found.limit}
    except (ValueError, KeyError, TypeError, DiskQuotaError) as error:
        answer = {"error": str(error)}
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()
    writer.close()


async def _ask(request: dict[str, object], socket_path: str) -> dict[str, Any]:
    """Send one request to the diskquota service; its answer, or DiskQuotaError."""
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path)
    except OSError as error:
        raise DiskQuotaError(
            f"the diskquota service does not answer at {socket_path} ({error.strerror}): "
            "see `make logs SERVICE=diskquota`"
        ) from None
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    answer: dict[str, Any] = json.loads(await reader.readline() or b"{}")
    writer.close()
    if "error" in answer or not answer:
        raise DiskQuotaError(
            f"diskquota refused {request['volume']}: {answer.get('error', 'no answer')}"
        )
    return answer


async def request_home(volume: str, limit: int, socket_path: str = SOCKET) -> Usage:
    """The hub's side: have the diskquota service prepare ``volume`` with ``limit`` bytes."""
    answer = await _ask({"volume": volume, "limit": limit}, socket_path)
    return Usage(answer["used"], answer["limit"])


async def request_removal(volume: str, socket_path: str = SOCKET) -> bool:
    """The hub's side: delete the home of a removed ``volume``; False if it had none."""
    answer = await _ask({"volume": volume, "remove": True}, socket_path)
    return bool(answer["removed"])


def request_home_through(proxy: str, volume: str, limit: int) -> Usage:
    """The hub's side in Swarm mode: have the diskquota service of the node whose Docker
    proxy is at ``proxy`` (tcp://address:port) prepare ``volume``. Blocking."""
    answer = _ask_through(proxy, "POST", QUOTA_HOME_ROUTE + volume, {"Limit": limit})
    return Usage(answer["used"], answer["limit"])


def request_removal_through(proxy: str, volume: str) -> bool:
    """The hub's side in Swarm mode: delete ``volume``'s home subvolume on the node whose
    Docker proxy is at ``proxy``, once that node's engine has no volume of that name (the
    proxy checks); False if there was none. Blocking."""
    return bool(_ask_through(proxy, "DELETE", QUOTA_HOME_ROUTE + volume)["removed"])


def usage_through(proxy: str) -> dict[str, Usage]:
    """The homes of the proxy's stack on the node whose Docker proxy is at ``proxy``, by
    volume name (each a subvolume there). Blocking."""
    answer = _ask_through(proxy, "GET", QUOTA_USAGE_ROUTE)
    try:
        return usages(answer)
    except (TypeError, ValueError, AttributeError):
        raise DiskQuotaError(
            f"the Docker proxy at {proxy} gave no usage: {answer!r:.200}"
        ) from None


def _ask_through(
    proxy: str, method: str, route: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One request to a node's Docker proxy for its diskquota service: the JSON answer of a
    200, else DiskQuotaError with the proxy's message."""
    address, _, port = proxy.removeprefix("tcp://").rpartition(":")
    connection = http.client.HTTPConnection(address, int(port), timeout=60)
    try:
        if body is None:
            connection.request(method, route)
        else:
            connection.request(
                method, route, json.dumps(body), {"Content-Type": "application/json"}
            )
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as error:
        raise DiskQuotaError(f"the Docker proxy at {proxy} did not answer: {error}") from None
    finally:
        connection.close()
    if response.status != 200 or not isinstance(answer, dict):
        message = answer.get("message", answer) if isinstance(answer, dict) else answer
        raise DiskQuotaError(
            f"the node's Docker proxy at {proxy} answered {response.status} to {method} "
            f"{route}: {message}"
        )
    return answer


def is_home_volume(name: str) -> bool:
    """Whether ``name`` is a user volume's name: the only folders this service makes."""
    return bool(_VOLUME.fullmatch(name))


def report(root: Path) -> str:
    """Every home under ``root``: its volume, MiB used and MiB allowed (for admins)."""
    return usage_table([(volume, "", found) for volume, found in homes_usage(root).items()])


def usage_table(homes: Iterable[tuple[str, str, Usage]], nodes: bool = False) -> str:
    """Homes as `make disk-usage` prints them, most used first: volume, MiB used and
    allowed; with ``nodes`` (Swarm mode) the node of each (a volume on two nodes, such as
    an old copy kept by a move, is a row on each)."""
    node = f" {'node':<26}" if nodes else ""
    lines = [f"{'home volume':<60}{node} {'used MiB':>10} {'limit MiB':>10}"]
    for volume, where, found in sorted(homes, key=lambda row: (-row[2].used, row[0], row[1])):
        limit = f"{found.limit / 2**20:.1f}" if found.limit else "none"
        column = f" {where:<26}" if nodes else ""
        lines.append(f"{volume:<60}{column} {found.used / 2**20:>10.1f} {limit:>10}")
    return "\n".join(lines)


async def _answer_usage(root: Path, writer: asyncio.StreamWriter) -> None:
    """The usage socket: every home's {"volume": [used, limit]}, whatever is sent (nothing
    is read), or {"error": ...}."""
    try:
        found = await asyncio.to_thread(homes_usage, root)
        answer: dict[str, object] = {v: [u.used, u.limit] for v, u in found.items()}
    except DiskQuotaError as error:
        answer = {"error": str(error)}
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()
    writer.close()


async def read_usage(socket_path: str = USAGE_SOCKET) -> dict[str, Usage]:
    """The exporter's side: every home's usage by volume name; DiskQuotaError if the
    service does not answer (quotas off: no socket)."""
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path)
    except OSError as error:
        raise DiskQuotaError(f"no disk usage at {socket_path} ({error.strerror})") from None
    answer: dict[str, Any] = json.loads(await reader.readline() or b"{}")
    writer.close()
    if "error" in answer:
        raise DiskQuotaError(f"diskquota could not read the homes: {answer['error']}")
    return usages(answer)


def usages(answer: Mapping[str, Any]) -> dict[str, Usage]:
    """The usage socket's answer, {"volume": [used, limit]}, as Usage by volume name;
    ValueError or TypeError if it is not one."""
    return {str(volume): Usage(int(used), int(limit)) for volume, (used, limit) in answer.items()}


def main(argv: list[str] | None = None) -> None:
    """labhub-diskquota run: serve the hub's requests (QUOTA_ROOT, DISK_QUOTA_MAX from env);
    labhub-diskquota report: each home's usage and limit (`make disk-usage`)."""
    from .settings import parse_memory

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--socket", default=SOCKET)
    parser.add_argument("--usage-socket", default=USAGE_SOCKET)
    args = parser.parse_args(argv)
    if args.command == "report":
        if not os.environ.get("QUOTA_ROOT"):
            raise SystemExit("QUOTA_ROOT is empty: disk quotas are off (docs/admin-guide.md)")
        print(report(Path(os.environ["QUOTA_ROOT"])))
        return
    # A socket left from an earlier run must not make a failing start look healthy.
    Path(args.socket).unlink(missing_ok=True)
    Path(args.usage_socket).unlink(missing_ok=True)
    root = Path(os.environ.get("QUOTA_ROOT", ""))
    if not os.environ.get("QUOTA_ROOT"):
        print("diskquota: QUOTA_ROOT is empty: disk quotas are off, nothing to do", flush=True)
        signal.pause()  # idle, so that the hub's dependency on this service holds either way
    try:
        most = parse_memory(os.environ.get("DISK_QUOTA_MAX", "1024G"))
    except ValueError as error:
        raise SystemExit(f"diskquota: DISK_QUOTA_MAX: {error}") from None
    try:
        check_root(root)
    except DiskQuotaError as error:
        raise SystemExit(f"diskquota: {error}") from None

    async def serve() -> None:
        usage_server = await asyncio.start_unix_server(
            lambda _, w: _answer_usage(root, w), path=args.usage_socket
        )
        server = await asyncio.start_unix_server(
            lambda r, w: _answer(root, most, r, w), path=args.socket
        )
        # The hub and the exporter run as another uid. Each socket's volume, mounted into
        # this service and that one client alone, keeps everyone else away from it.
        os.chmod(args.socket, 0o666)
        os.chmod(args.usage_socket, 0o666)
        print(f"diskquota: homes under {root}, at most {most} bytes each", flush=True)
        async with usage_server, server:
            await asyncio.gather(usage_server.serve_forever(), server.serve_forever())

    asyncio.run(serve())


if __name__ == "__main__":
    main()
