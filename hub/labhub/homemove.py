"""Move a user's home to another Swarm node: `labhub move-home <user> <node>`.

In Swarm mode a user's home is a volume on one node and their server runs there (the node
is in the spawner's state in the hub's database, `labhub.swarmspawner.HOME_NODE_STATE`).
Moving it, with the server stopped: copy the volume from the old node to the new one as
a tar stream through each node's Docker proxy (`PROXY_POLICY=node`; a never-started copy
helper container is the handle on the volume), read the copy back and compare it member
by member with what was sent (type, mode, owner, size, link, SHA-256), and only then
switch the home node in the hub's database; last, remove the old volume (or keep it,
`--keep-old`). A failure before the switch removes the new copy and leaves the old home
the one in use.

`plan_move` is the pure part (what the database and the command line allow); `move_home`
does the I/O. The same pieces serve backups on the home node: `archive_home` reads a home
there (make backup) and `restore_home` replaces it with an archive and reads it back
(make restore); `restore_onto` writes it on a node the admin chose instead and switches
the home node there, as a move does (make restore NODE=, when the home node is gone).

With disk quotas (QUOTA_ROOT) a home is a subvolume with the user's limit on its node
(labhub.diskquota): a new copy is made there by that node's diskquota service, through
its proxy, before the volume bound onto it is written, and an old copy's subvolume is
deleted once its volume is gone, as the volume itself would be (`HomeQuota`).
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import docker
from docker.errors import APIError, DockerException, NotFound

from .contract import HOME_DIR, quota_home_options, volume_name_for
from .diskquota import (
    DiskQuotaError,
    request_home_through,
    request_removal_through,
    usage_through,
)
from .hometar import (
    PARENT,
    BadHomeArchive,
    ChunkReader,
    Manifest,
    copy_helper,
    copy_helper_prefix,
    manifest_of,
    rewrite,
)
from .swarmplacement import RETIRING_LABEL, SwarmNode, nodes_from_api
from .swarmspawner import HOME_NODE_STATE
from .swarmtasks import NODE_PROXY_PORT

# Docker API version of the nodes' engines (Engine 20.10); fixed, so no version probe.
API_VERSION = "1.41"
# How long a volume may stay in use by the stopped server's task container (move, restore).
OLD_VOLUME_WAIT = 60.0
# A progress line every this many bytes copied.
PROGRESS_EVERY = 256 * 1024 * 1024


class MoveRefused(Exception):
    """The move cannot start; the message says why and what to do."""


class MoveFailed(Exception):
    """The move stopped before the switch: the old home is still the one in use."""


@dataclass(frozen=True)
class HomeQuota:
    """Disk quotas on: the nodes' QUOTA_ROOT and the user's limit in bytes
    (DiskQuotas.limit_for, as their next spawn sets it)."""

    root: str
    limit: int


@dataclass(frozen=True)
class HomeRow:
    """The user's default server in the hub's database: its row, whether it or any other
    server of the user (named servers share the home) runs, its state."""

    spawner_id: int
    running: bool
    state: dict[str, Any]


@dataclass(frozen=True)
class MovePlan:
    user: str
    volume: str
    spawner_id: int
    state: dict[str, Any]
    source: str
    target: str
    source_proxy: str
    target_proxy: str


def plan_move(
    user: str, target: str, row: HomeRow | None, proxies: Mapping[str, str], network: str,
    nodes: Sequence[SwarmNode],
) -> MovePlan:  # fmt: skip
    """What to move from where, or MoveRefused naming the reason and the fix. `nodes`: the
    swarm's, so that no home moves onto a node being emptied."""
    if row is None:
        raise MoveRefused(f"{user!r} has no server in the hub's database: nothing to move")
    if row.running:
        raise servers_running(user, "move")
    source = row.state.get(HOME_NODE_STATE)
    if not source:
        raise MoveRefused(
            f"{user!r} has no home node yet (never started on the swarm): the first start "
            "places it, nothing to move"
        )
    if source == target:
        raise MoveRefused(f"{user}'s home is already on node {target}")
    if any(node.id == target and node.retiring for node in nodes):
        raise node_retiring(target)
    for node in (source, target):
        if node not in proxies:
            raise no_proxy_answers(node)
    return MovePlan(
        user, volume_name_for(user, network), row.spawner_id, row.state, source, target,
        proxies[source], proxies[target],
    )  # fmt: skip


