"""The admin service's JSON API (``/services/gpus/api/...``) and the handlers' common base.

Admin-only through the hub's OAuth: a user who is not a JupyterHub admin gets 403 on every
route but ``static/`` (the page's script and style, no data). Every answer carries
``CONTENT_SECURITY_POLICY``. Every change is written to the audit log with the admin's name.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from labhub.gpu.allocator import utcnow
from labhub.gpu.culler import Reclaimer
from labhub.gpu.hubclient import HubCall, server_path
from labhub.gpu.inventory import Inventory, device_key
from labhub.gpu.readings import GpuReadings
from labhub.gpu.reclaim import Rules
from labhub.gpu.scheduler import Reservation
from labhub.gpu.store import Store, allocation_to_json
from tornado import web

# Bounds on admin input: larger values are typing mistakes, not intentions.
MAX_AUDIT_ENTRIES = 10_000
MAX_TOPUP_HOURS = 10_000
# Scripts, styles and requests from the service's own origin only: no inline script or
# event handler runs, even if a name slipped through as markup; no framing by other sites.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'self'; "
    "base-uri 'none'; form-action 'self'"
)


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


class UserHandler(ServiceHandler, HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """Base: hub OAuth login (a cookie, or a token with access to the service).

    Every user may pass the hub's check (students need ``api/me`` from their servers), so
    nothing here is admin-only: :class:`AdminHandler` is.
    """

    @property
    def store(self) -> Store:
        store: Store = self.settings["gpu_store"]
        return store

    @property
    def inventory(self) -> Inventory:
        inventory: Inventory = self.settings["gpu_inventory"]
        return inventory

    async def devices(self) -> dict[str, Any]:
        """The devices view (`devices_report`) with this service's readings and rules."""
        return await devices_report(
            self.store,
            self.inventory,
            self.settings["gpu_readings"],
            self.settings["gpu_reclaimer"],
        )

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
        if self.current_user is None:
            if self.request.path.startswith(self.settings["api_prefix"]):
                raise web.HTTPError(403, "log in to the hub first")
            self.redirect(self.get_login_url())

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as e:  # not JSON, or not UTF-8 at all (UnicodeDecodeError)
            raise web.HTTPError(400, f"request body is not JSON ({e}); send a JSON object") from e
        if not isinstance(data, dict):
            raise web.HTTPError(400, "request body must be a JSON object")
        return data

    def known_device(self, device_id: str) -> None:
        if device_id not in {d.key for d in self.inventory}:
            known = ", ".join(d.key for d in self.inventory) or "none"
            raise web.HTTPError(404, f"no device {device_id!r}; known devices: {known}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.finish({"status": status_code, "message": message})


class AdminHandler(UserHandler):
    """Base of every admin page and endpoint: 403 unless the user is a JupyterHub admin.

    A student's server token passes the hub's check for this service (it may read
    ``api/me``), so this check is the only thing between it and the admin API.
    """

    def prepare(self) -> None:
        super().prepare()
        user = self.current_user
        if user is not None and not user.get("admin"):
            raise web.HTTPError(403, f"{user.get('name')} is not a JupyterHub admin")


async def devices_report(
    store: Store,
    inventory: Inventory,
    readings: GpuReadings,
    reclaimer: Reclaimer | None = None,
) -> dict[str, Any]:
    """Everything the devices view shows, as JSON, with utilisation from ``readings``;
    with ``reclaimer``, each holder's idle-since and when the reclaiming rules would stop
    it (``reclaim``)."""
    state = await asyncio.to_thread(store.state, inventory)
    extensions = await asyncio.to_thread(store.extensions_used) if reclaimer else {}
    now = utcnow()
    drained = await asyncio.to_thread(store.drained_since)
    nodes_down = await asyncio.to_thread(store.nodes_down_since)
    queue = await asyncio.to_thread(store.queue)
    utilisation = await readings.read(inventory)
    devices = []
    for d in inventory:
        util = utilisation.get(device_key(d.id.split(":")[0], d.node))
        reservation = state.reservations.get(d.key)
        devices.append(
            {
                "id": d.key,
                "node": d.node or None,
                "node_down_since": nodes_down.get(d.node) if d.node else None,
                "uuid": d.uuid,
                "model": d.model,
                "memory_mib": d.memory_mib,
                "policy": d.policy,
                "capacity": d.capacity,
                "memory_cap_mib": d.memory_cap_mib,
                "utilisation_percent": util.gpu_percent if util else None,
                "memory_used_mib": util.memory_used_mib if util else None,
                "drained_since": drained.get(d.key),
                "reserved_for": reservation.describe() if reservation else None,
                "holders": [
                    {
                        "holder": a.holder,
                        "user": a.user,
                        "since": a.since.isoformat(),
                        **(
                            {"reclaim": reclaimer.status(a, extensions.get(a.holder, 0), now)}
                            if reclaimer
                            else {}
                        ),
                    }
                    for a in state.allocations.values()
                    if d.key in a.device_ids
                ],
            }
        )
    return {
        "devices": devices,
        "queue": [{"holder": h, "request": r, "since": s} for h, r, s in queue],
        **({"rules": rules_report(reclaimer.rules)} if reclaimer else {}),
    }


def rules_report(rules: Rules) -> dict[str, Any]:
    """The reclaiming rules in force, for the admin page and api/devices."""
    return {
        "utilisation": rules.utilisation_rule(),
        "session_max_seconds": rules.session_max_s or None,
        "extension_seconds": rules.extension_s,
        "extensions": rules.extensions,
        "hub_idle_seconds": rules.hub_idle_timeout_s or None,
        "warn_seconds": rules.warn_s,
        "kernel_idle_seconds": rules.kernel_idle_timeout_s or None,
        "kernel_cull_connected": rules.kernel_cull_connected,
    }


class DevicesHandler(AdminHandler):
    async def get(self) -> None:
        self.finish(await self.devices())


class UsageHandler(AdminHandler):
    async def get(self) -> None:
        now = utcnow()
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
            utcnow(),
        )  # fmt: skip
        self.finish({"device": device_id, "reserved_for": reservation and reservation.describe()})


