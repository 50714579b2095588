"""`labhub`: small commands the Makefile runs inside the hub image.

labhub check-settings    validate the settings in the environment (.env), before
                         `make up` starts anything; exit 2 with every problem listed
labhub container-prefix NETWORK
                         what the name of every user container of that stack starts
                         with (`make down` and scripts/restore.sh find them by it)
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from .contract import container_name_prefix, volume_name_for
from .settings import Settings, SettingsError

# Before volumes were named per stack, every stack used the default stack's names.
SHARED_VOLUME_NETWORK = "labhub"


def check_settings() -> int:
    """Print every problem with the settings (exit 2), or a one-line OK (exit 0)."""
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"settings OK: AUTH={settings.auth}, {settings.public_url}")
    return 0


def user_volumes(db: str, network: str) -> int:
    """Print `name TAB volume TAB shared-era volume` for every user in the hub database."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM users ORDER BY name")]
    for name in names:
        volume = volume_name_for(name, network)
        print(f"{name}\t{volume}\t{volume_name_for(name, SHARED_VOLUME_NETWORK)}")
    return 0


def print_container_prefix(network: str) -> int:
    """Print the user containers' name prefix, so shell never spells it out itself."""
    print(container_name_prefix(network))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labhub", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-settings", help="validate the settings in the environment")
    volumes = commands.add_parser("user-volumes", help="every user's volume name, tab-separated")
    volumes.add_argument("db", help="the hub's SQLite database (read-only)")
    volumes.add_argument("network", help="the stack's DOCKER_NETWORK")
    prefix = commands.add_parser(
        "container-prefix", help="what every user container's name starts with"
    )
    prefix.add_argument("network", help="the stack's DOCKER_NETWORK")
    args = parser.parse_args(argv)
    if args.command == "check-settings":
        return check_settings()
    if args.command == "user-volumes":
        return user_volumes(args.db, args.network)
    if args.command == "container-prefix":
        return print_container_prefix(args.network)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