def servers_running(user: str, then: str) -> MoveRefused:
    """The refusal while any server of `user` runs, then what to do once they are stopped."""
    return MoveRefused(
        f"{user}'s server is running (or starting), or a named server of theirs: stop "
        f"them first (admin page, or DELETE /hub/api/users/{user}/server), then {then}"
    )


def node_retiring(node: str) -> MoveRefused:
    """The refusal for a home sent onto a node the admin is emptying (RETIRING_LABEL)."""
    return MoveRefused(
        f"node {node} is retiring (label {RETIRING_LABEL}=true) and takes no new home: "
        f"choose another node, or `docker node update --label-rm {RETIRING_LABEL} {node}` "
        "if it stays"
    )


def no_proxy_answers(node: str, where: str = "", fix: str = "") -> MoveRefused:
    """The refusal for a node whose Docker proxy is not found (`where`: whose home is there)."""
    return MoveRefused(
        f"no Docker proxy answers for node {node}{where}: is the node up (docker node ls), "
        "and its node proxy's task running there (docker service ps "
        f"<DOCKER_NETWORK>-node-proxy)? `make up` deploys them{fix}"
    )


def check_restore_node(
    user: str, node: str, row: HomeRow | None, nodes: Sequence[SwarmNode],
    proxies: Mapping[str, str], holding: Collection[str], volume: str,
) -> bool:  # fmt: skip
    """Whether `user`'s home may be restored onto `node`, the admin's choice (`make restore
    NODE=`, a node ID as `make move-home` takes it): True when the home node is then
    switched there, False when it is the home node already; else MoveRefused naming why
    and the fix. Nothing may be lost or hidden: `node` is ready and active and its proxy
    answers, the user's servers are stopped, and no node whose proxy answered holds their
    volume (`holding`), but the home node itself; a ready node that cannot be asked is
    refused, but the recorded home node (drained nodes run no proxy)."""
    if row is None:
        raise MoveRefused(
            f"{user!r} has no server in the hub's database, so no home node to record: "
            "they log in once, then restore"
        )
    if row.running:
        raise servers_running(user, "restore")
    found = next((each for each in nodes if each.id == node), None)
    if found is None:
        raise MoveRefused(
            f"there is no node {node} in the swarm: NODE= takes a node ID from "
            "`docker node ls` on the manager"
        )
    if not found.ready:
        raise MoveRefused(f"node {node} is down (docker node ls): choose a ready node")
    if not found.active:
        raise MoveRefused(
            f"node {node} is drained or paused: `docker node update --availability active "
            f"{node}` first, or choose another node"
        )
    if node not in proxies:
        raise no_proxy_answers(node)
    recorded = row.state.get(HOME_NODE_STATE) or ""
    if found.retiring and recorded != node:
        raise node_retiring(node)
    if recorded == node:
        return False
    if elsewhere := sorted(set(holding) - {node}):
        raise MoveRefused(
            f"{user}'s home volume {volume} is on node {', '.join(elsewhere)}: restore it "
            f"there (without NODE=) and move it (make move-home), or check it and remove it "
            f"there (docker volume rm {volume}), then restore with NODE="
        )
    if node in holding:
        raise MoveRefused(
            f"node {node} already has a volume {volume} (an earlier copy?), while {user}'s "
            f"home is recorded on {f'node {recorded}' if recorded else 'no node'}: check it "
            f"and remove it there (docker volume rm {volume}), then restore with NODE="
        )
    silent = sorted(
        each.id for each in nodes if each.ready and each.id not in proxies and each.id != recorded
    )
    if silent:
        raise MoveRefused(
            f"cannot tell whether node {', '.join(silent)} holds {user}'s home volume: its "
            "Docker proxy does not answer (a drained node runs none; docker service ps "
            "<DOCKER_NETWORK>-node-proxy on the manager; make up starts them)"
        )
    return True


