"""`mnist-predict`: classify digit images with a saved model, or write a Kaggle submission.

Photos and scans do not look like MNIST, so each image is brought to MNIST's form first:
grayscale, white ink on black, the digit fitted in a 20x20 box and centred by its centre of
mass in a 28x28 frame, which is how the original dataset was prepared.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_workspace import data


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any size, grayscale or colour, either polarity -> float32 (28, 28) in 0..1."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels are treated as white paper.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if np.median(border) > 127:  # black ink on white paper
        pixels, border = 255.0 - pixels, 255.0 - border
    pixels = np.clip(pixels - np.median(border), 0, None)  # remove a grey paper tone
    if pixels.max() <= 0:
        return np.zeros((28, 28), dtype=np.float32)
    rows = np.flatnonzero((pixels > 0.2 * pixels.max()).any(axis=1))
    cols = np.flatnonzero((pixels > 0.2 * pixels.max()).any(axis=0))
    crop = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = Image.fromarray((255 * crop / crop.max()).astype(np.uint8)).resize(
        size, Image.Resampling.LANCZOS
    )
    small = np.asarray(digit, dtype=np.float32)
    total = small.sum()
    ys, xs = np.indices(small.shape)
    centre = (ys * small).sum() / total, (xs * small).sum() / total
    top = int(np.clip(round(14 - centre[0]), 0, 28 - small.shape[0]))
    left = int(np.clip(round(14 - centre[1]), 0, 28 - small.shape[1]))
    frame = np.zeros((28, 28), dtype=np.float32)
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame / 255.0


def load_image(path: Path) -> np.ndarray:
    """Open one image file as an MNIST-like array, or fail with a one-line DataError."""
    try:
        with Image.open(path) as image:
            return to_mnist(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise data.DataError(f"{path}: cannot read image ({exc.__class__.__name__})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-predict", description=__doc__, allow_abbrev=False)
    parser.add_argument("images", nargs="*", type=Path, help="digit images (PNG, JPEG, ...)")
    parser.add_argument("--model", type=Path, default=Path("mnist_model.keras"), help=".keras file")
    parser.add_argument(
        "--kaggle-submission", type=Path, metavar="OUT.csv", help="write ImageId,Label for test.csv"
    )
    parser.add_argument(
        "--data-dir", help="folder with Kaggle's test.csv (default $MNIST_DATA_DIR)"
    )
    args = parser.parse_args(argv)
    if not args.images and not args.kaggle_submission:
        parser.error("give IMAGE files or --kaggle-submission OUT.csv")
    try:
        if not args.model.is_file():
            raise data.DataError(f"{args.model}: no such model; train one with mnist-train")
        batch = np.stack([load_image(p) for p in args.images]) if args.images else None
        kaggle = None
        if args.kaggle_submission:
            test_csv = data.resolve(args.data_dir) / "test.csv"
            kaggle = data.read_kaggle_csv(test_csv, 784).reshape(-1, 28, 28)
    except data.DataError as exc:
        print(f"mnist-predict: error: {exc}", file=sys.stderr)
        return 2
    import keras

    model = keras.saving.load_model(args.model)
    if batch is not None:
        probabilities = model.predict(batch[..., None], verbose=0)
        for path, p in zip(args.images, probabilities, strict=True):
            print(f"{path}\t{int(p.argmax())}\t{float(p.max()):.3f}")
    if kaggle is not None:
        labels = model.predict(data.to_model_input(kaggle), batch_size=512, verbose=0).argmax(1)
        lines = ["ImageId,Label", *(f"{i},{label}" for i, label in enumerate(labels, start=1))]
        args.kaggle_submission.write_text("\n".join(lines) + "\n")
        print(f"wrote {len(labels)} predictions to {args.kaggle_submission}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
