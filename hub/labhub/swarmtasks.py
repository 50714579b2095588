"""The tasks of a Swarm service, found through Swarm's DNS: `tasks.<service>` resolves, on a
network the service is on, to the address of each of its running tasks (dnsrr endpoints).
For a global service, one task per node: how the hub finds the nodes' Docker proxies
(labhub.homemove) and the exporter the nodes' metrics proxies (labhub.containermetrics)."""

from __future__ import annotations

import socket

# The port every node proxy listens on (labhub.dockerproxy's LISTEN_PORT default).
NODE_PROXY_PORT = 2375


def task_addresses(service: str, port: int) -> list[str]:
    """Every task's IPv4 address, sorted; socket.gaierror when none resolves (the service
    is not deployed, or this container is not on its network). Blocking: a resolver call."""
    found = socket.getaddrinfo(f"tasks.{service}", port, socket.AF_INET, socket.SOCK_STREAM)
    return sorted({str(entry[4][0]) for entry in found})