# --- The hub's database ------------------------------------------------------------------
def read_home(db_path: Path, user: str) -> HomeRow | None:
    """The user's default server's row (JupyterHub's `spawners` table); running if any of
    the user's servers runs."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        found = db.execute(
            "SELECT spawners.id, spawners.state, "
            f"EXISTS ({_ANY_SERVER_OF_THE_USER}) FROM spawners "
            "JOIN users ON users.id = spawners.user_id WHERE users.name = ? AND spawners.name = ''",
            (user,),
        ).fetchone()
    if found is None:
        return None
    return HomeRow(found[0], bool(found[2]), json.loads(found[1] or "{}"))


# A server of the `spawners` row's user that runs (or starts): its default or a named one.
_ANY_SERVER_OF_THE_USER = (
    "SELECT 1 FROM spawners AS other WHERE other.user_id = spawners.user_id "
    "AND other.server_id IS NOT NULL"
)


def user_groups(db_path: Path, user: str) -> list[str]:
    """The user's JupyterHub groups (a disk quota may be a group's: DiskQuotas.limit_for)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT groups.name FROM groups "
            "JOIN user_group_map ON user_group_map.group_id = groups.id "
            "JOIN users ON users.id = user_group_map.user_id WHERE users.name = ?",
            (user,),
        ).fetchall()
    return sorted(row[0] for row in rows)


def switch_home(db_path: Path, user: str, row: HomeRow, node: str) -> None:
    """Record `node` as the user's home node in their default server's row, only if all
    their servers are still stopped; MoveFailed otherwise."""
    state = {**row.state, HOME_NODE_STATE: node}
    with sqlite3.connect(db_path) as db:
        changed = db.execute(
            "UPDATE spawners SET state = ? WHERE id = ? "
            f"AND NOT EXISTS ({_ANY_SERVER_OF_THE_USER})",
            (json.dumps(state), row.spawner_id),
        ).rowcount
    if changed != 1:
        raise MoveFailed(
            f"{user}'s server (or a named server of theirs) was started during the copy: "
            "not switched"
        )


# --- The nodes, through their proxies ---------------------------------------------------------
def find_node_proxies(service: str, port: int = NODE_PROXY_PORT) -> dict[str, str]:
    """Each node's proxy as a Docker URL, by the node ID its engine gives
    (labhub.nodereads: every task of the node proxies' global service, asked at once). A
    task that does not answer is left out: its node is then refused by name (plan_move).
    Blocking; not for a thread with a running event loop."""
    from .nodereads import NodeProxies  # it imports this module

    try:
        found = asyncio.run(NodeProxies(service, port).addresses_by_node())
    except socket.gaierror as error:
        raise MoveRefused(
            f"no node proxy found at tasks.{service} ({error}): `make up` deploys them "
            "(docker service ps " + service + " on the manager)"
        ) from error
    return {node: f"tcp://{address}:{port}" for node, address in found.items()}


def volume_holders(service: str, volume: str) -> tuple[frozenset[str], frozenset[str]]:
    """The nodes whose proxies answered, and those of them that hold `volume` (for a first
    spawn: labhub.swarmplacement.existing_home)."""
    proxies = find_node_proxies(service)
    return frozenset(proxies), holders(proxies, volume)


def node_api(url: str, timeout: float) -> docker.APIClient:
    """One node's engine through its Docker proxy at `url` (no version probe)."""
    return docker.APIClient(base_url=url, version=API_VERSION, timeout=timeout)


