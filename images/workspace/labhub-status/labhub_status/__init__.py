"""labhub's JupyterLab status: this server's GPU, its limits and the time it has left.

The server side (``labhub/status``, ``labhub/extend``) is this package; the status-bar item
is its JupyterLab extension (``src/``, built into ``labextension/`` in the image).
"""

from __future__ import annotations

import os
from typing import Any

from .handlers import setup_handlers


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "labhub_status"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    setup_handlers(serverapp, dict(os.environ))
    serverapp.log.info("labhub_status: labhub/status and labhub/extend are served")
