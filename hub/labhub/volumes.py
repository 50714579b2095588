"""Admin command: remove the volume of a user who was deleted from the hub.

Volumes outlive containers on purpose, so deleting a user in the admin panel keeps
their files. When the files should go too:

    make remove-user-volume NAME=alice      # runs this inside the hub container

It refuses while the user still exists in the hub (delete them first) and while a
container still uses the volume, so it never removes a live user's files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

from .contract import volume_name_for
from .diskquota import SOCKET, request_removal
from .settings import Settings

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
    if db_path.exists() and user_exists(db_path, username):
        raise SystemExit(
            f"{username!r} still exists in the hub: delete the user in the admin panel "
            "(or DELETE /hub/api/users/{name}) first, then run this again"
        )
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("username", help="the JupyterHub username whose volume to remove")
    parser.add_argument("--db", default=DEFAULT_DB, type=Path, help="the hub's SQLite database")
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    quota_socket = SOCKET if settings.disk_quotas.root else ""
    print(
        remove_user_volume(
            args.username, settings.docker_network, args.db, docker.from_env(), quota_socket
        )
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
