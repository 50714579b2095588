"""Home disk usage and limits (QUOTA_ROOT, docs/admin-guide.md#disk-quotas): a student's own in
``api/me``, everyone's in the admin page's *Homes* table.

Read at each request from the diskquota service's usage socket (``labhub.diskquota.read_usage``,
the volume ``diskquota-usage`` mounted read-only into the hub), which answers every home's
qgroup figures and reads nothing it is sent. Homes are named by volume
(``labhub.contract.volume_name_for``): the table maps them back to users through the hub API.

In Swarm mode (``node_proxies``: NODE_PROXY_SERVICE) each home is on its node, counted by that
node's diskquota service: every node is read at once, through its Docker proxy
(``labhub.nodereads``), at ``GET labhub.diskquota.QUOTA_USAGE_ROUTE``, which
the proxy answers from its node's usage socket with this stack's homes only. A node whose
proxy does not answer within the budget, or which the manager lists but no proxy answered
for, is named (logged, and on the admin page); the other nodes' homes are shown.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from labhub.contract import volume_name_for, volume_prefix
from labhub.diskquota import QUOTA_USAGE_ROUTE, DiskQuotaError, Usage, read_usage, usages
from labhub.gpu.hubclient import HubCall
from labhub.nodereads import NodeProxies
from labhub.swarmtasks import NODE_PROXY_PORT

log = logging.getLogger(__name__)

# Seconds one read of the usage socket may take: two btrfs calls, however many homes (in
# Swarm mode, labhub.nodereads.BUDGET for every node at once).
USAGE_BUDGET = 5.0
# The hub API's largest page of users (JupyterHub's api_page_max_limit default).
USERS_PAGE = 200


@dataclass(frozen=True)
class Homes:
    """Where the homes' usage is read (``socket``; in Swarm mode the nodes' Docker proxies'
    service ``node_proxies``, at ``proxy_port``) and how a stack names them (``network``)."""

    socket: str
    network: str
    node_proxies: str = ""
    proxy_port: int = NODE_PROXY_PORT

    async def usage(self) -> tuple[dict[str, Usage], list[str]]:
        """Every home's usage by volume name, and what could not be read, saying why (in
        Swarm mode: which node)."""
        if self.node_proxies:
            return await self.nodes_usage()
        try:
            return await asyncio.wait_for(read_usage(self.socket), USAGE_BUDGET), []
        except TimeoutError:
            return {}, [
                f"the diskquota service did not answer at {self.socket} within "
                f"{USAGE_BUDGET:.0f} s: see `make logs SERVICE=diskquota`"
            ]
        except DiskQuotaError as error:
            return {}, [str(error)]

    async def nodes_usage(self) -> tuple[dict[str, Usage], list[str]]:
        """Swarm mode: every node's homes, merged, and each node not read, by name."""
        proxies = NodeProxies(self.node_proxies, self.proxy_port)
        read = await proxies.ask(QUOTA_USAGE_ROUTE, "usage", usages)
        found = {
            volume: usage for homes in read.answers.values() for volume, usage in homes.items()
        }
        return dict(sorted(found.items())), read.problems

    async def of(self, user: str) -> dict[str, int | None] | None:
        """``user``'s home for api/me: {"used_bytes", "limit_bytes" (null: no limit)}; None
        before their first server made it, or when its node does not answer (logged)."""
        usage, problems = await self.usage()
        for problem in problems:
            log.warning("home usage of %s not read: %s", user, problem)
        found = usage.get(volume_name_for(user, self.network))
        return home_json(found) if found else None

    async def table(self, hub: HubCall) -> tuple[list[dict[str, Any]], list[str]]:
        """The admin page's rows, most used first: user (the volume's name for a home whose
        user is gone), bytes used, limit (None: none) and percent of it used. This stack's
        homes only, should another stack share QUOTA_ROOT. And what could not be read
        (logged), which the page says."""
        usage, problems = await self.usage()
        for problem in problems:
            log.warning("home usage not read: %s", problem)
        if not usage:
            return [], problems
        users = {volume_name_for(name, self.network): name for name in await user_names(hub)}
        rows = [
            {
                "user": users.get(volume, volume),
                **home_json(found),
                "percent": round(100 * found.used / found.limit, 1) if found.limit else None,
            }
            for volume, found in usage.items()
            if volume.startswith(volume_prefix(self.network))
        ]
        return sorted(rows, key=lambda row: (-row["used_bytes"], row["user"])), problems


def home_json(usage: Usage) -> dict[str, int | None]:
    return {"used_bytes": usage.used, "limit_bytes": usage.limit or None}


async def user_names(hub: HubCall) -> list[str]:
    """Every hub user's name, page by page (the service's role has ``list:users``)."""
    names: list[str] = []
    while True:
        code, page = await hub("GET", f"users?offset={len(names)}&limit={USERS_PAGE}")
        if code != 200 or not isinstance(page, list):
            raise DiskQuotaError(f"the hub API answered {code} to the list of users")
        names.extend(str(user["name"]) for user in page)
        if len(page) < USERS_PAGE:
            return names
