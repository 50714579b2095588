"""The admin service's client for the hub REST API, with the service's own token."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from jupyterhub.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

HubCall = Callable[[str, str], Awaitable[tuple[int, Any]]]


def server_path(holder: str) -> str:
    """The hub API path of a holder's server: ``users/ada/server`` or ``.../servers/NAME``."""
    user, _, server = holder.partition("/")
    return f"users/{quote(user)}/" + (f"servers/{quote(server)}" if server else "server")


def hub_api_caller(hub_api_url: str, hub_api_token: str) -> HubCall:
    """``await call("GET", "users/ada")`` -> (status, JSON or None), with the service token."""

    async def call(method: str, path: str) -> tuple[int, Any]:
        request = HTTPRequest(
            url_path_join(hub_api_url, path),
            method=method,
            headers={"Authorization": f"token {hub_api_token}"},
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            return e.code, None
        return response.code, json.loads(response.body) if response.body else None

    return call
