"""`labhub`: small commands the Makefile runs inside the hub image.

labhub check-settings    validate the settings in the environment (.env), before
                         `make up` starts anything; exit 2 with every problem listed
"""

from __future__ import annotations

import argparse
import os
import sys

from .settings import Settings, SettingsError


def check_settings() -> int:
    """Print every problem with the settings (exit 2), or a one-line OK (exit 0)."""
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"settings OK: AUTH={settings.auth}, {settings.public_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labhub", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-settings", help="validate the settings in the environment")
    args = parser.parse_args(argv)
    if args.command == "check-settings":
        return check_settings()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
