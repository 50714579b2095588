"""Workaround: JupyterHub 6.1.1 answers 500 to a REST API body that is JSON but not an
object (for example `true` sent to POST /hub/api/shares/<user>/<server>), because its
handlers call `.get()` on whatever the body parsed to. Every body of JupyterHub's API is
a JSON object, so anything else is refused with 400 before a handler sees it.

Found by tests/test_fuzz.py. Remove once JupyterHub validates bodies itself (the fuzz
test then still guards against the 500 coming back).
"""

from __future__ import annotations

from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

_parse_json_body = APIHandler.get_json_body


def _object_json_body(handler: APIHandler) -> Any:
    model = _parse_json_body(handler)
    if model is not None and not isinstance(model, dict):
        raise web.HTTPError(400, "The request body must be a JSON object")
    return model


def refuse_non_object_json_bodies() -> None:
    """Install the check on every API handler (idempotent)."""
    APIHandler.get_json_body = _object_json_body
