"""GET <base_url>labhub/status and POST <base_url>labhub/extend, with jupyter-server's own
login and XSRF checks; the GPU service is asked with this server's own token.

The service may be absent (no GPU_INVENTORY), slow or broken: the status then says what the
container knows and why the rest is missing, and never fails the lab.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from .status import ContainerFacts, combine

# Seconds one call to the GPU service may take: the status bar asks once a minute.
SERVICE_TIMEOUT = 5.0
FACTS = "labhub_status_facts"


class _ServiceHandler(APIHandler):
    auth_resource = "labhub_status"

    @property
    def facts(self) -> ContainerFacts:
        facts: ContainerFacts = self.settings[FACTS]
        return facts

    async def call_service(self, method: str, path: str = "", body: Any = None) -> HTTPResponse:
        """One request to the GPU service's api/me (``path`` below it); OSError and
        HTTPClientError when it does not answer."""
        facts = self.facts
        assert facts.status_url is not None
        return await AsyncHTTPClient().fetch(
            facts.status_url.rstrip("/") + path,
            method=method,
            body=None if body is None else json.dumps(body),
            headers={"Authorization": f"token {facts.token}", "Accept": "application/json"},
            connect_timeout=SERVICE_TIMEOUT,
            request_timeout=SERVICE_TIMEOUT,
            follow_redirects=False,
            raise_error=False,
        )

    async def status(self) -> dict[str, Any]:
        """The combined status; what went wrong with the service, if anything, inside it."""
        me, problem = None, None
        if self.facts.status_url is not None:
            try:
                response = await self.call_service("GET")
            except (OSError, HTTPClientError) as e:
                problem = f"no answer ({e})"
            else:
                me, problem = (
                    _json_object(response.body)
                    if response.code == 200
                    else (None, f"answered {response.code}")
                )
        if problem:
            self.log.warning("labhub status: GPU service %s", problem)
        return combine(self.facts, me, problem, datetime.now(UTC))


def _json_object(body: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """The service's JSON object, or (None, what was wrong with the answer)."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return None, "answered something that is not JSON"
    if not isinstance(data, dict):
        return None, "answered JSON that is not an object"
    return data, None


class StatusHandler(_ServiceHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(await self.status())


class ExtendHandler(_ServiceHandler):
    """Asks the service for one more session extension for THIS server (the body's choice
    of server, if any, is ignored), then answers with the new status."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        if self.facts.status_url is None:
            raise web.HTTPError(404, "This hub has no GPU service: there is no session to extend.")
        try:
            response = await self.call_service(
                "POST", "/extend", {"server": self.facts.server_name}
            )
        except (OSError, HTTPClientError) as e:
            raise web.HTTPError(502, f"The GPU service did not answer ({e}); try again.") from e
        if response.code in (404, 409):
            error, _ = _json_object(response.body)
            reason = (error or {}).get("error")
            raise web.HTTPError(
                response.code, reason if isinstance(reason, str) else "No extension possible."
            )
        if response.code != 200:
            raise web.HTTPError(
                502, f"The GPU service answered {response.code}; try again in a minute."
            )
        self.finish(await self.status())


def setup_handlers(serverapp: Any, environ: dict[str, str]) -> None:
    """Route the two endpoints under the server's base URL, with the container's facts."""
    web_app = serverapp.web_app
    web_app.settings[FACTS] = ContainerFacts.from_env(environ)
    base = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "labhub/status"), StatusHandler),
            (url_path_join(base, "labhub/extend"), ExtendHandler),
        ],
    )
