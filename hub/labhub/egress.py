"""Swarm mode's way out for users' servers: the egress proxy's rules, from settings. Pure.

Each user's server sits on an internal overlay network of its own (labhub.swarmspawner),
with no route anywhere. The egress proxy (Squid, images/egress) is joined to each of
those networks like the hub, and has its own way out on the manager; users' servers get
HTTP_PROXY/HTTPS_PROXY pointing at it (`proxy_environment`), so pip, conda, curl and
requests go through it. This module writes its rules, with netguard's meaning:

- never, whatever the settings say: the nodes' addresses, the Swarm's overlay ranges
  (every user's server, the hub), the manager's own Docker networks, loopback and the
  link-local range (169.254.169.254, the cloud metadata address);
- USER_EGRESS_ALLOW: the listed private destinations;
- USER_LAN_ACCESS: every private range (netguard.PRIVATE_RANGES);
- USER_INTERNET: every other (public) destination.

Only web ports are forwarded (80, 443 and the unprivileged ones), so the proxy is no
relay for mail or SSH, and CONNECT (TLS) only to them too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .netguard import PRIVATE_RANGES

EGRESS_PORT = 3128
# Destinations forwarded at all: HTTP, HTTPS and the unprivileged ports package mirrors
# and devpi-style servers use; never SMTP, SSH or the like.
WEB_PORTS = ("80", "443", "1025-65535")
# The IPv6 counterparts of the private ranges (unique local, link-local).
PRIVATE_V6 = ("fc00::/7", "fe80::/10")
# Never a destination: loopback, "this network" and link-local (the metadata address).
ALWAYS_DENIED = tuple(
    ipaddress.IPv4Network(net) for net in ("127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16")
)


@dataclass(frozen=True)
class EgressRules:
    """What the egress proxy lets users' servers reach."""

    internet: bool
    lan_access: bool
    allow: tuple[ipaddress.IPv4Network, ...]
    # The nodes, the overlay ranges, the manager's Docker networks: never reached.
    never: tuple[ipaddress.IPv4Network, ...]


def squid_conf(rules: EgressRules) -> str:
    """squid.conf for the egress proxy: the first http_access line that matches decides."""
    # Squid ignores (with a warning) a network inside another of the same list.
    never = " ".join(str(n) for n in ipaddress.collapse_addresses((*ALWAYS_DENIED, *rules.never)))
    allowed = " ".join(str(n) for n in ipaddress.collapse_addresses(rules.allow))
    lines = [
        "# Written by `labhub egress-conf` from USER_INTERNET, USER_LAN_ACCESS and",
        "# USER_EGRESS_ALLOW (labhub.egress); do not edit, run make up again.",
        f"http_port {EGRESS_PORT}",
        "cache deny all",
        "pid_filename /run/squid/squid.pid",
        "access_log stdio:/dev/stdout",
        "cache_log stdio:/dev/stderr",
        "logfile_rotate 0",
        "visible_hostname labhub-egress",
        # A user's server's address is nobody's business outside.
        "forwarded_for delete",
        f"acl web_ports port {' '.join(WEB_PORTS)}",
        f"acl never dst {never}",
        f"acl lan dst {' '.join(str(n) for n in PRIVATE_RANGES)} {' '.join(PRIVATE_V6)}",
        "http_access deny !web_ports",
        # Squid's own cache manager pages, and its host (IPv6 too), are no destination.
        "http_access deny manager",
        "http_access deny to_localhost",
        "http_access deny to_linklocal",
        "http_access deny never",
    ]
    if rules.allow:
        lines += [
            f"acl listed dst {allowed}",
            "http_access allow listed",
        ]
    lines.append(f"http_access {'allow' if rules.lan_access else 'deny'} lan")
    lines.append(f"http_access {'allow' if rules.internet else 'deny'} all")
    return "\n".join(lines) + "\n"


def proxy_environment(proxy: str, direct: Sequence[str]) -> dict[str, str]:
    """The variables that send a server's pip, conda, curl and requests through the
    egress proxy `proxy` (a container name), both cases (tools read one or the other),
    with `direct` (the hub, CHP: reached on the user's network) and loopback not proxied."""
    url = f"http://{proxy}:{EGRESS_PORT}"
    no_proxy = ",".join(("localhost", "127.0.0.1", *direct))
    env: dict[str, str] = {}
    for name, value in (("http_proxy", url), ("https_proxy", url), ("no_proxy", no_proxy)):
        env[name] = env[name.upper()] = value
    return env


def networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network, ...]:
    """Addresses and networks as given on the command line (IPv6 ones are left out: the
    users' networks have no IPv6)."""
    found = []
    for value in values:
        network = ipaddress.ip_network(value.strip(), strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            found.append(network)
    return tuple(found)
