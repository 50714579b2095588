"""Admin command: remove the volume of a user who was deleted from the hub.

Volumes outlive containers on purpose, so deleting a user in the admin panel keeps
their files. When the files should go too:

    make remove-user-volume NAME=alice      # runs this inside the hub container

It refuses while the user still exists in the hub (delete them first) and while a
container still uses the volume, so it never removes a live user's files. In Swarm mode
the volume may be on any node (their home node, an old copy kept by a move): each node's
Docker proxy removes it there, and with disk quotas its node's diskquota service deletes
its subvolume once the volume is gone (`remove_from_nodes`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import docker
from docker.errors import APIError, NotFound

from .contract import volume_name_for
from .diskquota import SOCKET, DiskQuotaError, request_removal, request_removal_through
from .settings import Settings

if TYPE_CHECKING:
    from .swarmplacement import SwarmNode

DEFAULT_DB = "/srv/jupyterhub/jupyterhub.sqlite"


def user_exists(db_path: Path, username: str) -> bool:
    """Whether JupyterHub's database still has this user (read-only access)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT 1 FROM users WHERE name = ?", (username,)).fetchone()
    return row is not None


def remove_user_volume(
    username: str,
    network: str,
    db_path: Path,
    client: docker.DockerClient,
    quota_socket: str = "",
) -> str:
    """Remove the user's volume in the stack of `network` (DOCKER_NETWORK), and with disk
    quotas (`quota_socket`, the diskquota service's) its home subvolume; return a
    one-line report. Raises SystemExit on refusal."""
    volume = volume_name_for(username, network)
    refuse_a_user_who_exists(db_path, username)
    try:
        client.volumes.get(volume).remove()
        report = f"removed {volume} ({username!r})"
    except NotFound:
        report = f"no volume {volume} for {username!r}"
    except APIError as error:
        raise SystemExit(
            f"volume {volume} is still in use or cannot be removed: {error}"
        ) from error
    if quota_socket and asyncio.run(request_removal(volume, quota_socket)):
        return f"{report}; removed its home under QUOTA_ROOT"
    return report if report.startswith("removed") else f"{report}: nothing to remove"


def refuse_a_user_who_exists(db_path: Path, username: str) -> None:
    if db_path.exists() and user_exists(db_path, username):
        raise SystemExit(
            f"{username!r} still exists in the hub: delete the user in the admin panel "
            "(or DELETE /hub/api/users/{name}) first, then run this again"
        )


def remove_from_nodes(
    username: str, network: str, db_path: Path, proxies: Mapping[str, str],
    nodes: Sequence[SwarmNode], quotas: bool,
) -> str:  # fmt: skip
    """Swarm mode: remove the user's volume from every node whose Docker proxy answers
    (`proxies`, by node ID), and with disk quotas (`quotas`) its subvolume there; a report
    line per node that had any. SystemExit on refusal (the user exists, a volume in use),
    naming the node, and when a ready node was not reached (its copy, if any, stays)."""
    from .homemove import node_api, remove_when_free

    volume = volume_name_for(username, network)
    refuse_a_user_who_exists(db_path, username)
    done: dict[str, list[str]] = {node: [] for node in sorted(proxies)}
    # Every volume first, then the subvolumes: none is deleted while a volume is bound to it.
    for node, url in sorted(proxies.items()):
        try:
            # The last server's task container may still be going, its service gone.
            api = node_api(url, timeout=60)
            remove_when_free(api, volume)
            done[node].append(f"removed {volume}")
        except NotFound:
            pass
        except APIError as error:
            raise SystemExit(
                f"volume {volume} on node {node} is still in use or cannot be removed: {error}"
            ) from error
    for node, url in sorted(proxies.items()) if quotas else ():
        try:
            if request_removal_through(url, volume):
                done[node].append("its home under QUOTA_ROOT")
        except DiskQuotaError as error:
            raise SystemExit(f"{volume}'s home folder on node {node}: {error}") from None
    lines = [f"node {n}: {' and '.join(did)} ({username!r})" for n, did in done.items() if did]
    silent = sorted(node.id for node in nodes if node.ready and node.id not in proxies)
    if silent:
        lines.append(
            f"node {', '.join(silent)} not reached (its Docker proxy does not answer): run "
            "this again once it is back, or its copy of the home, if any, stays"
        )
    if not lines:
        return f"no volume {volume} for {username!r} on any node: nothing to remove"
    if silent:
        raise SystemExit("\n".join(lines))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("username", help="the JupyterHub username whose volume to remove")
    parser.add_argument("--db", default=DEFAULT_DB, type=Path, help="the hub's SQLite database")
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    if settings.engine == "swarm":
        from . import homemove

        if not settings.node_proxy_service:
            raise SystemExit("NODE_PROXY_SERVICE is not set: run this in the hub's container")
        try:
            proxies = homemove.find_node_proxies(settings.node_proxy_service)
            nodes = homemove.swarm_nodes()
        except homemove.MoveRefused as error:
            raise SystemExit(str(error)) from None
        quotas = bool(settings.disk_quotas.root)
        network = settings.docker_network
        print(remove_from_nodes(args.username, network, args.db, proxies, nodes, quotas))
        if settings.home_nfs:
            print(
                f"the home's files are on the NFS server ({settings.home_nfs}, HOME_NFS), "
                f"in {volume_name_for(args.username, network)}: delete that folder there"
            )
        sys.exit(0)
    quota_socket = SOCKET if settings.disk_quotas.root else ""
    print(
        remove_user_volume(
            args.username, settings.docker_network, args.db, docker.from_env(), quota_socket
        )
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
