"""The students' API, ``api/me`` and ``api/me/extend`` (docs/gpus.md, contract-me.md), and
their page, ``/services/gpus/me``.

A student's JupyterLab reads the API with its server's own token (``JUPYTERHUB_API_TOKEN``,
at the URL in ``LABHUB_GPU_STATUS_URL``); the page (the hub's *Services* menu, *gpus*) with
the browser's login. Each answer is about the logged-in user only: the user's name comes
from the hub, never from the request.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from labhub.gpu.allocator import utcnow
from labhub.gpu.api import UserHandler
from labhub.gpu.culler import Reclaimer
from labhub.gpu.homes import Homes
from labhub.gpu.hubclient import HubCall
from labhub.gpu.inventory import Inventory
from labhub.gpu.page import TEMPLATES
from labhub.gpu.profiles import Profile
from labhub.gpu.quota import QuotaPolicy
from labhub.gpu.scheduler import Allocation, Holder
from labhub.gpu.store import ExtensionRefused, Store
from tornado import web


class MeHandler(UserHandler):
    """Shared by both endpoints: the user's GPU servers as the contract describes them."""

    @property
    def reclaimer(self) -> Reclaimer:
        reclaimer: Reclaimer = self.settings["gpu_reclaimer"]
        return reclaimer

    @property
    def store(self) -> Store:
        store: Store = self.settings["gpu_store"]
        return store

    @property
    def user_name(self) -> str:
        return str(self.current_user["name"])

    async def hub_model(self) -> dict[str, Any]:
        """The user's hub model (servers with their options, groups), with the service token."""
        hub: HubCall = self.settings["hub"]
        code, model = await hub("GET", f"users/{quote(self.user_name)}")
        return model if code == 200 and isinstance(model, dict) else {}

    def server_entry(
        self, allocation: Allocation, used: int, options: dict[str, Any]
    ) -> dict[str, Any]:
        inventory: Inventory = self.settings["gpu_inventory"]
        profiles: tuple[Profile, ...] = self.settings["gpu_profiles"]
        slug = options.get("profile")
        profile = next((p for p in profiles if p.slug == slug), None)
        models = {d.key: d.model for d in inventory}
        return {
            "profile": profile.slug if profile else slug,
            "display_name": profile.display_name if profile else None,
            "devices": [
                {
                    "id": device,
                    "model": models.get(device, ""),
                    "shared": allocation.shared,
                    "memory_limit_mib": allocation.memory_cap_mib,
                }
                for device in allocation.device_ids
            ],
            **self.reclaimer.status(allocation, used, utcnow()),
        }

    async def servers(self, model: dict[str, Any]) -> dict[str, dict[str, Any]]:
        allocations = await asyncio.to_thread(self.store.allocations)
        used = await asyncio.to_thread(self.store.extensions_used)
        hub_servers = model.get("servers") or {}
        out = {}
        for allocation in allocations:
            user, _, server = allocation.holder.partition("/")
            if user != self.user_name or not allocation.device_ids:
                continue
            options = (hub_servers.get(server) or {}).get("user_options") or {}
            out[server] = self.server_entry(allocation, used.get(allocation.holder, 0), options)
        return out

    async def hours_left(self, model: dict[str, Any]) -> float | None:
        policy: QuotaPolicy = self.settings["gpu_quota"]
        groups = frozenset(model.get("groups") or ())
        lines = await asyncio.to_thread(
            self.store.quota_lines, policy, self.user_name, groups, utcnow()
        )
        return round(min(line.left for line in lines), 3) if lines else None

    async def home(self) -> dict[str, int | None] | None:
        """The user's home disk usage and limit; None without QUOTA_ROOT or before it exists."""
        homes: Homes | None = self.settings["homes"]
        return await homes.of(self.user_name) if homes else None

    async def get(self) -> None:
        model = await self.hub_model()
        self.finish(
            {
                "user": self.user_name,
                "gpu_hours_left": await self.hours_left(model),
                "utilisation_rule": self.reclaimer.rules.utilisation_rule(),
                "servers": await self.servers(model),
                "home": await self.home(),
            }
        )


class MePageHandler(MeHandler):
    """The same as ``api/me``, as a page with an *extend* button per session."""

    async def get(self) -> None:
        model = await self.hub_model()
        page = TEMPLATES.get_template("me.html").render(
            rule=self.reclaimer.rules.utilisation_rule(),
            hours_left=await self.hours_left(model),
            servers=await self.servers(model),
            api=self.settings["api_prefix"],
            xsrf=self.xsrf_token.decode(),
            static_url=self.static_url,
        )
        self.finish(page)


class ExtendHandler(MeHandler):
    """``POST api/me/extend {"server": ""}``: one more GPU_SESSION_EXTENSION, if any is left."""

    async def post(self) -> None:
        server = self.body().get("server", "")
        if not isinstance(server, str):
            raise web.HTTPError(400, 'send {"server": NAME}, "" for the default server')
        rules = self.reclaimer.rules
        holder = Holder(user=self.user_name, server=server).key
        if not rules.session_max_s:
            self.refuse(409, "GPU sessions have no length limit here: nothing to extend")
            return
        try:
            await asyncio.to_thread(
                self.store.extend, holder, rules.extensions, self.user_name, utcnow()
            )
        except LookupError:
            self.refuse(404, f"server {server!r} holds no GPU")
            return
        except ExtensionRefused as refused:
            self.refuse(409, str(refused))
            return
        self.finish((await self.servers(await self.hub_model()))[server])

    def refuse(self, status: int, why: str) -> None:
        self.set_status(status)
        self.finish({"error": why})
