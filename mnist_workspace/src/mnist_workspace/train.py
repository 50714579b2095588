"""`mnist-train`: train a model on MNIST, evaluate it on the test set, save model and metrics.

Setup -> Data -> Model -> Train -> Evaluate, as in the keras-io examples. The validation
split comes out of the training set; the test set is only used once, at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mnist_workspace import data, gpu, models, report
from mnist_workspace.config import (
    EMA_MOMENTUM,
    OPTIMIZERS,
    PLATEAU_MIN_LR,
    RECIPES,
    SCHEDULES,
    TrainConfig,
)
from mnist_workspace.env import EnvError, logs_dir


@dataclass
class TrainResult:
    """The trained model, the metrics written to `--json`, and the data it saw."""

    model: keras.Model
    metrics: dict[str, Any]
    splits: data.Splits
    test_probabilities: np.ndarray


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam or RMSprop, with the cosine schedule and weight averaging baked in when asked for."""
    lr: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.schedule == "cosine":
        total = steps_per_epoch * config.epochs
        warmup = max(1, total // 10)
        lr = keras.optimizers.schedules.CosineDecay(
            config.learning_rate / 10,
            decay_steps=total - warmup,
            warmup_target=config.learning_rate,
            warmup_steps=warmup,
        )
    averaging = {"use_ema": config.ema, "ema_momentum": EMA_MOMENTUM}
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, **averaging)
    return keras.optimizers.Adam(learning_rate=lr, **averaging)