def holders(proxies: Mapping[str, str], volume: str) -> frozenset[str]:
    """The nodes, of those `proxies` front, that hold `volume`."""
    return frozenset(
        node for node, url in proxies.items() if _has_volume(node_api(url, timeout=10), volume)
    )


def swarm_nodes() -> list[SwarmNode]:
    """The swarm's nodes, from the manager through the hub's Docker proxy (DOCKER_HOST,
    PROXY_POLICY=swarm allows the node list)."""
    try:
        return nodes_from_api(docker.from_env(version=API_VERSION, timeout=30).api.nodes())
    except (DockerException, OSError) as error:
        raise MoveRefused(
            f"cannot list the swarm's nodes through the hub's Docker proxy: {error}"
        ) from error


def prepare_quota_home(service: str, node: str, volume: str, limit: int, root: str) -> None:
    """With disk quotas (QUOTA_ROOT): the home's subvolume made on `node` with `limit`
    bytes by that node's diskquota service, asked through its Docker proxy; DiskQuotaError
    for a plain volume of that name already there (made before QUOTA_ROOT), which the
    node would mount with no limit."""
    proxy = find_node_proxies(service).get(node)
    if proxy is None:
        raise DiskQuotaError(
            f"no Docker proxy answers for node {node}, where the home's quota is set: is "
            f"its task running (docker service ps {service})? `make up` deploys them"
        )
    api = node_api(proxy, timeout=10)
    try:
        options = api.inspect_volume(volume).get("Options") or {}
    except NotFound:
        options = None
    except (DockerException, OSError) as error:
        raise DiskQuotaError(f"node {node}'s Docker proxy at {proxy}: {error}") from None
    if options is not None and options != quota_home_options(root, volume):
        raise DiskQuotaError(
            f"volume {volume} on node {node} predates QUOTA_ROOT and has no quota: move "
            "its files into a quota home (docs/admin-guide.md#disk-quotas)"
        )
    request_home_through(proxy, volume, limit)


def _has_volume(api: docker.APIClient, volume: str) -> bool:
    try:
        api.inspect_volume(volume)
    except NotFound:
        return False
    return True


class NodeEngine:
    """One node's engine through its Docker proxy: users' volumes and copy helpers."""

    def __init__(
        self, node: str, url: str, network: str, image: str, quota: HomeQuota | None = None
    ) -> None:
        self.node, self.url, self.network, self.image, self.quota = node, url, network, image, quota
        self.api = node_api(url, timeout=300)

    def check_identity(self) -> None:
        """The proxy given for this node is in front of that node's engine."""
        found = (self.api.info().get("Swarm") or {}).get("NodeID")
        if found != self.node:
            raise MoveRefused(
                f"the proxy given for node {self.node} is in front of node {found or 'none'}: "
                "check the --proxy addresses"
            )

    def has_volume(self, volume: str) -> bool:
        return _has_volume(self.api, volume)

    def make_home(self, volume: str) -> None:
        """A new, empty home volume here; with disk quotas, its subvolume with the user's
        limit first, then the volume bound onto it (as the spawner makes it)."""
        if self.quota is None:
            self.api.create_volume(volume, driver="local")
            return
        request_home_through(self.url, volume, self.quota.limit)
        options = quota_home_options(self.quota.root, volume)
        self.api.create_volume(volume, driver="local", driver_opts=options)

    def remove_home_folder(self, volume: str) -> bool:
        """With disk quotas: delete the subvolume of `volume`, whose volume is gone from
        this node (its proxy refuses otherwise); whether there was one."""
        return self.quota is not None and request_removal_through(self.url, volume)

    def check_no_home_folder(self, volume: str, fix: str) -> None:
        """With disk quotas: MoveRefused if this node already has a subvolume for `volume`
        (an earlier copy, or a volume removed by hand), which a new copy would mix with."""
        if self.quota is not None and volume in usage_through(self.url):
            raise MoveRefused(
                f"node {self.node} already has a home folder {self.home_folder(volume)} "
                f"(an earlier copy?): check it, then delete it there (btrfs subvolume "
                f"delete {self.home_folder(volume)}){fix}"
            )

    def home_folder(self, volume: str) -> str:
        """Where `volume`'s home is on this node, for the admin to see; disk quotas only
        (without them a home is the volume alone)."""
        assert self.quota is not None, "a home folder exists only with disk quotas"
        return f"{self.quota.root}/{volume}"

    @contextmanager
    def helper(self, user: str) -> Iterator[str]:
        """A never-started container on `user`'s volume, removed afterwards."""
        name = copy_helper_prefix(self.network) + secrets.token_hex(8)
        self.api.create_container_from_config(copy_helper(self.network, user, self.image), name)
        try:
            yield name
        finally:
            self.api.remove_container(name, force=True)

    def archive(self, helper: str) -> ChunkReader:
        stream, _ = self.api.get_archive(helper, HOME_DIR)
        return ChunkReader(stream)


