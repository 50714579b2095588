"""Workarounds for two JupyterHub 6.1.1 REST API bugs, installed on its API handlers.

1. A body that is JSON but not an object (for example `true` sent to
   POST /hub/api/shares/<user>/<server>) gave 500, because the handlers call `.get()` on
   whatever the body parsed to. Every body of JupyterHub's API is a JSON object, so
   anything else is refused with 400 before a handler sees it (found by tests/test_fuzz.py).
2. PATCH /hub/api/users/<name> with the user's own, unchanged `name` in the body (which
   the admin panel always sends, e.g. when an admin ticks "Admin") set the name to NULL:
   the handler only computes a new name when it differs, then assigns it anyway. The hub
   then failed for that user and the idle culler failed every minute. An unchanged name
   is dropped from the body, so the handler leaves the name alone.

Remove each once JupyterHub fixes it (tests/test_fuzz.py and tests/test_admin_panel.py
then still guard against the bug coming back).
"""

from __future__ import annotations

from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.users import UserAPIHandler
from tornado import web

_parse_json_body = APIHandler.get_json_body


def _guarded_json_body(handler: APIHandler) -> Any:
    model = _parse_json_body(handler)
    if model is not None and not isinstance(model, dict):
        raise web.HTTPError(400, "The request body must be a JSON object")
    if (
        isinstance(handler, UserAPIHandler)
        and handler.request.method == "PATCH"
        and model
        and handler.path_args
        and model.get("name") == handler.path_args[0]
    ):
        model = {key: value for key, value in model.items() if key != "name"}
    return model


def guard_api_bodies() -> None:
    """Install both checks on every API handler (idempotent)."""
    APIHandler.get_json_body = _guarded_json_body
