"""Shared fixtures: the MNIST IDX folder (fetched once into <repo>/.cache/mnist) and its data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_workspace import data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """`$MNIST_TEST_DATA_DIR`, else the IDX files `data.fetch` puts (once) in .cache/mnist."""
    configured = os.environ.get("MNIST_TEST_DATA_DIR")
    if configured:
        return Path(configured)
    target = REPO / ".cache" / "mnist"
    data.fetch(target)
    return target


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path) -> data.Mnist:
    return data.load_idx_dir(mnist_dir)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No platform variables, and a private HOME/KERAS_HOME/XDG cache under tmp_path."""
    for name in ("MNIST_DATA_DIR", "GPU_MEMORY_LIMIT_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="session")
def trained_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `mnist-train` run (the issue's "done when" command, on a subset); returns its folder."""
    from mnist_workspace import train

    out = tmp_path_factory.mktemp("run")
    argv = ["--model", "lenet", "--epochs", "1", "--subset", "6000", "--data-dir", str(mnist_dir)]
    argv += ["--logdir", str(out / "logs"), "--json", str(out / "metrics.json")]
    argv += ["--model-path", str(out / "lenet.keras"), "--verbose", "2"]
    assert train.main(argv) == 0
    return out
