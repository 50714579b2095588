"""Network isolation of user containers: the host firewall rules, from settings. Pure.

All user containers, the hub and configurable-http-proxy share one Docker bridge
(`USERS_BRIDGE`). With `bridge-nf-call-iptables=1` a packet between two containers on
that bridge crosses the host's iptables FORWARD chain (and so Docker's DOCKER-USER), a
packet to another network or the internet too, and a packet to one of the host's own
addresses crosses INPUT. Two chains of ours, jumped from DOCKER-USER and from INPUT for
packets coming *in from* the users' bridge, decide:

- answers to allowed connections pass (conntrack ESTABLISHED/RELATED);
- the hub and the proxy may open connections anywhere (to users' servers, to the
  login provider);
- a user container may open connections to the hub's API (`HUB_USERS_IP`:8081) and the
  proxy's public port (`PROXY_USERS_IP`:8000), and to nothing else on its bridge: no
  other student on any port, not the proxy's API (8001);
- nothing to the host itself (INPUT);
- DNS to the host's name servers, then `USER_EGRESS_ALLOW`, then, unless
  `USER_LAN_ACCESS=true`, no private-range destination; unless `USER_INTERNET=true`,
  nothing else either.

Our chains only DROP or RETURN, never ACCEPT: what they let through still meets
Docker's own rules (isolation between Docker networks, internal networks).
A DROP, not a REJECT: a probe learns nothing, not even that an address is in use.

`labhub.netguard_service` applies these rules and keeps them in place.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .settings import NetworkSettings

HUB_API_PORT = 8081
PROXY_PUBLIC_PORT = 8000
DNS_PORT = 53
# What "the LAN" means for USER_LAN_ACCESS: every private, link-local and shared range.
PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")
)
# Docker's chain for user rules in FORWARD, and the host's own input chain.
DOCKER_USER = "DOCKER-USER"
INPUT = "INPUT"

Verdict = Literal["RETURN", "DROP"]


@dataclass(frozen=True)
class Rule:
    """One rule of our chains: a match and a verdict; None matches anything."""

    verdict: Verdict
    comment: str
    established: bool = False
    source: ipaddress.IPv4Network | None = None
    destination: ipaddress.IPv4Network | None = None
    # True: the packet leaves through the users' bridge (to another container on it).
    to_users_bridge: bool = False
    protocol: Literal["tcp", "udp"] | None = None
    port: int | None = None

    def args(self, bridge: str) -> list[str]:
        """The rule as iptables arguments (after `-A CHAIN`)."""
        args: list[str] = []
        if self.source is not None:
            args += ["-s", str(self.source)]
        if self.destination is not None:
            args += ["-d", str(self.destination)]
        if self.to_users_bridge:
            args += ["-o", bridge]
        if self.protocol is not None:
            args += ["-p", self.protocol]
        if self.port is not None:
            args += ["-m", self.protocol or "tcp", "--dport", str(self.port)]
        if self.established:
            args += ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
        args += ["-m", "comment", "--comment", f"labhub: {self.comment}"]
        return [*args, "-j", self.verdict]


@dataclass(frozen=True)
class Jump:
    """A rule in DOCKER-USER or INPUT (not ours) sending the users' packets to our chain."""

    parent: str
    chain: str

    def args(self, bridge: str) -> list[str]:
        return ["-i", bridge, "-j", self.chain]


@dataclass(frozen=True)
class Ruleset:
    """Our two chains, their rules, and the jumps into them."""

    bridge: str
    forward_chain: str
    input_chain: str
    forward: tuple[Rule, ...]
    input: tuple[Rule, ...]

    @property
    def jumps(self) -> tuple[Jump, Jump]:
        return Jump(DOCKER_USER, self.forward_chain), Jump(INPUT, self.input_chain)

    @property
    def chains(self) -> dict[str, tuple[Rule, ...]]:
        return {self.forward_chain: self.forward, self.input_chain: self.input}

    def lines(self, chain: str) -> list[str]:
        """The chain's rules exactly as `iptables -S chain` lists them once applied."""
        return [_render(["-A", chain, *rule.args(self.bridge)]) for rule in self.chains[chain]]

    def jump_line(self, jump: Jump) -> str:
        """The jump as `iptables -S` lists it."""
        return _render(["-A", jump.parent, *jump.args(self.bridge)])

    def restore_script(self, missing_jumps: Sequence[Jump] = ()) -> str:
        """Input for `iptables-restore --noflush`: declaring our chains empties them, so
        the whole set is replaced in one transaction, and nothing else is touched."""
        lines = ["*filter"]
        lines += [f":{chain} - [0:0]" for chain in self.chains]
        for chain in self.chains:
            lines += self.lines(chain)
        # First in their chain: an ACCEPT someone put in DOCKER-USER must not bypass us.
        lines += [
            _render(["-I", jump.parent, "1", *jump.args(self.bridge)]) for jump in missing_jumps
        ]
        return "\n".join([*lines, "COMMIT", ""])


