"""What went wrong: the worst test errors, the confusion matrix, and TensorBoard images.

Pure NumPy plus Matplotlib `Figure` objects (no pyplot, so no global backend changes):
the notebook shows the same figures TensorBoard gets.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def worst_errors(probabilities: np.ndarray, labels: np.ndarray, k: int = 6) -> np.ndarray:
    """Indices of the `k` errors the model was surest of, as the report's "top 6 errors":
    ranked by predicted-class probability minus true-class probability."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    rows = np.arange(len(labels))[wrong]
    margin = probabilities[rows, predicted[wrong]] - probabilities[rows, labels[wrong]]
    return wrong[np.argsort(-margin, kind="stable")[:k]]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def plot_worst_errors(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, indices: np.ndarray
) -> Figure:
    """A grid of the given errors, titled with predicted and true label."""
    cols = max(1, min(3, len(indices)))
    rows = max(1, -(-len(indices) // cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices, strict=False):
        ax.imshow(images[i].reshape(28, 28), cmap="gray")
        pred = int(probabilities[i].argmax())
        ax.set_title(f"predicted {pred} ({probabilities[i, pred]:.2f})\ntrue {int(labels[i])}")
    fig.tight_layout()
    return fig


def plot_confusion(counts: np.ndarray) -> Figure:
    """The confusion matrix with counts written in each cell."""
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    for (true, pred), n in np.ndenumerate(counts):
        color = "white" if n > counts.max() / 2 else "black"
        ax.text(pred, true, str(n), ha="center", va="center", color=color, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10))
    ax.set_title("confusion matrix (test set)")
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to a uint8 RGBA array (H, W, 4)."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGBA"))


def write_tensorboard_images(logdir: Path, images: dict[str, np.ndarray], step: int = 0) -> bool:
    """Write RGBA arrays as TensorBoard images under `logdir/test`, with TensorFlow's summary
    writer or else PyTorch's; False with neither."""
    if importlib.util.find_spec("tensorflow") is None:
        if importlib.util.find_spec("torch") is None:
            return False
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(logdir / "test")) as writer:
            for name, array in images.items():
                writer.add_image(name, array, step, dataformats="HWC")
        return True
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir / "test"))
    with writer.as_default():
        for name, array in images.items():
            tf.summary.image(name, array[None], step=step)
    writer.close()
    return True
