"""The environment variables the platform sets, read in one place.

Every other module asks here, so the list of variables the workspace honours is
this file and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_VAR = "MNIST_DATA_DIR"
GPU_LIMIT_VAR = "GPU_MEMORY_LIMIT_MB"
LOGS_DIR_VAR = "MNIST_LOGS_DIR"
BACKEND_VAR = "KERAS_BACKEND"


class EnvError(ValueError):
    """An environment variable holds a value the workspace cannot use."""


def data_dir() -> Path | None:
    """`MNIST_DATA_DIR`: folder with the MNIST files (the image sets /opt/mnist)."""
    value = os.environ.get(DATA_DIR_VAR, "").strip()
    return Path(value).expanduser() if value else None


def logs_dir() -> Path | None:
    """`MNIST_LOGS_DIR`: the TensorBoard folder every run logs under by default.

    The image sets ~/logs, the folder its TensorBoard launcher tile reads, so runs from the
    notebook and from `mnist-train` in a terminal all show up there. Unset: no default.
    """
    value = os.environ.get(LOGS_DIR_VAR, "").strip()
    return Path(value).expanduser() if value else None


def keras_backend(installed: tuple[str, ...] = ()) -> str:
    """`KERAS_BACKEND` (the images set it), else the first of `installed`, else tensorflow,
    Keras's own default."""
    return os.environ.get(BACKEND_VAR, "").strip() or next(iter(installed), "tensorflow")


def use_keras_backend(backend: str) -> None:
    """Make Keras, imported after this, run on `backend`."""
    os.environ[BACKEND_VAR] = backend


def gpu_memory_limit_mb() -> int | None:
    """`GPU_MEMORY_LIMIT_MB`: per-user GPU memory cap in MiB; unset or empty means no cap."""
    value = os.environ.get(GPU_LIMIT_VAR, "").strip()
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise EnvError(f"{GPU_LIMIT_VAR}={value!r} is not a positive integer number of MiB")
    return limit


def cache_dir() -> Path:
    """Where the workspace keeps derived files: `$XDG_CACHE_HOME/mnist_workspace`."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join("~", ".cache")
    return Path(base).expanduser() / "mnist_workspace"


def keras_npz_path() -> Path:
    """Keras's own cache file for MNIST, the last place the data is looked for."""
    home = os.environ.get("KERAS_HOME", "").strip() or os.path.join("~", ".keras")
    return Path(home).expanduser() / "datasets" / "mnist.npz"