def move_home(
    plan: MovePlan,
    source: NodeEngine,
    target: NodeEngine,
    db_path: Path,
    keep_old: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """Copy, check, switch, then remove (or keep) the old volume; MoveRefused or MoveFailed
    before the switch leave the old home the one in use."""
    try:
        for engine in (source, target):
            engine.check_identity()
        found = (source.has_volume(plan.volume), target.has_volume(plan.volume))
        if not found[1]:
            target.check_no_home_folder(plan.volume, ", then move")
    except (APIError, OSError, DiskQuotaError) as error:
        raise MoveRefused(f"cannot ask the nodes' proxies: {error}") from error
    if not found[0]:
        raise MoveRefused(f"node {plan.source} has no volume {plan.volume}: nothing to move")
    if found[1]:
        raise MoveRefused(
            f"node {plan.target} already has a volume {plan.volume} (an earlier copy?): "
            f"remove it there (docker volume rm {plan.volume}) after checking it, then move"
        )
    try:
        target.make_home(plan.volume)
        sent = _copy(plan, source, target, say)
        with target.helper(plan.user) as helper:
            copied = manifest_of(target.archive(helper))
        if differences := sent.differences(copied):
            raise MoveFailed(
                f"the copy on node {plan.target} differs from the home on node {plan.source}: "
                + "; ".join(differences)
            )
        say(f"checked: {len(copied.entries)} entries, manifest sha256 {copied.digest()} on both")
        switch_home(db_path, plan.user, HomeRow(plan.spawner_id, False, plan.state), plan.target)
    except (MoveFailed, BadHomeArchive, APIError, OSError, DiskQuotaError) as error:
        with suppress(NotFound):
            target.api.remove_volume(plan.volume, force=True)
        with suppress(APIError, OSError, DiskQuotaError):
            target.remove_home_folder(plan.volume)
        raise MoveFailed(
            f"{error}. Nothing switched: {plan.user}'s home is still {plan.volume} on node "
            f"{plan.source}; the copy on node {plan.target} was removed"
        ) from error
    say(f"switched: {plan.user}'s home is now on node {plan.target}")
    if keep_old:
        say(f"kept the old volume {plan.volume} on node {plan.source} (--keep-old)")
        return
    _remove_old_volume(plan, source, say)


def archive_home(
    user: str, db_path: Path, proxies: Mapping[str, str], network: str, image: str, out: BinaryIO
) -> int:
    """Write `user`'s home as a tar (members under `jovyan/`, as the engine archives it) from
    their home node, through its proxy, to `out`; the bytes written. A running server keeps
    running (a file written meanwhile may be caught half-way). MoveRefused when there is
    no home to read, naming why."""
    node = home_node(user, read_home(db_path, user), proxies)
    engine = NodeEngine(node, proxies[node], network, image)
    engine.check_identity()
    volume = volume_name_for(user, network)
    if not engine.has_volume(volume):
        raise MoveRefused(f"node {node} has no volume {volume}")
    written = 0
    with engine.helper(user) as helper:
        archive = engine.archive(helper)
        while chunk := archive.read(1 << 20):
            written += out.write(chunk)
    return written


def home_node(user: str, row: HomeRow | None, proxies: Mapping[str, str], fix: str = "") -> str:
    """The node `user`'s home is on (the hub's database says), whose proxy answers; else
    MoveRefused naming why, then `fix`."""
    node = (row.state if row else {}).get(HOME_NODE_STATE)
    if not node:
        raise MoveRefused(f"{user!r} has no home node yet (never started on the swarm){fix}")
    if node not in proxies:
        raise no_proxy_answers(node, f", where {user}'s home is", fix)
    return str(node)


def restore_home(
    user: str, engine: NodeEngine, source: IO[bytes] | io.RawIOBase, check_only: bool = False,
    say: Callable[[str], None] = print,
) -> Manifest:  # fmt: skip
    """Make `user`'s volume on `engine`'s node hold exactly the home archive read from
    `source` (members under `jovyan/`, as `archive_home` writes them, or `./` as a one-host
    backup has them: `labhub.hometar.under_top`), owned 1000:100, and
    check it by reading it back; what was written. `check_only`: read the whole archive
    and check every member, changing nothing. MoveRefused before any change (the volume
    in use, a bad member when checking); MoveFailed once the volume was replaced: the
    caller puts the old home back (`archive_home` saved it first)."""
    volume = volume_name_for(user, engine.network)
    try:
        engine.check_identity()
        if check_only:
            wanted = manifest_of(source, one_host=True)
            say(f"{user}: {len(wanted.entries)} entries to restore on node {engine.node}")
            return wanted
    except BadHomeArchive as error:
        raise MoveRefused(f"{user}'s archive: {error}") from error
    except (APIError, OSError) as error:
        raise MoveRefused(f"cannot ask node {engine.node}'s proxy: {error}") from error
    try:
        if engine.has_volume(volume):
            remove_when_free(engine.api, volume)
    except APIError as error:
        raise MoveRefused(
            f"the volume {volume} on node {engine.node} could not be replaced "
            f"({error.explanation}): is a server of {user}'s still running there?"
        ) from error
    wanted = Manifest()
    try:
        engine.remove_home_folder(volume)  # with disk quotas: the old files, saved first
        engine.make_home(volume)
        with engine.helper(user) as helper:
            engine.api.put_archive(helper, PARENT, rewrite(source, wanted, one_host=True))
        with engine.helper(user) as helper:
            written = manifest_of(engine.archive(helper))
    except (BadHomeArchive, APIError, OSError, DiskQuotaError) as error:
        raise MoveFailed(f"{user}'s home on node {engine.node}: {error}") from error
    if differences := wanted.differences(written):
        raise MoveFailed(
            f"{user}'s home on node {engine.node} differs from the archive: "
            + "; ".join(differences)
        )
    say(f"{user}: {len(written.entries)} entries on node {engine.node}, checked")
    return written


def restore_onto(
    user: str, node: str, db_path: Path, proxies: Mapping[str, str],
    nodes: Sequence[SwarmNode], network: str, image: str, source: IO[bytes] | io.RawIOBase,
    check_only: bool = False, say: Callable[[str], None] = print, quota: HomeQuota | None = None,
) -> None:  # fmt: skip
    """`restore_home` onto `node`, the admin's choice (make restore NODE=), through its
    proxy, then record it as the user's home node, as a move does; refused as
    `check_restore_node` says, or (disk quotas) when the node has a home folder of the
    user's already. A failure once the volume was written there removes it and switches
    nothing (there was no volume of the user's there before)."""
    volume = volume_name_for(user, network)
    row = read_home(db_path, user)
    try:
        switch = check_restore_node(
            user, node, row, nodes, proxies, holders(proxies, volume), volume
        )
    except (APIError, OSError) as error:
        raise MoveRefused(f"cannot ask the nodes' proxies: {error}") from error
    engine = NodeEngine(node, proxies[node], network, image, quota)
    if switch:
        try:
            engine.check_no_home_folder(volume, ", then restore with NODE=")
        except (DiskQuotaError, OSError) as error:
            raise MoveRefused(f"cannot ask node {node}'s proxy: {error}") from error
    if not switch or check_only:
        restore_home(user, engine, source, check_only, say)
        if switch:
            say(f"{user}: the home node would become node {node}")
        return
    assert row is not None  # check_restore_node refuses a user without one
    recorded = row.state.get(HOME_NODE_STATE)
    try:
        restore_home(user, engine, source, say=say)
        switch_home(db_path, user, row, node)
    except MoveFailed as error:
        with suppress(APIError, OSError, DiskQuotaError):
            engine.api.remove_volume(volume, force=True)
            engine.remove_home_folder(volume)
        raise MoveFailed(
            f"{error}. Nothing switched: {user}'s home node is still "
            f"{recorded or 'none'}; the volume written on node {node} was removed"
        ) from error
    say(f"switched: {user}'s home is now on node {node}")
    if recorded:
        say(
            f"the volume {volume} on node {recorded}, {user}'s home before, is no longer "
            f"used: once that node is back, check it and remove it there (docker volume rm "
            f"{volume})"
        )


def _remove_old_volume(plan: MovePlan, source: NodeEngine, say: Callable[[str], None]) -> None:
    """Remove the old volume once the stopped server's task container is gone; say so if it
    is still in use after that."""
    try:
        remove_when_free(source.api, plan.volume)
    except APIError as error:
        then = (
            f", then `btrfs subvolume delete {source.home_folder(plan.volume)}`"
            if source.quota
            else ""
        )
        say(
            f"the move is done, but the old volume {plan.volume} on node {plan.source} "
            f"was not removed ({error.explanation}): remove it there later with "
            f"`docker volume rm {plan.volume}`{then}"
        )
        return
    say(f"removed the old volume {plan.volume} on node {plan.source}")
    try:
        if source.remove_home_folder(plan.volume):
            say(f"deleted its home folder on node {plan.source}, and its quota")
    except DiskQuotaError as error:
        say(
            f"the old home folder of {plan.volume} on node {plan.source} was not deleted "
            f"({error}): delete it there later (btrfs subvolume delete "
            f"{source.home_folder(plan.volume)})"
        )


def remove_when_free(api: docker.APIClient, volume: str) -> None:
    """Remove the volume from the node of `api`, waiting while it is in use (a stopped
    server's task container is removed by its node within seconds of the service):
    APIError after OLD_VOLUME_WAIT."""
    deadline = time.monotonic() + OLD_VOLUME_WAIT
    while True:
        try:
            api.remove_volume(volume)
        except APIError as error:
            if error.status_code != 409 or time.monotonic() > deadline:
                raise
            time.sleep(2)
        else:
            return


def _copy(
    plan: MovePlan, source: NodeEngine, target: NodeEngine, say: Callable[[str], None]
) -> Manifest:
    """Stream the home from the source node's volume into the target's; what was sent."""
    sent = Manifest()
    reported = [0]

    def progress(seen: Manifest) -> None:
        if seen.bytes - reported[0] >= PROGRESS_EVERY:
            reported[0] = seen.bytes
            say(f"copying {plan.user}'s home: {seen.bytes >> 20} MiB, {len(seen.entries)} entries")

    with source.helper(plan.user) as old, target.helper(plan.user) as new:
        target.api.put_archive(new, PARENT, rewrite(source.archive(old), sent, progress))
    say(f"copied {sent.bytes >> 20} MiB, {len(sent.entries)} entries to node {plan.target}")
    return sent
