"""The base image small test containers run, present on the engine whatever the machine."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The Dockerfiles' base image.
BASE_IMAGE = "debian:trixie-slim"


@functools.cache
def ensure_base_image() -> str:
    """BASE_IMAGE, pulled or (no registry) built with debootstrap when the engine lacks it.

    Integration tests that run before any stack is built need it on a fresh machine.
    """
    subprocess.run(
        ["bash", "scripts/build-base-image.sh", BASE_IMAGE], cwd=REPO, check=True, timeout=1800
    )
    return BASE_IMAGE