class EpochScalars(keras.callbacks.Callback):
    """Each epoch's metrics as TensorBoard scalars (epoch_loss, epoch_accuracy, ...) in the
    runs train/ and validation/, as Keras's own TensorBoard callback writes them on
    TensorFlow; through PyTorch's summary writer, for the torch backend."""

    def __init__(self, logdir: Path) -> None:
        super().__init__()
        self.logdir = logdir
        self._writers: dict[str, Any] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writers = {
            run: SummaryWriter(str(self.logdir / run)) for run in ("train", "validation")
        }

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writers[run].add_scalar(f"epoch_{name}", float(value), epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()


def tensorboard_callback(logdir: str | Path) -> keras.callbacks.Callback:
    """TensorBoard logs on the backend in use: Keras's own callback on TensorFlow (scalars,
    histograms, graph), the epoch scalars on PyTorch (Keras's callback needs TensorFlow)."""
    if keras.backend.backend() == "tensorflow":
        return keras.callbacks.TensorBoard(str(logdir), histogram_freq=1, write_graph=True)
    return EpochScalars(Path(logdir))


def make_callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
    """Validation on the averaged weights under --ema, annealing as the report concluded,
    and TensorBoard when a logdir is given."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.ema:
        # validation (and so the plateau schedule) sees the averaged weights; fit() leaves
        # them in the model at the end, so the test set and the saved file see them too
        callbacks.append(keras.callbacks.SwapEMAWeights())
    if config.schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_accuracy",
                factor=0.5,
                patience=config.plateau_patience,
                min_lr=PLATEAU_MIN_LR,
            )
        )
    if config.logdir:
        callbacks.append(tensorboard_callback(config.logdir))
    return callbacks


def run(
    config: TrainConfig,
    mnist: data.Mnist | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Train and evaluate as `config` says; `mnist` skips loading, `callbacks` are added."""
    start = time.perf_counter()
    # Setup
    device = gpu.configure(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    # Data
    if mnist is None:
        if config.download:
            data.fetch(data.resolve(config.data_dir))
        mnist = data.load(config.data_dir)
    splits = data.split(mnist, config.validation_fraction, config.seed, config.subset)
    # Model
    model = models.build(config.model, augment=config.augment)
    steps = -(-len(splits.x_train) // config.batch_size)
    model.compile(
        optimizer=make_optimizer(config, steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Train
    fit_start = time.perf_counter()
    history = model.fit(
        splits.x_train,
        splits.y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(splits.x_val, splits.y_val),
        callbacks=[*make_callbacks(config), *callbacks],
        verbose=config.verbose,
    )
    train_seconds = time.perf_counter() - fit_start
    # Evaluate
    probabilities = model.predict(splits.x_test, batch_size=512, verbose=0)
    test_loss = test_accuracy = None
    if splits.y_test is not None:
        test_loss, test_accuracy = model.evaluate(
            splits.x_test, splits.y_test, batch_size=512, verbose=0
        )
        if config.logdir:
            _log_test_images(Path(config.logdir), splits, probabilities, len(history.epoch))
    if config.logdir:
        _log_op_graph(Path(config.logdir), model, splits.x_test[:1])
    model_path = Path(config.model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    config.save(config.config_path)
    metrics = {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "test_note": None if test_accuracy is not None else "test set has no labels (Kaggle)",
        "params": model.count_params(),
        "epochs": len(history.epoch),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "train_seconds": round(train_seconds, 2),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "n_train": len(splits.x_train),
        "n_validation": len(splits.x_val),
        "n_test": len(splits.x_test),
        "data_source": mnist.source,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "device": device,
        "model_path": str(model_path),
        "config": config.to_dict(),
    }
    if config.json_path:
        Path(config.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return TrainResult(model, metrics, splits, probabilities)


def _log_op_graph(logdir: Path, model: keras.Model, sample: np.ndarray) -> None:
    """Keras 3's callback writes only the conceptual graph; trace one forward pass so
    TensorBoard's Graphs tab also shows the TensorFlow op graph."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    writer = tf.summary.create_file_writer(str(logdir / "graph"))
    tf.summary.trace_on(graph=True)
    forward(tf.constant(sample))
    with writer.as_default():
        tf.summary.trace_export("forward_pass", step=0)
    writer.close()


def _log_test_images(
    logdir: Path, splits: data.Splits, probabilities: np.ndarray, step: int
) -> None:
    assert splits.y_test is not None
    worst = report.worst_errors(probabilities, splits.y_test, k=6)
    counts = report.confusion_matrix(splits.y_test, probabilities.argmax(axis=1))
    images = {
        "worst_test_errors": report.figure_to_array(
            report.plot_worst_errors(splits.x_test, splits.y_test, probabilities, worst)
        ),
        "confusion_matrix": report.figure_to_array(report.plot_confusion(counts)),
    }
    report.write_tensorboard_images(logdir, images, step)


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    """Options -> config: defaults, then the recipe, then the options given explicitly."""
    parser = argparse.ArgumentParser(prog="mnist-train", description=__doc__, allow_abbrev=False)
    add = parser.add_argument
    add("--recipe", choices=sorted(RECIPES), help="named preset; explicit options override it")
    add("--model", choices=sorted(models.MODELS), help="network (default lenet)")
    add("--optimizer", choices=OPTIMIZERS, help="default adam")
    add("--learning-rate", type=float, help="initial/peak learning rate (default 0.001)")
    add("--batch-size", type=int, help="default 128")
    add("--epochs", type=int, help="default 15")
    add("--schedule", choices=SCHEDULES, help="plateau halves the rate after flat epochs")
    add("--plateau-patience", type=int, help="flat epochs before plateau halves (default 3)")
    add("--augment", action=argparse.BooleanOptionalAction, help="rotate/zoom/shift 10%%")
    add("--ema", action=argparse.BooleanOptionalAction, help="average the weights (EMA)")
    add("--seed", type=int, help="default 0")
    add("--subset", type=int, help="train on N images only, for quick runs")
    add("--validation-fraction", type=float, help="held out of training (default 0.1)")
    add("--data-dir", help="MNIST folder or mnist.npz (default $MNIST_DATA_DIR, then Keras)")
    add("--download", action="store_true", default=None, help="fetch IDX files if missing")
    add("--model-path", help="where to save the .keras model (default mnist_model.keras)")
    add(
        "--logdir",
        help="TensorBoard log folder (default: a new folder per run under $MNIST_LOGS_DIR, "
        "which the image sets to ~/logs; 'none' = no TensorBoard logs)",
    )
    add("--json", dest="json_path", help="write metrics JSON here")
    add("--mixed-precision", action="store_true", default=None, help="GPU: float16; CPU: bfloat16")
    add("--verbose", type=int, choices=(0, 1, 2), help="1 = progress bar (default)")
    args = vars(parser.parse_args(argv))
    recipe_name = args.pop("recipe")
    recipe = RECIPES.get(recipe_name or "", {})
    explicit = {key: value for key, value in args.items() if value is not None}
    if explicit.get("logdir") == "none":
        explicit["logdir"] = None
    elif "logdir" not in explicit and (root := logs_dir()) is not None:
        run_name = recipe_name or explicit.get("model") or recipe.get("model") or "lenet"
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        explicit["logdir"] = str(root / f"mnist-train-{run_name}-{stamp}")
    try:
        return TrainConfig.from_dict({**recipe, **explicit})
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        result = run(config)
    except (data.DataError, EnvError) as exc:
        print(f"mnist-train: error: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    accuracy = "n/a" if m["test_accuracy"] is None else f"{m['test_accuracy']:.4f}"
    print(
        f"test accuracy {accuracy} after {m['epochs']} epochs on {m['n_train']} images "
        f"in {m['wall_seconds']:.1f} s; model saved to {m['model_path']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
