"""The GPU admin service, wired: the page, the JSON API, the culler, one process.

Run by the hub as a managed service (hub/jupyterhub_config.py)::

    c.JupyterHub.services.append({
        "name": "gpus",
        "url": "http://hub:10101",
        "command": [sys.executable, "-m", "labhub.gpu.service", "--bind=0.0.0.0"],
        "environment": {...the settings' variables...},
        "oauth_no_confirm": True,
    })
    c.JupyterHub.load_roles.append({
        "name": "gpus-service",
        "services": ["gpus"],
        "scopes": ["admin:servers", "list:users", "read:users:name", "read:users:activity",
                   "read:users:groups"],
    })
    # every user may pass the hub's OAuth (api/me); the admin pages check admin themselves.

It builds the same ``Settings`` as the hub from the same variables, and the same
:class:`~labhub.gpu.allocator.GpuAllocator` (inventory and database) with
``load_allocator``. Every ``GPU_CULL_EVERY`` seconds it applies the reclaiming rules
(:mod:`labhub.gpu.reclaim`: no GPU utilisation, session length, hub inactivity) and stops
the holders whose time is up (:mod:`labhub.gpu.culler`). The hub sets
``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_SERVICE_PREFIX`` and
``JUPYTERHUB_SERVICE_URL``.

Students (any user; :mod:`labhub.gpu.me`), with their browser login or their server's
token:

- ``GET  api/me``         the user's GPU servers: devices, idle-since, when each rule stops
  it, extensions left, the warning to show; GPU-hours left; the utilisation rule.
- ``POST api/me/extend``  ``{"server": ""}``: one more GPU_SESSION_EXTENSION (409 when none).
- ``GET  me``             the same as a page, with an *extend* button; the service's root
  sends anyone not an admin there.

Admins only (every other route answers 403 to anyone else; :mod:`labhub.gpu.api`):

- ``GET  api/devices``   devices, model, memory, utilisation (NVML), holders and since when,
  reservation, drain flag; plus the queue.
- ``GET  api/usage``     GPU-hours used this week per user and group, quotas left.
- ``GET  api/audit``     the newest audit entries.
- ``POST api/devices/{id}/reserve``  ``{"user": "ada"}``, ``{"group": "nlp"}`` or ``{}`` (clear).
- ``POST api/devices/{id}/drain``    ``{"drained": true|false}``.
- ``POST api/holders/{holder}/revoke`` stops the holder's server through the hub REST API.
- ``POST api/quota/{subject}/topup`` ``{"hours": 5}``; ``POST api/quota/{subject}/reset``.

``GET metrics``: Prometheus text (:mod:`labhub.gpu.metrics`) for a bearer of
PROMETHEUS_API_TOKEN, outside the hub's OAuth (Prometheus has no browser).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth
from jupyterhub.utils import url_path_join
from labhub.diskquota import USAGE_SOCKET
from labhub.gpu.allocator import load_allocator
from labhub.gpu.api import (
    AuditHandler,
    DevicesHandler,
    DrainHandler,
    OAuthCallbackHandler,
    QuotaHandler,
    ReserveHandler,
    RevokeHandler,
    StaticHandler,
    UnknownApiPathHandler,
    UsageHandler,
)
from labhub.gpu.culler import Reclaimer
from labhub.gpu.homes import Homes
from labhub.gpu.hubclient import hub_api_caller
from labhub.gpu.inventory import Inventory, read_utilisation
from labhub.gpu.me import ExtendHandler, MeHandler, MePageHandler
from labhub.gpu.metrics import MetricsHandler
from labhub.gpu.page import PageHandler
from labhub.gpu.profiles import Profile
from labhub.gpu.quota import QuotaPolicy
from labhub.gpu.readings import GpuReadings
from labhub.gpu.reclaim import NO_RULES, Rules
from labhub.gpu.store import Store
from labhub.settings import Settings, SettingsError
from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback

STATIC_DIR = Path(__file__).parent / "static"


def make_app(
    store: Store,
    inventory: Inventory,
    hub_auth: Any,
    prefix: str,
    hub_api_url: str,
    hub_api_token: str,
    quota_policy: QuotaPolicy | None = None,
    metrics_token: str | None = None,
    rules: Rules | None = None,
    profiles: tuple[Profile, ...] = (),
    homes: Homes | None = None,
    readings: GpuReadings | None = None,
) -> web.Application:
    """The tornado application; ``prefix`` is JUPYTERHUB_SERVICE_PREFIX (``/services/gpus/``).

    ``rules``: the reclaiming rules (:mod:`labhub.gpu.reclaim`), none in force if omitted;
    the application's ``gpu_reclaimer`` applies them. ``homes``: where the homes' disk usage
    is read (QUOTA_ROOT), for api/me and the page's *Homes* table; none without quotas.
    ``readings``: where the GPUs' utilisation is read (here, by default).
    """
    api = url_path_join(prefix, "api/")
    hub = hub_api_caller(hub_api_url, hub_api_token)
    rules = rules or NO_RULES
    readings = readings or GpuReadings()
    return web.Application(
        [
            (prefix, PageHandler),
            (url_path_join(prefix, "me"), MePageHandler),
            (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
            (api + "me", MeHandler),
            (api + "me/extend", ExtendHandler),
            (api + "devices", DevicesHandler),
            (api + "usage", UsageHandler),
            (api + "audit", AuditHandler),
            (api + r"devices/([^/]+)/reserve", ReserveHandler),
            (api + r"devices/([^/]+)/drain", DrainHandler),
            (api + r"holders/(.+)/revoke", RevokeHandler),
            (api + r"quota/([^/]+)/(topup|reset)", QuotaHandler),
            (api + ".*", UnknownApiPathHandler),
            (url_path_join(prefix, "metrics"), MetricsHandler),
        ],
        gpu_store=store,
        gpu_inventory=inventory,
        gpu_quota=quota_policy or QuotaPolicy(),
        metrics_token=metrics_token,
        gpu_profiles=profiles,
        homes=homes,
        gpu_readings=readings,
        gpu_reclaimer=Reclaimer(store, hub, rules, lambda: readings.read(inventory)),
        hub_auth=hub_auth,
        api_prefix=api,
        hub=hub,
        cookie_secret=os.urandom(32),
        xsrf_cookies=True,
        static_path=str(STATIC_DIR),
        static_url_prefix=url_path_join(prefix, "static/"),
        static_handler_class=StaticHandler,
    )


def rules_from(settings: Settings, nvml: bool) -> Rules:
    """The reclaiming rules the settings ask for; ``nvml``: whether utilisation is readable
    (nvidia-smi answered at start-up), without which the utilisation rule is off."""
    return Rules(
        idle_timeout_s=settings.gpu_utilisation_idle_timeout,
        warn_s=settings.gpu_utilisation_warn,
        session_max_s=settings.gpu_session_max,
        extension_s=settings.gpu_session_extension,
        extensions=settings.gpu_session_extensions,
        hub_idle_timeout_s=settings.gpu_idle_timeout,
        nvml=nvml,
        kernel_idle_timeout_s=settings.kernel_idle_timeout,
        kernel_cull_connected=settings.kernel_cull_connected,
    )


def main() -> None:
    """Entry point for ``python -m labhub.gpu.service [--bind=ADDRESS]`` under the hub."""
    parser = argparse.ArgumentParser(prog="python -m labhub.gpu.service")
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    args = parser.parse_args()
    try:
        settings = Settings.from_env(os.environ)
        allocator = load_allocator(settings)
    except SettingsError as error:
        print(error, file=sys.stderr, flush=True)
        sys.exit(2)
    token, hub_api_url = os.environ["JUPYTERHUB_API_TOKEN"], os.environ["JUPYTERHUB_API_URL"]
    hub_auth = HubOAuth(api_token=token, cache_max_age=60)
    # In Swarm mode each home's usage and each GPU's utilisation are read on its node,
    # through the nodes' Docker proxies; the utilisation rule is on, a node not read counts
    # as busy (labhub.gpu.readings).
    node_proxies = (settings.node_proxy_service or "") if settings.engine == "swarm" else ""
    readings = GpuReadings(node_proxies)
    rules = rules_from(settings, nvml=bool(node_proxies) or bool(read_utilisation()))
    homes = (
        Homes(USAGE_SOCKET, settings.docker_network, node_proxies)
        if settings.disk_quotas.root
        else None
    )
    app = make_app(
        allocator.store, allocator.inventory, hub_auth,
        os.environ["JUPYTERHUB_SERVICE_PREFIX"], hub_api_url, token,
        allocator.quota, settings.prometheus_api_token, rules, allocator.profiles, homes,
        readings,
    )  # fmt: skip
    port = int(os.environ["JUPYTERHUB_SERVICE_URL"].rsplit(":", 1)[1].split("/")[0])
    app.listen(port, address=args.bind)
    print(f"[gpus] admin service on port {port}, {len(allocator.inventory)} device(s)", flush=True)
    print(f"[gpus] reclaiming: utilisation rule {rules.utilisation_rule()}", flush=True)
    reclaimer: Reclaimer = app.settings["gpu_reclaimer"]

    async def cull() -> None:
        stopped = await reclaimer.run(allocator.clock())
        for holder, reason in stopped:
            print(f"[gpus] stopped GPU holder {holder}: {reason}", flush=True)

    PeriodicCallback(cull, settings.gpu_cull_every * 1000).start()
    IOLoop.current().start()


if __name__ == "__main__":
    main()
