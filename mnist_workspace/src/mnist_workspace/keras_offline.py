"""Make `keras.datasets.mnist.load_data()` work offline from the IDX files in `MNIST_DATA_DIR`.

Keras checks `~/.keras/datasets/mnist.npz` against a fixed SHA-256 and tries to download
(then deletes) a mismatching file, so a re-packed npz cannot be put there. Instead,
`register()` installs an import hook: when `keras.src.datasets.mnist` is imported, its
module-level `get_file` is wrapped. For `mnist.npz` with no valid genuine cache file, the
wrapper returns an npz built from the verified IDX files under
`$XDG_CACHE_HOME/mnist_workspace/`; in every other case it calls Keras's own `get_file`.
The genuine cache file is never written, moved or deleted.

`register()` runs at every interpreter start-up through `mnist_workspace_offline.pth`,
so it imports nothing heavy and does nothing when `MNIST_DATA_DIR` is unset.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from mnist_workspace import env

TARGET = "keras.src.datasets.mnist"


def _genuine_cache(cache_dir: str | None, cache_subdir: str, fname: str) -> Path:
    """The path Keras's `get_file` would use for `fname` (same fallback to /tmp/.keras)."""
    from keras.src.backend.config import keras_home

    base = os.path.expanduser(cache_dir or keras_home())
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(base, cache_subdir, fname)


def offline_npz(idx_dir: Path) -> Path:
    """Build (once) an npz with the arrays of the verified IDX files and return its path.

    The file name carries the IDX folder's path, so two folders never share an npz; it is
    rebuilt whenever the IDX files are newer than it.
    """
    import numpy as np

    from mnist_workspace import data

    key = hashlib.sha256(str(idx_dir.resolve()).encode()).hexdigest()[:16]
    target = env.cache_dir() / f"mnist-from-idx-{key}.npz"
    sources = [data._idx_path(idx_dir, spec) for spec in data.IDX_FILES.values()]
    newest = max(p.stat().st_mtime for p in sources)
    if target.is_file() and target.stat().st_mtime >= newest:
        return target
    mnist = data.load_idx_dir(idx_dir)
    assert mnist.y_test is not None  # IDX folders always carry test labels
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial.npz")
    np.savez(
        partial,
        x_train=mnist.x_train,
        y_train=mnist.y_train,
        x_test=mnist.x_test,
        y_test=mnist.y_test,
    )
    partial.replace(target)
    return target


def wrap_get_file(original: Callable[..., str]) -> Callable[..., str]:
    """Wrap Keras's `get_file` so `mnist.npz` falls back to the IDX files in MNIST_DATA_DIR."""

    @functools.wraps(original)
    def get_file(fname: str | None = None, *args: Any, **kwargs: Any) -> str:
        idx_dir = env.data_dir()
        if fname == "mnist.npz" and idx_dir is not None:
            genuine = _genuine_cache(
                kwargs.get("cache_dir"), kwargs.get("cache_subdir", "datasets"), fname
            )
            # Imported here, not at start-up: data needs numpy (Keras has loaded it by now).
            from mnist_workspace.data import DataError, is_genuine_keras_npz

            if not is_genuine_keras_npz(genuine):
                try:
                    return str(offline_npz(idx_dir))
                except DataError as exc:
                    warnings.warn(f"MNIST_DATA_DIR not used: {exc}", stacklevel=2)
        return original(fname, *args, **kwargs)

    get_file.mnist_workspace_offline = True  # type: ignore[attr-defined]
    return get_file


def _patch(module: ModuleType) -> None:
    current = module.get_file
    if not getattr(current, "mnist_workspace_offline", False):
        module.get_file = wrap_get_file(current)  # type: ignore[attr-defined]


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then wraps the fresh module's `get_file`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Answers only for `keras.src.datasets.mnist`; every other import passes through."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def register() -> None:
    """Activate the offline fallback if `MNIST_DATA_DIR` is set; cheap and idempotent."""
    if env.data_dir() is None:
        return
    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