class DrainHandler(AdminHandler):
    async def post(self, device_id: str) -> None:
        self.known_device(device_id)
        drained = self.body().get("drained", True)
        if not isinstance(drained, bool):
            raise web.HTTPError(400, 'send {"drained": true} or {"drained": false}')
        await asyncio.to_thread(
            self.store.set_drained, self.inventory, device_id, drained, self.admin_name, utcnow()
        )
        self.finish({"device": device_id, "drained": drained})


class RevokeHandler(AdminHandler):
    async def post(self, holder: str) -> None:
        allocations = await asyncio.to_thread(self.store.allocations)
        allocation = next((a for a in allocations if a.holder == holder), None)
        if allocation is None:
            raise web.HTTPError(404, f"{holder!r} holds no GPU; see api/devices for holders")
        hub: HubCall = self.settings["hub"]
        code, _ = await hub("DELETE", server_path(holder))
        if code not in (200, 202, 204):
            raise web.HTTPError(
                502, f"the hub refused to stop {holder} ({code}); check the service's role "
                "has the admin:servers scope",
            )  # fmt: skip
        await asyncio.to_thread(
            self.store.record, self.admin_name, "revoke", utcnow(), holder=holder,
            devices=list(allocation.device_ids),
        )  # fmt: skip
        # 202: the hub is stopping it; the spawner releases the devices when it has stopped.
        self.set_status(202 if code == 202 else 200)
        self.finish({"holder": holder, "stopping": code == 202})


class QuotaHandler(AdminHandler):
    async def post(self, subject: str, action: str) -> None:
        if not subject.startswith(("user:", "group:")):
            raise web.HTTPError(400, f"subject {subject!r} must look like user:NAME or group:NAME")
        if action == "reset":
            await asyncio.to_thread(self.store.reset, subject, self.admin_name, utcnow())
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
        await asyncio.to_thread(self.store.topup, subject, float(hours), self.admin_name, utcnow())
        self.finish({"subject": subject, "added_hours": hours})


class UnknownApiPathHandler(AdminHandler):
    """A JSON 404 (not tornado's HTML page) for API paths and methods that do not exist."""

    def prepare(self) -> None:
        super().prepare()
        raise web.HTTPError(
            404, f"no API endpoint {self.request.method} {self.request.path}; see docs/gpus.md"
        )
