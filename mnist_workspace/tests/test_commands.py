"""`mnist-train` and `mnist-predict` choose the Keras backend installed (TensorFlow, PyTorch);
without one, a message naming the extras to install, not the issue's "No module named
'tensorflow'" traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mnist_workspace import commands
from mnist_workspace.commands import BACKEND_EXTRAS, BackendMissing, require_backend

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1]


def without_tensorflow(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python where `import tensorflow` and `import torch` fail as if
    not installed (a None in sys.modules is Python's own "no such module"), with this
    checkout's package."""
    blocked = "import sys; sys.modules['tensorflow'] = sys.modules['torch'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocked + code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PACKAGE / "src")},
    )


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_command_without_a_backend_names_the_extras(command: str) -> None:
    done = without_tensorflow(
        f"from mnist_workspace.commands import {command}; sys.exit({command}(['--help']))"
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert (
        f"mnist-{command}: error: mnist-{command} needs a Keras backend, TensorFlow or "
        "PyTorch, and neither is installed"
    ) in done.stderr
    assert "pip install 'mnist-workspace[tensorflow]'" in done.stderr
    assert "pip install 'mnist-workspace[torch]'" in done.stderr


@pytest.mark.parametrize(
    ("installed", "variable", "chosen"),
    [
        ({"tensorflow", "torch"}, "", "tensorflow"),
        ({"torch"}, "", "torch"),
        ({"tensorflow", "torch"}, "torch", "torch"),
    ],
    ids=["both-tensorflow-first", "torch-alone", "keras-backend-decides"],
)
def test_the_backend_is_the_one_installed_unless_keras_backend_says(
    monkeypatch: pytest.MonkeyPatch, installed: set[str], variable: str, chosen: str
) -> None:
    monkeypatch.setattr(commands, "_installed", lambda module: module in installed)
    monkeypatch.setenv("KERAS_BACKEND", variable)
    assert require_backend("mnist-train") == chosen
    assert os.environ["KERAS_BACKEND"] == chosen  # what Keras, imported next, reads


def test_a_keras_backend_that_is_not_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "_installed", lambda module: module == "torch")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(BackendMissing, match="KERAS_BACKEND=tensorflow names a Keras backend"):
        require_backend("mnist-train")


def test_the_old_entry_point_ended_in_the_traceback() -> None:
    """The control: importing the training module directly is what the issue saw."""
    done = without_tensorflow("import mnist_workspace.train")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ModuleNotFoundError: No module named 'tensorflow" in done.stderr


def test_another_backend_that_is_missing_is_named_too() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from mnist_workspace.commands import train; train(['--help'])"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PACKAGE / "src"), "KERAS_BACKEND": "nosuchbackend"},
    )
    assert "Traceback" not in done.stderr
    assert "KERAS_BACKEND=nosuchbackend names a Keras backend that is not installed" in done.stderr
    assert "pip install 'mnist-workspace[tensorflow]'" in done.stderr


def test_with_tensorflow_the_command_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from mnist_workspace.commands import train; train(['--help'])"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PACKAGE / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert "usage: mnist-train" in done.stdout


def test_the_message_names_exactly_the_extras_that_install_a_backend() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    backends = set(project["optional-dependencies"]) - {"test"}
    assert backends == set(BACKEND_EXTRAS)
    assert project["scripts"]["mnist-train"] == "mnist_workspace.commands:train"
    assert project["scripts"]["mnist-predict"] == "mnist_workspace.commands:predict"
