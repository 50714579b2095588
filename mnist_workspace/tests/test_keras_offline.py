"""`keras.datasets.mnist.load_data()` served from MNIST_DATA_DIR, in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_workspace import keras_offline

CHECK = """
import hashlib, json, sys
import numpy as np
import tensorflow as tf
from mnist_workspace import data
(xa, ya), (xb, yb) = tf.keras.datasets.mnist.load_data()
ref = data.load_idx_dir(data.resolve())
for got, want in [(xa, ref.x_train), (ya, ref.y_train), (xb, ref.x_test), (yb, ref.y_test)]:
    assert got.dtype == np.uint8 and got.shape == want.shape and (got == want).all()
print("identical")
"""


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.fixture
def isolated_env(tmp_path: Path, mnist_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "KERAS_HOME")}
    env.update(
        HOME=str(tmp_path / "home"),
        KERAS_HOME=str(tmp_path / "home" / ".keras"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        MNIST_DATA_DIR=str(mnist_dir),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


@pytest.mark.slow
def test_load_data_returns_the_idx_arrays_without_a_genuine_file(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    done = run_python(CHECK, isolated_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "identical"
    assert not (tmp_path / "home" / ".keras" / "datasets" / "mnist.npz").exists()
    assert list((tmp_path / "cache" / "mnist_workspace").glob("mnist-from-idx-*.npz"))


@pytest.mark.slow
def test_invalid_genuine_file_is_bypassed_and_left_untouched(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    fake = tmp_path / "home" / ".keras" / "datasets" / "mnist.npz"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not a zip")
    done = run_python(CHECK, isolated_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert fake.read_bytes() == b"not a zip"


@pytest.mark.unit
def test_pth_activates_the_hook_at_start_up(isolated_env: dict[str, str]) -> None:
    code = "import sys; print(any(type(f).__name__ == '_Finder' for f in sys.meta_path))"
    assert run_python(code, isolated_env).stdout.strip() == "True"
    del isolated_env["MNIST_DATA_DIR"]
    assert run_python(code, isolated_env).stdout.strip() == "False"


@pytest.mark.unit
def test_register_is_cheap_and_a_no_op_without_the_variable(isolated_env: dict[str, str]) -> None:
    del isolated_env["MNIST_DATA_DIR"]
    code = (
        "import sys; before = list(sys.meta_path)\n"
        "from mnist_workspace import keras_offline; keras_offline.register()\n"
        "print(sys.meta_path == before, 'keras' in sys.modules, 'numpy' in sys.modules)"
    )
    assert run_python(code, isolated_env).stdout.split() == ["True", "False", "False"]


@pytest.mark.unit
def test_wrapper_passes_other_files_through() -> None:
    calls: list[tuple[object, ...]] = []

    def original(fname: str | None = None, *args: object, **kwargs: object) -> str:
        calls.append((fname, args, tuple(kwargs.items())))
        return "from-keras"

    wrapped = keras_offline.wrap_get_file(original)
    assert wrapped("cifar.tar.gz", origin="x") == "from-keras"
    assert calls == [("cifar.tar.gz", (), (("origin", "x"),))]
