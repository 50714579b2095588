"""Which Swarm node runs a user's server: pure policy, no Docker inside.

A user's home is a named volume on one node (a Swarm has no shared storage here), so
their server must run there. The first spawn picks the usable node running the fewest
lab servers; from then on that node is the user's home and every spawn is pinned to it.
A home on a node that is down, drained or gone is an error naming the node, never a
silent fresh home elsewhere. A node an admin labels `labhub.retiring=true` takes no new
home but keeps serving the homes it has until they are moved: it stays active, so its
Docker proxy (a global service's task, which a drained node does not run) still answers
for home moves and first spawns. `labhub.swarmspawner` does the I/O around these functions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .contract import OWNER_LABEL

# The node label an admin sets to empty a node before taking it out (docs/scale-out.md):
# `docker node update --label-add labhub.retiring=true <node>`.
RETIRING_LABEL = "labhub.retiring"
# The one constraint a lab server's service carries (`service_spec` writes it).
_PIN = re.compile(r"node\.id==(?P<node>[A-Za-z0-9]{1,64})")


class NoNodeForServer(Exception):
    """No node may run this server; the message names the node and what an admin can do."""


@dataclass(frozen=True)
class SwarmNode:
    """What placement needs of a node: its ID, whether it is up and takes new tasks, and
    whether it is being emptied (RETIRING_LABEL)."""

    id: str
    ready: bool
    active: bool
    retiring: bool = False

    @property
    def usable(self) -> bool:
        return self.ready and self.active

    @property
    def takes_new_homes(self) -> bool:
        return self.usable and not self.retiring


def nodes_from_api(listing: Iterable[Mapping[str, Any]]) -> list[SwarmNode]:
    """The nodes of `GET /nodes` (docker-py `nodes()`), sorted by ID."""
    nodes = [
        SwarmNode(
            id=str(node["ID"]),
            ready=(node.get("Status") or {}).get("State") == "ready",
            active=(node.get("Spec") or {}).get("Availability") == "active",
            retiring=((node.get("Spec") or {}).get("Labels") or {}).get(RETIRING_LABEL) == "true",
        )
        for node in listing
    ]
    return sorted(nodes, key=lambda node: node.id)


def node_id_in(info: Mapping[str, Any]) -> str | None:
    """The Swarm node ID in an engine's `GET /info` answer; None if it gives none."""
    swarm = info.get("Swarm")
    node = swarm.get("NodeID") if isinstance(swarm, Mapping) else None
    return node if isinstance(node, str) and node else None


def pin_constraint(node_id: str) -> str:
    """The placement constraint that pins a service's task to one node."""
    if not _PIN.fullmatch(f"node.id=={node_id}"):
        raise ValueError(f"{node_id!r} is not a Swarm node ID")
    return f"node.id=={node_id}"


def pinned_node(constraints: Sequence[str]) -> str | None:
    """The node a service is pinned to by `pin_constraint`, or None."""
    for constraint in constraints:
        if match := _PIN.fullmatch(constraint):
            return match["node"]
    return None


def servers_per_node(services: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """How many lab servers each node runs, from `GET /services` (the lab's services only)."""
    counts: Counter[str] = Counter()
    for service in services:
        template = (service.get("Spec") or {}).get("TaskTemplate") or {}
        node = pinned_node((template.get("Placement") or {}).get("Constraints") or [])
        if node is not None:
            counts[node] += 1
    return counts


def users_node(services: Iterable[Mapping[str, Any]], user: str) -> str | None:
    """The node a service of `user` is pinned to, or None: every server of a user runs
    on their one home node, and two first spawns at once must not split it."""
    for service in services:
        spec = service.get("Spec") or {}
        if (spec.get("Labels") or {}).get(OWNER_LABEL) == user:
            template = spec.get("TaskTemplate") or {}
            node = pinned_node((template.get("Placement") or {}).get("Constraints") or [])
            if node is not None:
                return node
    return None


def node_for(home: str | None, nodes: Sequence[SwarmNode], load: Mapping[str, int]) -> str:
    """The node a user's server runs on: their home node (a retiring one too, until the
    home is moved), or for a first spawn the usable node not retiring with the fewest
    servers (ties: the lowest ID, so the choice is reproducible)."""
    if home:
        found = next((node for node in nodes if node.id == home), None)
        if found is None:
            raise NoNodeForServer(
                f"the home volume is on node {home}, which has left the swarm: "
                "rejoin it (docker swarm join), or restore the home from a backup onto another "
                "node (make restore BACKUP=... ONLY_USERS=<user> NODE=<node ID>)"
            )
        if not found.ready:
            raise NoNodeForServer(
                f"the home volume is on node {home}, which is down: start its Docker engine"
            )
        if not found.active:
            raise NoNodeForServer(
                f"the home volume is on node {home}, which is drained or paused: "
                f"`docker node update --availability active {home}` to spawn there again"
            )
        return home
    usable = [node for node in nodes if node.takes_new_homes]
    if not usable:
        raise NoNodeForServer(
            "no node of the swarm is ready, active and not retiring: check `docker node ls` "
            f"on the manager, and remove the {RETIRING_LABEL} label from a node that should "
            f"take new users (docker node update --label-rm {RETIRING_LABEL} <node>)"
        )
    return min(usable, key=lambda node: (load.get(node.id, 0), node.id)).id


def existing_home(
    nodes: Sequence[SwarmNode], answered: Collection[str], holding: Collection[str]
) -> str | None:
    """Where a user with no recorded home node already has a home volume (made before the
    lab moved to Swarm mode, or written back there): the one node holding it, asked through
    the nodes' proxies (`answered`); None: none of the ready nodes has one. A node that is
    down is not asked (its users are told when their home is recorded there)."""
    if len(holding) > 1:
        raise NoNodeForServer(
            f"the home volume is on nodes {', '.join(sorted(holding))}: keep the one in use "
            "and remove the other (docker volume rm on that node), or move one "
            "(make move-home)"
        )
    if holding:
        return next(iter(holding))
    silent = sorted(node.id for node in nodes if node.ready and node.id not in answered)
    if silent:
        raise NoNodeForServer(
            f"cannot tell whether node {', '.join(silent)} holds the home volume: its Docker "
            "proxy does not answer (docker service ps <DOCKER_NETWORK>-node-proxy on the "
            "manager; make up starts them)"
        )
    return None


class NodeNamesError(Exception):
    """An inventory node name that names no node, or several; the message says which."""


def gpu_node_ids(names: Iterable[str], listing: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Inventory node name -> Swarm node ID, from `GET /nodes`; a name matches a node's ID
    or its hostname. A name not in the swarm (the node left) is left out; a hostname
    several nodes share is refused (name those nodes by ID in the inventory)."""
    nodes = list(listing)
    out = {}
    for name in names:
        ids = sorted(
            {
                str(node["ID"])
                for node in nodes
                if name in (node["ID"], (node.get("Description") or {}).get("Hostname"))
            }
        )
        if len(ids) > 1:
            raise NodeNamesError(
                f"GPU_INVENTORY node {name!r} is the hostname of nodes {', '.join(ids)}: "
                "name each of them by its node ID in the inventory"
            )
        if ids:
            out[name] = ids[0]
    return out
