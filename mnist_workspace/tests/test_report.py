"""Worst errors and confusion matrix, on hand-made probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_workspace import report

pytestmark = pytest.mark.unit


def test_worst_errors_are_the_most_confident_mistakes() -> None:
    labels = np.array([0, 1, 2, 3])
    probabilities = np.full((4, 10), 0.01)
    probabilities[0, 0] = 0.91  # right
    probabilities[1, 7] = 0.6  # wrong, margin 0.59
    probabilities[2, 5] = 0.9  # wrong, margin 0.89
    probabilities[3, 3], probabilities[3, 4] = 0.4, 0.5  # wrong, margin 0.1
    assert report.worst_errors(probabilities, labels, k=2).tolist() == [2, 1]
    assert report.worst_errors(probabilities, labels).tolist() == [2, 1, 3]


def test_confusion_matrix_counts_true_by_predicted() -> None:
    counts = report.confusion_matrix(np.array([1, 1, 2]), np.array([1, 2, 2]), classes=3)
    assert counts.tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_figures_render_to_rgba() -> None:
    images = np.zeros((3, 28, 28, 1), "float32")
    probabilities = np.eye(10)[[1, 2, 3]]
    grid = report.plot_worst_errors(images, np.array([0, 0, 0]), probabilities, np.arange(3))
    array = report.figure_to_array(grid)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 4
