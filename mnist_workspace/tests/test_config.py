"""The training config: unknown keys and bad values fail; recipes and options combine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_workspace import train
from mnist_workspace.config import EMA_MOMENTUM, RECIPES, TrainConfig

pytestmark = pytest.mark.unit


def test_defaults_are_the_seed_recipe() -> None:
    config = TrainConfig()
    assert all(getattr(config, key) == value for key, value in RECIPES["seed"].items())


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown config keys \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "values",
    [{"model": "vgg"}, {"optimizer": "sgd"}, {"epochs": 0}, {"validation_fraction": 1.0}],
    ids=["model", "optimizer", "epochs", "validation"],
)
def test_bad_values_are_rejected(values: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(values))):
        TrainConfig.from_dict(values)


def test_options_override_the_recipe() -> None:
    config = train.parse_args(["--recipe", "strong", "--epochs", "2", "--no-augment"])
    assert (config.model, config.schedule, config.epochs, config.augment) == (
        "strong",
        "plateau",
        2,
        False,
    )


def test_ema_option_averages_weights_and_validates_the_average() -> None:
    config = train.parse_args(["--recipe", "strong", "--ema"])
    optimizer = train.make_optimizer(config, steps_per_epoch=10)
    assert optimizer.use_ema and optimizer.ema_momentum == EMA_MOMENTUM
    kinds = {type(c).__name__ for c in train.make_callbacks(config)}
    assert kinds == {"SwapEMAWeights", "ReduceLROnPlateau"}  # validation sees the average
    assert not train.make_optimizer(train.parse_args([]), steps_per_epoch=10).use_ema


def test_cli_rejects_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--epoch", "3"])
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = TrainConfig(model_path=str(tmp_path / "m.keras"), subset=100)
    config.save(config.config_path)
    assert config.config_path == tmp_path / "m.config.json"
    assert TrainConfig.from_dict(json.loads(config.config_path.read_text())) == config


def test_runs_log_under_mnist_logs_dir_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The image sets MNIST_LOGS_DIR to ~/logs, the folder its TensorBoard tile reads.
    monkeypatch.setenv("MNIST_LOGS_DIR", str(tmp_path))
    logdir = Path(str(train.parse_args(["--recipe", "fast"]).logdir))
    assert logdir.parent == tmp_path and logdir.name.startswith("mnist-train-fast-")
    assert train.parse_args(["--logdir", "elsewhere"]).logdir == "elsewhere"
    assert train.parse_args(["--logdir", "none"]).logdir is None


def test_without_mnist_logs_dir_runs_write_no_tensorboard_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MNIST_LOGS_DIR", raising=False)
    assert train.parse_args([]).logdir is None
