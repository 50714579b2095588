"""`mnist-predict`: any image becomes MNIST-like; the CLI classifies and writes Kaggle CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_workspace import data, predict


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.unit
@pytest.mark.parametrize(
    ("scale", "canvas", "invert", "mode"),
    [
        (1, (28, 28), False, "L"),
        (4, (300, 200), True, "L"),
        (3, (90, 140), True, "RGB"),
        (2, (64, 64), False, "RGBA"),
    ],
    ids=["mnist-like", "big-black-on-white", "colour-photo-like", "rgba"],
)
def test_any_image_is_brought_to_mnist_form(
    mnist: data.Mnist, scale: int, canvas: tuple[int, int], invert: bool, mode: str
) -> None:
    digit = mnist.x_test[0]
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    photo = Image.new("L", canvas, 0)
    photo.paste(big, ((canvas[0] - big.width) // 3, (canvas[1] - big.height) // 2))
    if invert:
        photo = Image.fromarray(255 - np.asarray(photo))
    converted = predict.to_mnist(photo.convert(mode))
    assert converted.shape == (28, 28) and converted.dtype == np.float32
    assert converted.max() == pytest.approx(1.0, abs=0.05) and converted.min() >= 0
    assert similarity(converted, predict.to_mnist(Image.fromarray(digit))) > 0.9


@pytest.mark.unit
def test_blank_image_gives_an_empty_frame() -> None:
    assert not predict.to_mnist(Image.new("L", (40, 40), 255)).any()


@pytest.mark.unit
def test_unreadable_image_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    bad = tmp_path / "digit.png"
    bad.write_text("not a png")
    assert predict.main(["--model", str(model), str(bad)]) == 2
    assert "digit.png: cannot read image" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_classifies_pngs_and_writes_kaggle_csv(
    trained_run: Path, mnist: data.Mnist, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mnist.y_test is not None
    paths = []
    for i in range(8):  # black-on-white, larger than 28x28, as a student would draw them
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(255 - mnist.x_test[i]).resize((112, 112)).save(path)
        paths.append(str(path))
    model = str(trained_run / "lenet.keras")
    assert predict.main(["--model", model, *paths]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == paths
    correct = sum(int(row[1]) == label for row, label in zip(rows, mnist.y_test[:8], strict=True))
    assert correct >= 6

    pixels = mnist.x_test[:30].reshape(30, -1)
    header = ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(tmp_path / "test.csv", pixels, fmt="%d", delimiter=",", header=header, comments="")
    out = tmp_path / "submission.csv"
    argv = ["--model", model, "--kaggle-submission", str(out), "--data-dir", str(tmp_path)]
    assert predict.main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 31
    assert lines[1].startswith("1,") and all(
        0 <= int(line.split(",")[1]) <= 9 for line in lines[1:]
    )
