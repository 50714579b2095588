"""One read-only route asked of every Swarm node's Docker proxy at once (PROXY_POLICY=node).

The homes' disk usage (`labhub.gpu.homes`) and the GPUs' utilisation
(`labhub.gpu.readings`) live on each node: the hub's side asks each node's proxy (the tasks
of the node proxies' global service, `labhub.swarmtasks`) for its engine's `/info` (which
node it is) and then the route, all within one budget, and the manager for its node list
(through the hub's Docker proxy), so that a node the manager lists but no proxy answered
for is named too. One slow or broken node never hides the others' answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .swarmplacement import node_id_in
from .swarmtasks import NODE_PROXY_PORT, task_addresses

# Seconds the whole fan-out may take, every node at once.
BUDGET = 5.0


T = TypeVar("T")


class NodeReadError(Exception):
    """One node's proxy gave no usable answer; the message says what it answered."""


@dataclass
class NodeAnswers(Generic[T]):
    """What every node's proxy answered at one route, read, by node ID, and what was not."""

    answers: dict[str, T] = field(default_factory=dict)
    # Node ID -> its hostname, as its engine says (a GPU inventory may name nodes so).
    hostnames: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def name_of(self, node: str) -> str:
        """How to show an admin the node: its hostname, unless another node that answered
        has the same one (or it has none), then its ID."""
        hostname = self.hostnames.get(node, "")
        if hostname and list(self.hostnames.values()).count(hostname) == 1:
            return hostname
        return node


@dataclass(frozen=True)
class NodeProxies:
    """The nodes' Docker proxies: the global service ``service``, each task at ``port``."""

    service: str
    port: int = NODE_PROXY_PORT

    async def ask(self, route: str, what: str, parse: Callable[[Any], T]) -> NodeAnswers[T]:
        """``GET route`` of every node's proxy, each JSON answer read by ``parse`` (which
        raises ValueError, TypeError, KeyError or AttributeError for one it cannot read).
        ``what`` names the answer in the problems ("usage": "node X's Docker proxy at A
        gave no usage: ...")."""
        out: NodeAnswers[T] = NodeAnswers()
        try:
            addresses = await asyncio.to_thread(task_addresses, self.service, self.port)
        except OSError as error:
            out.problems.append(
                f"no node's Docker proxy found at tasks.{self.service} ({error}): `make up` "
                f"deploys them (docker service ps {self.service} on the manager)"
            )
            return out
        infos: dict[str, dict[str, Any]] = {}  # proxy address -> its engine's /info
        reads = [self._one(address, route, parse, infos) for address in addresses]
        answers, listed = await asyncio.gather(asyncio.gather(*reads), listed_nodes())
        for address, answer in zip(addresses, answers, strict=True):
            node = node_id_in(infos.get(address, {}))
            if isinstance(answer, NodeReadError) or node is None:
                where = f"node {node}'s" if node else "the node (unknown) whose"
                why = answer if isinstance(answer, NodeReadError) else "its /info names no node"
                out.problems.append(f"{where} Docker proxy at {address} gave no {what}: {why}")
                continue
            out.answers[node] = answer
            out.hostnames[node] = str(infos[address].get("Name") or "")
        seen = {node_id_in(info) for info in infos.values()}
        if isinstance(listed, str):
            out.problems.append(listed)
        else:
            out.problems.extend(
                f"node {node} ({state}): no Docker proxy answered for it, its {what} is not shown"
                for node, state in listed.items()
                if node not in seen
            )
        return out

    async def addresses_by_node(self) -> dict[str, str]:
        """Each node's proxy address, by the node ID its engine's /info gives, of the tasks
        that answered within the budget (a move, a backup, a restore act on these).
        OSError (socket.gaierror) when no task resolves."""
        addresses = await asyncio.to_thread(task_addresses, self.service, self.port)
        deadline = time.monotonic() + BUDGET

        async def node_of(address: str) -> str | None:
            try:
                return node_id_in(await self._info(address, deadline))
            except NodeReadError:
                return None

        nodes = await asyncio.gather(*map(node_of, addresses))
        return {node: address for address, node in zip(addresses, nodes, strict=True) if node}

    async def _one(
        self, address: str, route: str, parse: Callable[[Any], T], infos: dict[str, dict[str, Any]]
    ) -> T | NodeReadError:
        """The answer of the proxy at ``address``, read, or why not, within the budget. Its
        engine's /info goes into ``infos`` as soon as it has it."""
        base = f"http://{address}:{self.port}"
        deadline = time.monotonic() + BUDGET
        try:
            infos[address] = await self._info(address, deadline)
            answer = await get_json(base + route, deadline)
        except NodeReadError as error:
            return error
        try:
            return parse(answer)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            return NodeReadError(f"GET {base + route} answered {answer!r:.200} ({error})")

    async def _info(self, address: str, deadline: float) -> dict[str, Any]:
        """The engine's /info through the proxy at ``address`` (which node it is), {} for
        an answer that is not an object; NodeReadError when there is none by ``deadline``."""
        info = await get_json(f"http://{address}:{self.port}/info", deadline)
        return info if isinstance(info, dict) else {}


async def listed_nodes() -> dict[str, str] | str:
    """The swarm's nodes by ID with their state (ready or down), from the manager through
    the hub's Docker proxy (DOCKER_HOST); or why not."""
    # Imported here: labhub.homemove imports the spawners, which import the GPU service's
    # modules, which import this one.
    from .homemove import MoveRefused, swarm_nodes

    try:
        nodes = await asyncio.wait_for(asyncio.to_thread(swarm_nodes), BUDGET)
    except TimeoutError:
        return f"the swarm's node list did not come within {BUDGET:.0f} s"
    except MoveRefused as error:
        return str(error)
    return {node.id: "ready" if node.ready else "down" for node in nodes}


async def get_json(url: str, deadline: float) -> Any:
    """One GET to a node's Docker proxy, answered by ``deadline`` (time.monotonic): its
    JSON answer, or NodeReadError saying why not."""
    left = max(deadline - time.monotonic(), 0.1)
    try:
        response = await AsyncHTTPClient().fetch(url, connect_timeout=left, request_timeout=left)
        return json.loads(response.body)
    except HTTPClientError as error:
        if error.response is None:  # tornado's 599: a timeout, or closed with no answer
            raise NodeReadError(
                f"GET {url}: no answer ({error.message}; the budget is {BUDGET:g} s)"
            ) from None
        body = error.response.body.decode(errors="replace")
        raise NodeReadError(f"GET {url} answered {error.code}: {body[:300]}") from None
    except (OSError, ValueError) as error:
        raise NodeReadError(f"GET {url}: {error}") from None
