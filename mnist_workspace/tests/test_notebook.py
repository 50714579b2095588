"""MNIST.ipynb runs top to bottom on a small subset, and is committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "MNIST.ipynb"


@pytest.mark.unit
def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.unit
def test_notebook_asks_for_the_images_kernel() -> None:
    # images/workspace installs this kernel; the report calls it "TensorFlow-GPU".
    kernelspec = nbformat.read(NOTEBOOK, as_version=4).metadata.kernelspec
    assert (kernelspec.name, kernelspec.display_name) == ("tensorflow-gpu", "TensorFlow-GPU")


@pytest.mark.slow
def test_notebook_executes_on_a_subset(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("MNIST_NOTEBOOK_SUBSET", "1500")
    monkeypatch.setenv("MNIST_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Outside the image the same code runs on the environment's default Python kernel.
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "LeNet test accuracy" in printed and "strong test accuracy" in printed
    assert (tmp_path / "strong.keras").is_file()
    assert os.listdir(tmp_path / "logs")
