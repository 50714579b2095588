"""Home disk usage and limits (QUOTA_ROOT, docs/admin-guide.md#disk-quotas): a student's own in
``api/me``, everyone's in the admin page's *Homes* table.

Read at each request from the diskquota service's usage socket (``labhub.diskquota.read_usage``,
the volume ``diskquota-usage`` mounted read-only into the hub), which answers every home's
qgroup figures and reads nothing it is sent. Homes are named by volume
(``labhub.contract.volume_name_for``): the table maps them back to users through the hub API.

In Swarm mode (``node_proxies``: NODE_PROXY_SERVICE) each home is on its node, counted by that
node's diskquota service: every node is read at once, through its Docker proxy (the tasks of
that service, found as for home moves), at ``GET labhub.diskquota.QUOTA_USAGE_ROUTE``, which
the proxy answers from its node's usage socket with this stack's homes only. A node whose
proxy does not answer within the budget, or which the manager lists but no proxy answered
for, is named (logged, and on the admin page); the other nodes' homes are shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from labhub.contract import volume_name_for, volume_prefix
from labhub.diskquota import QUOTA_USAGE_ROUTE, DiskQuotaError, Usage, read_usage, usages
from labhub.gpu.hubclient import HubCall
from labhub.swarmplacement import node_id_in
from labhub.swarmtasks import NODE_PROXY_PORT, task_addresses
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

log = logging.getLogger(__name__)

# Seconds one read of the usage socket may take: two btrfs calls, however many homes; in
# Swarm mode, the read of every node at once.
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
        service = self.node_proxies
        try:
            addresses = await asyncio.to_thread(task_addresses, service, self.proxy_port)
        except OSError as error:
            return {}, [
                f"no node's Docker proxy found at tasks.{service} ({error}): `make up` deploys "
                f"them (docker service ps {service} on the manager)"
            ]
        named: dict[str, str] = {}  # proxy address -> its node's ID, as each one says it
        reads = [self.node_usage(address, named) for address in addresses]
        answers, listed = await asyncio.gather(asyncio.gather(*reads), self.listed_nodes())
        found: dict[str, Usage] = {}
        problems = []
        for address, answer in zip(addresses, answers, strict=True):
            if isinstance(answer, dict):
                found.update(answer)
                continue
            node = named.get(address)
            where = f"node {node}'s" if node else "the node (unknown) whose"
            problems.append(f"{where} Docker proxy at {address} gave no usage: {answer}")
        if isinstance(listed, str):
            problems.append(listed)
        else:
            problems.extend(
                f"node {node} ({state}): no Docker proxy answered for it, its homes are not shown"
                for node, state in listed.items()
                if node not in named.values()
            )
        return dict(sorted(found.items())), problems

    async def node_usage(self, address: str, named: dict[str, str]) -> dict[str, Usage] | str:
        """The homes on the node whose proxy is at ``address``, or why not, within the
        budget. Its node ID goes into ``named`` as soon as its engine says it."""
        base = f"http://{address}:{self.proxy_port}"
        deadline = time.monotonic() + USAGE_BUDGET
        try:
            info = await _get_json(f"{base}/info", deadline)
            if node := node_id_in(info if isinstance(info, dict) else {}):
                named[address] = node
            answer = await _get_json(base + QUOTA_USAGE_ROUTE, deadline)
        except DiskQuotaError as error:
            return str(error)
        try:
            return usages(answer)
        except (TypeError, ValueError, AttributeError):
            return f"no usage in its answer {answer!r:.200}"

    async def listed_nodes(self) -> dict[str, str] | str:
        """The swarm's nodes by ID with their state (ready or down), from the manager
        through the hub's Docker proxy (DOCKER_HOST); or why not."""
        # Imported here: labhub.homemove imports the spawners, which import this module.
        from labhub.homemove import MoveRefused, swarm_nodes

        try:
            nodes = await asyncio.wait_for(asyncio.to_thread(swarm_nodes), USAGE_BUDGET)
        except TimeoutError:
            return f"the swarm's node list did not come within {USAGE_BUDGET:.0f} s"
        except MoveRefused as error:
            return str(error)
        return {node.id: "ready" if node.ready else "down" for node in nodes}

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


async def _get_json(url: str, deadline: float) -> Any:
    """One GET to a node's Docker proxy, answered by ``deadline`` (time.monotonic): its
    JSON answer, or DiskQuotaError saying why not."""
    left = max(deadline - time.monotonic(), 0.1)
    try:
        response = await AsyncHTTPClient().fetch(url, connect_timeout=left, request_timeout=left)
        return json.loads(response.body)
    except HTTPClientError as error:
        if error.response is None:  # tornado's 599: a timeout, or closed with no answer
            raise DiskQuotaError(
                f"GET {url}: no answer ({error.message}; the budget is {USAGE_BUDGET:g} s)"
            ) from None
        body = error.response.body.decode(errors="replace")
        raise DiskQuotaError(f"GET {url} answered {error.code}: {body[:300]}") from None
    except (OSError, ValueError) as error:
        raise DiskQuotaError(f"GET {url}: {error}") from None


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
