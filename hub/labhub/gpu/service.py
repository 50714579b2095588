"""The GPU admin service: ``/services/gpus/`` (HTML) and ``/services/gpus/api/...`` (JSON).

Admin-only through the hub's OAuth: a user who is not a JupyterHub admin gets 403 on every
route but ``static/`` (the page's script and style, no data). The page is the autoescaped
template ``templates/gpus.html`` with no inline script or style, and every answer carries
``CONTENT_SECURITY_POLICY``. Run it as a hub-managed service::

    c.JupyterHub.services.append({
        "name": "gpus",
        "url": "http://127.0.0.1:10101",
        "command": [sys.executable, "-m", "labhub.gpu.service"],
        "environment": {"GPU_DB": settings.gpu_db, "GPU_INVENTORY": settings.gpu_inventory,
                        "GPU_IDLE_TIMEOUT": str(settings.gpu_idle_timeout)},
        "oauth_no_confirm": True,
    })
    c.JupyterHub.load_roles.append({
        "name": "gpus-service",
        "services": ["gpus"],
        "scopes": ["admin:servers", "list:users", "read:users:name", "read:users:activity"],
    })
    # only admins may open it: JupyterHub's admin role has access:services, the default
    # user role ("self") does not, so a student gets 403 from the hub's OAuth and the API.

GPU idle culling: with ``GPU_IDLE_TIMEOUT`` set, the service stops every GPU holder whose
server has been idle (the hub's ``last_activity``) for longer than that many seconds, every
``GPU_CULL_EVERY`` seconds (default 60); the hub-wide idle culler keeps its longer timeout
for everyone else. The stop releases the devices (spawner ``stop``); the audit log records
the cull.

The hub sets ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_SERVICE_PREFIX`` and ``JUPYTERHUB_SERVICE_URL``; ``GPU_DB`` and
``GPU_INVENTORY`` must name the same file and inventory as the spawner's.

API (JSON bodies; every change is written to the audit log with the admin's name):

- ``GET  api/devices``   devices, model, memory, utilisation (NVML), holders and since when,
  reservation, drain flag; plus the queue.
- ``GET  api/usage``     GPU-hours used this week per user and group, quotas left.
- ``GET  api/audit``     the newest audit entries.
- ``POST api/devices/{id}/reserve``  ``{"user": "ada"}``, ``{"group": "nlp"}`` or ``{}`` (clear).
- ``POST api/devices/{id}/drain``    ``{"drained": true|false}``.
- ``POST api/holders/{holder}/revoke`` stops the holder's server through the hub REST API.
- ``POST api/quota/{subject}/topup`` ``{"hours": 5}``; ``POST api/quota/{subject}/reset``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
)
from jupyterhub.utils import url_path_join
from labhub.gpu.inventory import Inventory, detect_inventory, load_inventory, read_utilisation
from labhub.gpu.scheduler import Reservation
from labhub.gpu.store import Store, allocation_to_json
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

HubCall = Callable[[str, str], Awaitable[tuple[int, Any]]]
# Bounds on admin input: larger values are typing mistakes, not intentions.
MAX_AUDIT_ENTRIES = 10_000
MAX_TOPUP_HOURS = 10_000


# The admin page's template (autoescaped, as JupyterHub's own pages) and its script and style.
TEMPLATES = Environment(
    loader=PackageLoader("labhub.gpu", "templates"), autoescape=select_autoescape(["html"])
)
STATIC_DIR = Path(__file__).parent / "static"
# Scripts, styles and requests from the service's own origin only: no inline script or
# event handler runs, even if a name slipped through as markup; no framing by other sites.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'self'; "
    "base-uri 'none'; form-action 'self'"
)


def _now() -> datetime:
    return datetime.now(UTC)


class _Handler(Protocol):
    """What ServiceHandler needs of the tornado handler it is mixed into."""

    @property
    def settings(self) -> dict[str, Any]: ...

    def set_header(self, name: str, value: str) -> None: ...


class ServiceHandler:
    """Mixed into every handler here: the security headers and the service's one HubOAuth.

    The login redirect keeps its PKCE verifier in the HubOAuth object that made it, so the
    OAuth callback must use that same object: JupyterHub's handlers would otherwise take
    ``HubOAuth.instance()``, another one, and the hub would refuse the code ("Code verifier
    required").
    """

    @property
    def hub_auth(self: _Handler) -> Any:
        return self.settings["hub_auth"]

    def set_default_headers(self: _Handler) -> None:
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")


class OAuthCallbackHandler(ServiceHandler, HubOAuthCallbackHandler):  # type: ignore[misc]
    """JupyterHub's OAuth callback, with the service's HubOAuth."""


class StaticHandler(ServiceHandler, web.StaticFileHandler):
    """The page's script and style, with the same headers as the page."""


class AdminHandler(ServiceHandler, HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """Base: hub OAuth login, then 403 unless the user is a JupyterHub admin."""

    @property
    def store(self) -> Store:
        store: Store = self.settings["gpu_store"]
        return store

    @property
    def inventory(self) -> Inventory:
        inventory: Inventory = self.settings["gpu_inventory"]
        return inventory

    @property
    def admin_name(self) -> str:
        return str(self.current_user["name"])

    _identifying = False

    def check_xsrf_cookie(self) -> None:
        # Tornado checks XSRF before prepare(); identify the user first so that a request
        # with an API token (no cookie, nothing to forge) is recognised as such. HubOAuth
        # calls back here while it reads a cookie: then check at once, or the nested
        # identification would wait on itself for ever (every browser POST hung).
        if not self._identifying:
            self._identifying = True
            try:
                _ = self.current_user
            finally:
                self._identifying = False
        super().check_xsrf_cookie()

    def prepare(self) -> None:
        user = self.current_user
        if user is None:
            if self.request.path.startswith(self.settings["api_prefix"]):
                raise web.HTTPError(403, "log in to the hub first")
            self.redirect(self.get_login_url())
            return
        if not user.get("admin"):
            raise web.HTTPError(403, f"{user.get('name')} is not a JupyterHub admin")

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as e:  # not JSON, or not UTF-8 at all (UnicodeDecodeError)
            raise web.HTTPError(400, f"request body is not JSON ({e}); send a JSON object") from e
        if not isinstance(data, dict):
            raise web.HTTPError(400, "request body must be a JSON object")
        return data

    def known_device(self, device_id: str) -> None:
        if device_id not in {d.id for d in self.inventory}:
            known = ", ".join(d.id for d in self.inventory) or "none"
            raise web.HTTPError(404, f"no device {device_id!r}; known devices: {known}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.finish({"status": status_code, "message": message})


async def devices_report(store: Store, inventory: Inventory) -> dict[str, Any]:
    """Everything the devices view shows, as JSON."""
    state = await asyncio.to_thread(store.state, inventory)
    drained = await asyncio.to_thread(store.drained_since)
    queue = await asyncio.to_thread(store.queue)
    utilisation = await asyncio.to_thread(read_utilisation)
    devices = []
    for d in inventory:
        util = utilisation.get(d.id.split(":")[0])
        reservation = state.reservations.get(d.id)
        devices.append(
            {
                "id": d.id,
                "uuid": d.uuid,
                "model": d.model,
                "memory_mib": d.memory_mib,
                "policy": d.policy,
                "capacity": d.capacity,
                "memory_cap_mib": d.memory_cap_mib,
                "utilisation_percent": util.gpu_percent if util else None,
                "memory_used_mib": util.memory_used_mib if util else None,
                "drained_since": drained.get(d.id),
                "reserved_for": reservation.describe() if reservation else None,
                "holders": [
                    {"holder": a.holder, "user": a.user, "since": a.since.isoformat()}
                    for a in state.allocations.values()
                    if d.id in a.device_ids
                ],
            }
        )
    return {
        "devices": devices,
        "queue": [{"holder": h, "request": r, "since": s} for h, r, s in queue],
    }


class DevicesHandler(AdminHandler):
    async def get(self) -> None:
        self.finish(await devices_report(self.store, self.inventory))


class UsageHandler(AdminHandler):
    async def get(self) -> None:
        now = _now()
        usage = await asyncio.to_thread(self.store.usage, now)
        allocations = await asyncio.to_thread(self.store.allocations)
        self.finish(
            {
                "now": now.isoformat(),
                "gpu_hours_this_week": {k: round(v, 3) for k, v in sorted(usage.items())},
                "allocations": [allocation_to_json(a) for a in allocations if a.device_ids],
            }
        )


class AuditHandler(AdminHandler):
    async def get(self) -> None:
        limit = self.get_query_argument("limit", "200")
        if not (limit.isdecimal() and 1 <= int(limit) <= MAX_AUDIT_ENTRIES):
            raise web.HTTPError(
                400, f"limit={limit!r}: give a whole number from 1 to {MAX_AUDIT_ENTRIES}"
            )
        entries = await asyncio.to_thread(self.store.audit, int(limit))
        self.finish({"entries": [e.__dict__ for e in entries]})


class ReserveHandler(AdminHandler):
    async def post(self, device_id: str) -> None:
        self.known_device(device_id)
        data = self.body()
        unknown = set(data) - {"user", "group"}
        names_ok = all(isinstance(name, str) and name for name in data.values())
        if unknown or len(data) > 1 or not names_ok:
            raise web.HTTPError(
                400, 'send {"user": NAME}, {"group": NAME} or {} to clear the reservation'
            )
        reservation = Reservation(user=data.get("user"), group=data.get("group")) if data else None
        await asyncio.to_thread(
            self.store.set_reservation, self.inventory, device_id, reservation, self.admin_name,
            _now(),
        )  # fmt: skip
        self.finish({"device": device_id, "reserved_for": reservation and reservation.describe()})


class DrainHandler(AdminHandler):
    async def post(self, device_id: str) -> None:
        self.known_device(device_id)
        drained = self.body().get("drained", True)
        if not isinstance(drained, bool):
            raise web.HTTPError(400, 'send {"drained": true} or {"drained": false}')
        await asyncio.to_thread(
            self.store.set_drained, self.inventory, device_id, drained, self.admin_name, _now()
        )
        self.finish({"device": device_id, "drained": drained})


class RevokeHandler(AdminHandler):
    async def post(self, holder: str) -> None:
        allocations = await asyncio.to_thread(self.store.allocations)
        allocation = next((a for a in allocations if a.holder == holder), None)
        if allocation is None:
            raise web.HTTPError(404, f"{holder!r} holds no GPU; see api/devices for holders")
        user, _, server = holder.partition("/")
        path = f"users/{quote(user)}/" + (f"servers/{quote(server)}" if server else "server")
        request = HTTPRequest(
            url_path_join(self.settings["hub_api_url"], path),
            method="DELETE",
            headers={"Authorization": f"token {self.settings['hub_api_token']}"},
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            raise web.HTTPError(
                502, f"the hub refused to stop {holder} ({e.code}); check the service's role "
                "has the admin:servers scope",
            ) from e  # fmt: skip
        await asyncio.to_thread(
            self.store.record, self.admin_name, "revoke", _now(), holder=holder,
            devices=list(allocation.device_ids),
        )  # fmt: skip
        # 202: the hub is stopping it; the spawner releases the devices when it has stopped.
        self.set_status(202 if response.code == 202 else 200)
        self.finish({"holder": holder, "stopping": response.code == 202})


class QuotaHandler(AdminHandler):
    async def post(self, subject: str, action: str) -> None:
        if not subject.startswith(("user:", "group:")):
            raise web.HTTPError(400, f"subject {subject!r} must look like user:NAME or group:NAME")
        if action == "reset":
            await asyncio.to_thread(self.store.reset, subject, self.admin_name, _now())
            self.finish({"subject": subject, "reset": True})
            return
        hours = self.body().get("hours")
        if (
            isinstance(hours, bool)
            or not isinstance(hours, int | float)
            or not (0 < hours <= MAX_TOPUP_HOURS)
        ):
            raise web.HTTPError(
                400,
                f'send {{"hours": N}} with 0 < N <= {MAX_TOPUP_HOURS} GPU-hours to add this week',
            )
        await asyncio.to_thread(self.store.topup, subject, float(hours), self.admin_name, _now())
        self.finish({"subject": subject, "added_hours": hours})


class UnknownApiPathHandler(AdminHandler):
    """A JSON 404 (not tornado's HTML page) for API paths and methods that do not exist."""

    def prepare(self) -> None:
        super().prepare()
        raise web.HTTPError(
            404, f"no API endpoint {self.request.method} {self.request.path}; see docs/gpus.md"
        )


class PageHandler(AdminHandler):
    async def get(self) -> None:
        report = await devices_report(self.store, self.inventory)
        usage = await asyncio.to_thread(self.store.usage, _now())
        audit = await asyncio.to_thread(self.store.audit, 50)
        page = TEMPLATES.get_template("gpus.html").render(
            devices=report["devices"],
            queue=report["queue"],
            usage=sorted(usage.items()),
            audit=audit,
            api=self.settings["api_prefix"],
            xsrf=self.xsrf_token.decode(),
            static_url=self.static_url,
        )
        self.finish(page)


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


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def cull_idle_gpu_holders(
    store: Store, hub: HubCall, timeout_s: float, now: datetime
) -> list[str]:
    """Stop every GPU holder idle for more than ``timeout_s`` seconds; return the holders.

    Idle is the hub's ``last_activity`` of the server (the start time if it never had any).
    A server still starting or stopping is left alone. The devices are released by the
    spawner's ``stop``, not here, so the record always follows the container.
    """
    culled = []
    allocations = await asyncio.to_thread(store.allocations)
    for allocation in allocations:
        if not allocation.device_ids:
            continue
        user, _, server = allocation.holder.partition("/")
        code, model = await hub("GET", f"users/{quote(user)}")
        if code != 200 or not isinstance(model, dict):
            continue
        info = (model.get("servers") or {}).get(server)
        if not info or info.get("pending") or not info.get("ready"):
            continue
        last = _parse_time(info.get("last_activity")) or _parse_time(info.get("started"))
        if last is None or (now - last).total_seconds() <= timeout_s:
            continue
        path = f"users/{quote(user)}/" + (f"servers/{quote(server)}" if server else "server")
        code, _ = await hub("DELETE", path)
        if code in (202, 204):
            idle = int((now - last).total_seconds())
            await asyncio.to_thread(
                store.record, "gpu-idle-culler", "cull", now, holder=allocation.holder,
                devices=list(allocation.device_ids), idle_seconds=idle,
            )  # fmt: skip
            culled.append(allocation.holder)
    return culled


def make_app(
    store: Store,
    inventory: Inventory,
    hub_auth: Any,
    prefix: str,
    hub_api_url: str,
    hub_api_token: str,
) -> web.Application:
    """The tornado application; ``prefix`` is JUPYTERHUB_SERVICE_PREFIX (``/services/gpus/``)."""
    api = url_path_join(prefix, "api/")
    return web.Application(
        [
            (prefix, PageHandler),
            (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
            (api + "devices", DevicesHandler),
            (api + "usage", UsageHandler),
            (api + "audit", AuditHandler),
            (api + r"devices/([^/]+)/reserve", ReserveHandler),
            (api + r"devices/([^/]+)/drain", DrainHandler),
            (api + r"holders/(.+)/revoke", RevokeHandler),
            (api + r"quota/([^/]+)/(topup|reset)", QuotaHandler),
            (api + ".*", UnknownApiPathHandler),
        ],
        gpu_store=store,
        gpu_inventory=inventory,
        hub_auth=hub_auth,
        api_prefix=api,
        hub_api_url=hub_api_url,
        hub_api_token=hub_api_token,
        cookie_secret=os.urandom(32),
        xsrf_cookies=True,
        static_path=str(STATIC_DIR),
        static_url_prefix=url_path_join(prefix, "static/"),
        static_handler_class=StaticHandler,
    )


def main() -> None:
    """Entry point for ``python -m labhub.gpu.service`` under the hub."""
    setting = os.environ.get("GPU_INVENTORY", "auto")
    if setting == "none":
        inventory: Inventory = ()
    else:
        inventory = detect_inventory() if setting == "auto" else load_inventory(setting)
    hub_auth = HubOAuth(api_token=os.environ["JUPYTERHUB_API_TOKEN"], cache_max_age=60)
    store = Store(os.environ["GPU_DB"])
    app = make_app(
        store,
        inventory,
        hub_auth,
        os.environ["JUPYTERHUB_SERVICE_PREFIX"],
        os.environ["JUPYTERHUB_API_URL"],
        os.environ["JUPYTERHUB_API_TOKEN"],
    )
    url = os.environ["JUPYTERHUB_SERVICE_URL"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    app.listen(port, address=os.environ.get("GPU_SERVICE_BIND", "127.0.0.1"))
    print(f"[gpus] admin service on port {port}, {len(inventory)} device(s)", flush=True)
    idle_timeout = float(os.environ.get("GPU_IDLE_TIMEOUT", "0") or 0)
    if idle_timeout > 0:
        hub = hub_api_caller(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])

        async def cull() -> None:
            culled = await cull_idle_gpu_holders(store, hub, idle_timeout, _now())
            if culled:
                print(f"[gpus] culled idle GPU holders: {', '.join(culled)}", flush=True)

        every_s = float(os.environ.get("GPU_CULL_EVERY", "60"))
        PeriodicCallback(cull, every_s * 1000).start()
    IOLoop.current().start()


if __name__ == "__main__":
    main()
