"""The admin service's HTML page (``/services/gpus/``) and the GPU templates.

The page is the autoescaped template ``templates/gpus.html`` with no inline script or style;
its buttons call the JSON API (:mod:`labhub.gpu.api`) from ``static/gpus.js``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from jupyterhub.utils import url_path_join
from labhub.diskquota import DiskQuotaError
from labhub.gpu.allocator import utcnow
from labhub.gpu.api import AdminHandler
from labhub.gpu.homes import Homes

# Autoescaped, as JupyterHub's own pages: the admin page and the spawn page's profile choice.
TEMPLATES = Environment(
    loader=PackageLoader("labhub.gpu", "templates"), autoescape=select_autoescape(["html"])
)


class PageHandler(AdminHandler):
    """The admin page; anyone else who opens the service (the hub's *Services* menu) is sent
    to their own GPU session page, ``me``."""

    def prepare(self) -> None:
        user = self.current_user
        if user is not None and not user.get("admin"):
            self.redirect(url_path_join(self.request.path, "me"))
            return
        super().prepare()

    async def get(self) -> None:
        report = await self.devices()
        usage = await asyncio.to_thread(self.store.usage, utcnow())
        audit = await asyncio.to_thread(self.store.audit, 50)
        homes, homes_error = await self.homes()
        page = TEMPLATES.get_template("gpus.html").render(
            devices=report["devices"],
            queue=report["queue"],
            rules=report["rules"],
            usage=sorted(usage.items()),
            audit=audit,
            quotas=self.settings["homes"] is not None,
            homes=homes,
            homes_error=homes_error,
            api=self.settings["api_prefix"],
            xsrf=self.xsrf_token.decode(),
            static_url=self.static_url,
        )
        self.finish(page)

    async def homes(self) -> tuple[list[dict[str, Any]], str | None]:
        """The *Homes* table's rows, and why some or all could not be read (said on the
        page; in Swarm mode, which nodes)."""
        homes: Homes | None = self.settings["homes"]
        if homes is None:
            return [], None
        try:
            rows, problems = await homes.table(self.settings["hub"])
        except DiskQuotaError as error:
            return [], str(error)
        return rows, "; ".join(problems) or None
