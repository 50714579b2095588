"""`labhub`: small commands the Makefile runs inside the hub image.

labhub check-settings    validate the settings in the environment (.env), before
                         `make up` starts anything; exit 2 with every problem listed
labhub z2jh-values       print the same lab as Zero to JupyterHub values (YAML)
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from .contract import volume_name_for
from .gpu.inventory import Device
from .settings import NetworkSettings, Settings, SettingsError

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


def z2jh_values() -> int:
    """Print the Zero to JupyterHub values for the settings in the environment."""
    from .auth import authenticator_config
    from .gpu.inventory import InventoryError, detect_inventory, load_inventory
    from .gpu.profiles import ProfileError, default_profiles, load_profiles
    from .z2jh import to_yaml, values

    try:
        settings = Settings.from_env(os.environ)
        network = NetworkSettings.from_env(os.environ)
        _, traits = authenticator_config(settings)
        if settings.gpu_inventory == "none":
            inventory: tuple[Device, ...] = ()
        elif settings.gpu_inventory == "auto":
            inventory = detect_inventory()
        else:
            inventory = load_inventory(settings.gpu_inventory)
        profiles = (
            load_profiles(settings.gpu_profiles)
            if settings.gpu_profiles
            else default_profiles(inventory)
        )
    except (SettingsError, InventoryError, ProfileError) as error:
        print(error, file=sys.stderr)
        return 2
    print("# Zero to JupyterHub values made by `labhub z2jh-values`: docs/scale-out.md")
    print(to_yaml(values(settings, network, profiles, inventory, traits)))
    return 0


def user_volumes(db: str, network: str) -> int:
    """Print `name TAB volume TAB shared-era volume` for every user in the hub database."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM users ORDER BY name")]
    for name in names:
        volume = volume_name_for(name, network)
        print(f"{name}\t{volume}\t{volume_name_for(name, SHARED_VOLUME_NETWORK)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labhub", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-settings", help="validate the settings in the environment")
    commands.add_parser("z2jh-values", help="print the lab as Zero to JupyterHub values")
    volumes = commands.add_parser("user-volumes", help="every user's volume name, tab-separated")
    volumes.add_argument("db", help="the hub's SQLite database (read-only)")
    volumes.add_argument("network", help="the stack's DOCKER_NETWORK")
    args = parser.parse_args(argv)
    if args.command == "check-settings":
        return check_settings()
    if args.command == "z2jh-values":
        return z2jh_values()
    if args.command == "user-volumes":
        return user_volumes(args.db, args.network)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
