"""The PyTorch path: `mnist-train` on the torch backend trains the seed notebook's LeNet with
the same data loader and the same CLI, and logs to TensorBoard. Runs where torch is
installed (`pip install 'mnist-workspace[torch]'`, the PyTorch workspace image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mnist-train` with KERAS_BACKEND unset and TensorFlow hidden: the backend installed
    is torch; a few steps of LeNet on the CPU."""
    out = tmp_path_factory.mktemp("torch-run")
    argv = ["--model", "lenet", "--epochs", "1", "--subset", "3000", "--data-dir", str(mnist_dir)]
    argv += ["--logdir", str(out / "logs"), "--json", str(out / "metrics.json")]
    argv += ["--model-path", str(out / "lenet.keras"), "--verbose", "2"]
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        f"from mnist_workspace.commands import train; sys.exit(train({argv!r}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "PYTHONPATH": str(PACKAGE / "src"), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout
    return out


def test_lenet_trains_on_torch(torch_run: Path) -> None:
    metrics = json.loads((torch_run / "metrics.json").read_text())
    assert metrics["backend"] == "torch"
    assert metrics["params"] == 1_199_882  # the seed notebook's LeNet, as on TensorFlow
    assert metrics["n_train"] == 2700 and metrics["epochs"] == 1
    assert metrics["test_accuracy"] > 0.7  # one epoch on 2,700 images: far past chance (0.1)


def test_the_torch_model_loads_back(torch_run: Path) -> None:
    code = (
        "import keras, numpy\n"
        f"model = keras.saving.load_model({str(torch_run / 'lenet.keras')!r})\n"
        "print(model.predict(numpy.zeros((1, 28, 28, 1), 'float32'), verbose=0).shape)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(PACKAGE / "src")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("(1, 10)")


def test_tensorboard_has_the_epoch_scalars_and_test_images(torch_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def tags(run: str) -> dict[str, list[str]]:
        events = EventAccumulator(str(torch_run / "logs" / run))
        events.Reload()
        return events.Tags()

    for run in ("train", "validation"):
        assert {"epoch_loss", "epoch_accuracy"} <= set(tags(run)["scalars"])
    assert set(tags("test")["images"]) == {"worst_test_errors", "confusion_matrix"}