def chain_names(bridge: str) -> tuple[str, str]:
    """Our chains' names: one pair per users' bridge, so stacks on one host never clash."""
    return f"LABHUB-FWD-{bridge}", f"LABHUB-IN-{bridge}"


def ruleset(net: NetworkSettings, nameservers: Sequence[ipaddress.IPv4Address]) -> Ruleset:
    """The rules for these settings; `nameservers` are the host's (containers' DNS goes
    through Docker's resolver to them, from the container's own address)."""
    hub, proxy = ipaddress.IPv4Network(net.hub_ip), ipaddress.IPv4Network(net.proxy_ip)
    answers = Rule("RETURN", "answers to allowed connections", established=True)
    forward = [
        answers,
        Rule("RETURN", "the hub opens connections", source=hub),
        Rule("RETURN", "the proxy opens connections", source=proxy),
        Rule(
            "RETURN",
            "users to the hub API",
            destination=hub,
            to_users_bridge=True,
            protocol="tcp",
            port=HUB_API_PORT,
        ),
        Rule(
            "RETURN",
            "users to the proxy public port",
            destination=proxy,
            to_users_bridge=True,
            protocol="tcp",
            port=PROXY_PUBLIC_PORT,
        ),
        Rule("DROP", "nothing else between containers on the users bridge", to_users_bridge=True),
    ]
    for server in sorted(set(nameservers)):
        if not server.is_loopback:
            for protocol in ("udp", "tcp"):
                forward.append(
                    Rule(
                        "RETURN",
                        "DNS to the host name servers",
                        destination=ipaddress.IPv4Network(server),
                        protocol=protocol,
                        port=DNS_PORT,
                    )
                )
    forward += [
        Rule("RETURN", "USER_EGRESS_ALLOW", destination=allowed) for allowed in net.egress_allow
    ]
    if not net.lan_access:
        forward += [
            Rule("DROP", "private ranges (USER_LAN_ACCESS=false)", destination=private)
            for private in PRIVATE_RANGES
        ]
    if not net.internet:
        forward.append(Rule("DROP", "the internet (USER_INTERNET=false)"))
    inbound = (
        answers,
        Rule("DROP", "nothing from the users bridge to the host itself"),
    )
    forward_chain, input_chain = chain_names(net.bridge)
    return Ruleset(net.bridge, forward_chain, input_chain, tuple(forward), inbound)


def nameservers_in(resolv_conf: str) -> list[ipaddress.IPv4Address]:
    """The IPv4 `nameserver` lines of a resolv.conf."""
    found = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(ipaddress.IPv4Address(fields[1]))
            except ValueError:
                continue  # IPv6 servers: user containers have no IPv6
    return found


def _render(args: list[str]) -> str:
    """One iptables-restore line; quotes the arguments that hold spaces (comments)."""
    return " ".join(f'"{arg}"' if " " in arg else arg for arg in args)


# --- Swarm mode: the frontends' own firewall (labhub.frontguard applies it) -------------
# On a Swarm a user's server shares no bridge with anyone: it is alone on its own overlay
# network, which the frontends (the hub's, CHP's and the egress proxy's containers) join.
# Overlay traffic never crosses the host's chains above, so each frontend guards its own
# network namespace: from users' networks (the Swarm's address pools), only its public
# port; from the lab's own overlay network (where the hub and CHP reach the GPU service
# and CHP's API), anything. Other sources (local bridges, loopback) are not users'.
FRONTEND_CHAIN = "LABHUB-FRONTEND"


@dataclass(frozen=True)
class FrontendRuleset:
    """One chain in the frontend's own INPUT, and the jump to it."""

    rules: tuple[Rule, ...]
    chain: str = FRONTEND_CHAIN

    def lines(self) -> list[str]:
        """The chain's rules exactly as `iptables -S chain` lists them once applied."""
        return [_render(["-A", self.chain, *rule.args("")]) for rule in self.rules]

    @property
    def jump_line(self) -> str:
        return _render(["-A", INPUT, "-j", self.chain])

    def restore_script(self) -> str:
        """Input for `iptables-restore --noflush`: our chain, first in INPUT."""
        lines = ["*filter", f":{self.chain} - [0:0]", *self.lines()]
        lines.append(_render(["-I", INPUT, "1", "-j", self.chain]))
        return "\n".join([*lines, "COMMIT", ""])


def frontend_ruleset(
    public_ports: Sequence[int],
    users_pools: Sequence[ipaddress.IPv4Network],
    lab_networks: Sequence[ipaddress.IPv4Network],
) -> FrontendRuleset:
    """The rules of a frontend whose users need `public_ports` (the hub: 8081; CHP: 8000;
    the egress proxy: 3128), users' servers having addresses in `users_pools`."""
    rules = [Rule("RETURN", "answers to allowed connections", established=True)]
    rules += [Rule("RETURN", "the lab network", source=lab) for lab in lab_networks]
    for pool in users_pools:
        rules += [
            Rule("RETURN", f"users to port {port}", source=pool, protocol="tcp", port=port)
            for port in public_ports
        ]
    rules += [Rule("DROP", "nothing else from users", source=pool) for pool in users_pools]
    return FrontendRuleset(tuple(rules))
