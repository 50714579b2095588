"""`mnist-train` end to end on a subset: honest metrics, saved model and config, TensorBoard."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_workspace import data
from mnist_workspace.config import PLATEAU_MIN_LR, TrainConfig

pytestmark = pytest.mark.slow


def test_metrics_json_reports_the_run(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["params"] == 1_199_882 and metrics["epochs"] == 1
    assert metrics["n_train"] + metrics["n_validation"] == 6000 and metrics["n_test"] == 10000
    assert 0.5 < metrics["test_accuracy"] <= 1.0 and metrics["test_loss"] > 0
    assert metrics["wall_seconds"] >= metrics["train_seconds"] > 0
    assert set(metrics["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_model_and_resolved_config_are_saved(trained_run: Path) -> None:
    import keras

    model = keras.saving.load_model(trained_run / "lenet.keras")
    assert model.count_params() == 1_199_882
    config = TrainConfig.from_dict(json.loads((trained_run / "lenet.config.json").read_text()))
    assert config.subset == 6000 and config.epochs == 1


def test_tensorboard_has_scalars_graph_histograms_and_images(trained_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def plugins(folder: str) -> dict[str, str]:
        """tag -> the TensorBoard plugin (dashboard) that shows it."""
        events = EventAccumulator(str(trained_run / "logs" / folder), size_guidance={"tensors": 0})
        events.Reload()
        tags = events.Tags()["tensors"]
        return {tag: events.SummaryMetadata(tag).plugin_data.plugin_name for tag in tags}

    train_plugins = plugins("train")
    for scalar in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"):
        assert train_plugins[scalar] == "scalars"
    assert "histograms" in {train_plugins[t] for t in train_plugins if t.endswith("histogram")}
    assert train_plugins["keras"] == "graph_keras_model"  # the conceptual graph
    assert plugins("graph") == {"forward_pass": "graph_run_metadata_graph"}  # the op graph
    test_plugins = plugins("test")
    assert test_plugins == {"worst_test_errors": "images", "confusion_matrix": "images"}


def test_missing_data_exits_2_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mnist_workspace.train", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "mnist-train: error:" in done.stderr and "none" in done.stderr


def quick_plateau_config(mnist_dir: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    """Two epochs of the small model on 1,000 images, halving on plateau."""
    values = {
        "model": "fast",
        "schedule": "plateau",
        "epochs": 2,
        "subset": 1000,
        "data_dir": str(mnist_dir),
        "model_path": str(tmp_path / "fast.keras"),
        "verbose": 0,
    }
    return TrainConfig.from_dict({**values, **changes})


def test_plateau_schedule_halves_the_rate_once_validation_stops_improving(
    mnist: data.Mnist, mnist_dir: Path, tmp_path: Path
) -> None:
    """With one label everywhere, validation accuracy reaches 1.0 and can only stay flat, so
    the rate must halve after each `plateau_patience` flat epochs. The expected rates are
    recomputed here from the recorded validation accuracy, not taken from the callback."""
    import numpy as np

    from mnist_workspace import train

    one_digit = dataclasses.replace(
        mnist, y_train=np.zeros_like(mnist.y_train), y_test=np.zeros_like(mnist.y_test)
    )
    config = quick_plateau_config(
        mnist_dir, tmp_path, optimizer="rmsprop", augment=True, epochs=4, plateau_patience=1
    )
    history = train.run(config, mnist=one_digit).metrics["history"]

    expected, best, flat = [config.learning_rate], -np.inf, 0
    for accuracy in history["val_accuracy"][:-1]:  # each epoch's end sets the next one's rate
        rate = expected[-1]
        if accuracy > best + 1e-4:  # ReduceLROnPlateau's default min_delta
            best, flat = accuracy, 0
        else:
            flat += 1
            if flat >= config.plateau_patience:
                rate, flat = max(rate / 2, PLATEAU_MIN_LR), 0
        expected.append(rate)
    assert history["val_accuracy"][-1] == 1.0
    assert expected[-1] < config.learning_rate, history  # the plateau was reached in time
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)


def test_ema_saves_the_moving_average_of_the_training_steps(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """With --ema the evaluated and saved weights are the average of every step's weights
    (recomputed here from the trajectory), not the last step's."""
    import keras
    import numpy as np

    from mnist_workspace import train
    from mnist_workspace.config import EMA_MOMENTUM

    class Trajectory(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            steps.append([w.numpy().copy() for w in self.model.trainable_weights])

    steps: list[list[np.ndarray]] = []
    config = quick_plateau_config(mnist_dir, tmp_path, ema=True)
    result = train.run(config, callbacks=[Trajectory()])
    average = steps[0]
    for weights in steps[1:]:
        average = [
            EMA_MOMENTUM * a + (1 - EMA_MOMENTUM) * w for a, w in zip(average, weights, strict=True)
        ]
    saved = keras.saving.load_model(config.model_path).trainable_weights
    for expected, last, kept in zip(average, steps[-1], saved, strict=True):
        np.testing.assert_allclose(kept.numpy(), expected, rtol=1e-4, atol=1e-6)
        assert not np.allclose(kept.numpy(), last)
    assert result.metrics["config"]["ema"] is True
