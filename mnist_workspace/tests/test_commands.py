"""`mnist-train` and `mnist-predict` without TensorFlow: a message naming the extra to
install, not the issue's "No module named 'tensorflow'" traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mnist_workspace.commands import BACKEND_EXTRAS

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1]


def without_tensorflow(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python where `import tensorflow` fails as if not installed
    (a None in sys.modules is Python's own "no such module"), with this checkout's package."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['tensorflow'] = None\n" + code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PACKAGE / "src")},
    )


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_command_without_tensorflow_names_the_extra(command: str) -> None:
    done = without_tensorflow(
        f"from mnist_workspace.commands import {command}; sys.exit({command}(['--help']))"
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"mnist-{command}: error: mnist-{command} needs TensorFlow" in done.stderr
    assert "pip install 'mnist-workspace[tensorflow]'" in done.stderr


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
