"""One training configuration, its defaults and the named recipes.

Defaults reproduce the seed notebook (LeNet, Adam, batch 128). A recipe is a named set of
overrides; explicit options override the recipe. Unknown keys are rejected, so a typo in
a saved config or a notebook cell fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_workspace.models import MODELS

OPTIMIZERS = ("adam", "rmsprop")
SCHEDULES = ("constant", "plateau", "cosine")
EMA_MOMENTUM = 0.999  # averages the last ~1,000 steps: about one epoch at batch 64
PLATEAU_MIN_LR = 1e-5  # the plateau schedule halves the rate down to this floor


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved beside the model as JSON."""

    # model and optimisation
    model: str = "lenet"  # one of models.MODELS
    optimizer: str = "adam"  # adam or rmsprop, the two the report compared
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 15
    # constant; plateau = halve on 3 epochs without val-accuracy gain (the report's
    # conclusion); cosine = warm-up then cosine decay to 0 (the fast recipe)
    schedule: str = "constant"
    plateau_patience: int = 3  # flat epochs before the plateau schedule halves the rate
    augment: bool = False  # rotation 10 deg, zoom 10%, shifts 10%, no flips
    # validate, evaluate and save an exponential moving average of the weights (momentum
    # EMA_MOMENTUM) instead of the last step's weights: a cheap average over many models
    ema: bool = False
    # data
    seed: int = 0
    subset: int | None = None  # train on this many images only (quick runs)
    validation_fraction: float = 0.1  # carved out of the training set, never the test set
    data_dir: str | None = None  # else $MNIST_DATA_DIR, else ~/.keras/datasets/mnist.npz
    download: bool = False  # fetch the IDX files into data_dir if they are missing
    # outputs
    model_path: str = "mnist_model.keras"  # the resolved config goes beside it
    logdir: str | None = None  # TensorBoard logs; None = no TensorBoard
    json_path: str | None = None  # metrics JSON
    # hardware
    mixed_precision: bool = False
    verbose: int = 1  # 1 = progress bar, 2 = one line per epoch, 0 = silent

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODELS, f"model must be one of {sorted(MODELS)}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {list(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {list(SCHEDULES)}"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.plateau_patience > 0, "plateau_patience must be > 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.subset is None or self.subset >= 20, "subset must be >= 20 images"),
            (0 < self.validation_fraction < 1, "validation_fraction must be in (0, 1)"),
            (self.verbose in (0, 1, 2), "verbose must be 0, 1 or 2"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ValueError("; ".join(errors))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting keys that are not fields."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def config_path(self) -> Path:
        """Where the resolved config is saved: beside the model."""
        return Path(self.model_path).with_suffix(".config.json")


RECIPES: dict[str, dict[str, Any]] = {
    # the seed notebook, as the report ran it (no annealing, no augmentation)
    "seed": {"model": "lenet", "optimizer": "adam", "batch_size": 128, "epochs": 15},
    # the quickest way to 99.2% test accuracy on a CPU
    "fast": {
        "model": "fast",
        "optimizer": "adam",
        "learning_rate": 5e-3,
        "batch_size": 256,
        "epochs": 3,
        "schedule": "cosine",
    },
    # the report's conclusion on a stronger model: augmentation + halving on plateau
    "strong": {
        "model": "strong",
        "optimizer": "adam",
        "batch_size": 64,
        "epochs": 30,
        "schedule": "plateau",
        "augment": True,
    },
}
