"""The console commands that need a Keras backend: they check for it before importing Keras.

The package is built and tested on TensorFlow, which pip installs only through the
`tensorflow` extra (the image installs tensorflow-cpu or tensorflow[and-cuda] itself).
Without a backend, `import keras` would end in a traceback; this names the extra instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from mnist_workspace import env

# Extras that install a backend this package is tested on (pyproject.toml): Keras's
# backend name (also its module's name) -> the extra.
BACKEND_EXTRAS = {"tensorflow": "tensorflow"}


class BackendMissing(RuntimeError):
    """The Keras backend (KERAS_BACKEND, default tensorflow) cannot be imported."""


def require_backend(command: str) -> None:
    """Raise BackendMissing, naming what to install, unless Keras's backend is importable."""
    backend = env.keras_backend()
    try:
        if importlib.util.find_spec(backend) is not None:
            return
    except (ImportError, ValueError):  # a name that is no module at all
        pass
    extras = " or ".join(f"pip install 'mnist-workspace[{extra}]'" for extra in BACKEND_EXTRAS)
    if backend in BACKEND_EXTRAS:
        raise BackendMissing(
            f"{command} needs TensorFlow, which is not installed. Install the package with "
            f"its backend: {extras} (on a host without a GPU, `pip install tensorflow-cpu` "
            "gives the same backend, smaller)"
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
