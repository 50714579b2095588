"""The GPUs' live utilisation, for the admin page, `api/devices`, the metrics and the
utilisation rule of GPU reclaiming (`labhub.gpu.culler`).

On one host nvidia-smi runs where the GPU service runs, in the hub's container. In Swarm
mode (``node_proxies``: NODE_PROXY_SERVICE) each node's GPUs are read on that node: every
node's Docker proxy, which runs with all of its node's GPUs visible, answers
``GET NODE_UTILISATION_ROUTE`` with nvidia-smi's figures there (`labhub.nodereads`, all
nodes at once within one budget). A node not read is logged and its devices have no
figures: the utilisation rule counts a missing reading as busy, so nobody is stopped for
want of data.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from labhub.gpu.inventory import (
    NODE_UTILISATION_ROUTE,
    Inventory,
    Utilisation,
    device_key,
    nodes_of,
    read_utilisation,
    utilisation_from_json,
)
from labhub.nodereads import NodeProxies
from labhub.swarmplacement import NodeNamesError, gpu_node_ids
from labhub.swarmtasks import NODE_PROXY_PORT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReadings:
    """Where utilisation is read: here, or (Swarm) through the nodes' Docker proxies."""

    node_proxies: str = ""
    proxy_port: int = NODE_PROXY_PORT

    async def read(self, inventory: Inventory) -> dict[str, Utilisation]:
        """Each whole GPU's figures by its booking key (`device_key(index, node)`, the node
        as the inventory names it: a MIG instance is read through its GPU); none for a GPU
        whose node was not read."""
        if not self.node_proxies:
            return await asyncio.to_thread(read_utilisation)
        read = await NodeProxies(self.node_proxies, self.proxy_port).ask(
            NODE_UTILISATION_ROUTE, "GPU utilisation", utilisation_from_json
        )
        problems = read.problems
        listing = [
            {"ID": node, "Description": {"Hostname": hostname}}
            for node, hostname in read.hostnames.items()
        ]
        ids: dict[str, str] = {}
        try:
            ids = gpu_node_ids(nodes_of(inventory) - {""}, listing)
        except NodeNamesError as error:
            problems.append(str(error))
        found: dict[str, Utilisation] = {}
        for name, node in sorted(ids.items()):
            figures = read.answers.get(node, {})
            found.update({device_key(index, name): u for index, u in figures.items()})
        for problem in problems:
            log.warning("GPU utilisation not read: %s", problem)
        return found
