"""The console commands that need a Keras backend: they choose it before importing Keras.

The package is built and tested on TensorFlow and on PyTorch, which pip installs only
through the `tensorflow` and `torch` extras (the images install them themselves). The
commands run on `KERAS_BACKEND` when it is set (each image sets its own), else on the
first of those installed. Without one, `import keras` would end in a traceback; this
names the extras instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from mnist_workspace import env

# Extras that install a backend this package is tested on (pyproject.toml), in the order
# they are preferred: Keras's backend name (also its module's name) -> the extra.
BACKEND_EXTRAS = {"tensorflow": "tensorflow", "torch": "torch"}


class BackendMissing(RuntimeError):
    """No Keras backend can be imported (KERAS_BACKEND's, or any of BACKEND_EXTRAS)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a name that is no module at all
        return False


def require_backend(command: str) -> str:
    """The Keras backend to run on, made Keras's choice; raise BackendMissing, naming what
    to install, when it cannot be imported."""
    installed = tuple(b for b in BACKEND_EXTRAS if _installed(b))
    backend = env.keras_backend(installed)
    if _installed(backend):
        env.use_keras_backend(backend)
        return backend
    extras = " or ".join(f"pip install 'mnist-workspace[{extra}]'" for extra in BACKEND_EXTRAS)
    if backend in BACKEND_EXTRAS and not installed:
        raise BackendMissing(
            f"{command} needs a Keras backend, TensorFlow or PyTorch, and neither is "
            f"installed. Install the package with one: {extras} (on a host without a GPU, "
            "`pip install tensorflow-cpu` gives the TensorFlow backend, smaller)"
        )
    raise BackendMissing(
        f"{command}: {env.BACKEND_VAR}={backend} names a Keras backend that is not "
        f"installed: install it, or unset {env.BACKEND_VAR} and {extras}"
    )


def _run(command: str, module: str, argv: Sequence[str] | None) -> int:
    try:
        require_backend(command)
    except BackendMissing as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    main = importlib.import_module(f"mnist_workspace.{module}").main
    return int(main(argv))


def train(argv: Sequence[str] | None = None) -> int:
    """`mnist-train`."""
    return _run("mnist-train", "train", argv)


def predict(argv: Sequence[str] | None = None) -> int:
    """`mnist-predict`."""
    return _run("mnist-predict", "predict", argv)
