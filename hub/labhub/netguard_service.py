"""The netguard service: puts `labhub.netguard`'s rules in the host's firewall and keeps them.

    labhub-netguard run      apply, then re-check every few seconds and re-apply on drift
    labhub-netguard check    exit 0 only if every rule is in place (for admins)
    labhub-netguard remove   delete our chains and the jumps into them (`make down`)

It runs in the host's network namespace with CAP_NET_ADMIN (compose service `netguard`).
The hub starts only once this is healthy, so no user container ever runs unguarded; a
stopped guard leaves its rules in place (only `remove` takes them out). Rules are
re-checked because a Docker or firewalld restart, or an admin's flush, can remove them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from itertools import zip_longest
from pathlib import Path
from typing import NoReturn

from .netguard import DOCKER_USER, INPUT, Jump, Ruleset, chain_names, nameservers_in, ruleset
from .settings import NetworkSettings, SettingsError

RECHECK_SECONDS = 5.0
# Docker's resolver forwards containers' queries to the name servers of this file.
RESOLV_CONF = Path("/etc/resolv.conf")
# Touched after each check that found every rule in place; compose's health check
# wants it younger than three checks.
HEARTBEAT = Path("/run/netguard-ok")
# Without it, packets between two containers on one bridge never meet iptables at all.
BRIDGE_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
# Docker writes its rules with one of the two iptables back ends; ours must go beside them.
BACKENDS = ("iptables-nft", "iptables-legacy")


class FirewallError(RuntimeError):
    """The host's firewall cannot be read or changed as needed; the message says why."""


class Iptables:
    """One iptables back end (`iptables-nft` or `iptables-legacy`), filter table only."""

    def __init__(self, command: str) -> None:
        self.command = command

    def _run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*args], input=stdin, text=True, capture_output=True, check=False, timeout=30
        )

    def has_chain(self, chain: str) -> bool:
        return self._run(self.command, "-w", "-S", chain).returncode == 0

    def has_rule(self, chain: str, args: list[str]) -> bool:
        return self._run(self.command, "-w", "-C", chain, *args).returncode == 0

    def listing(self, chain: str) -> str:
        """`iptables -S chain`: the chain's rules as iptables arguments, one a line."""
        return self._run(self.command, "-w", "-S", chain).stdout

    def change(self, *args: str) -> None:
        done = self._run(self.command, "-w", *args)
        if done.returncode != 0:
            raise FirewallError(f"{self.command} {' '.join(args)}: {done.stderr.strip()}")

    def restore(self, script: str) -> None:
        done = self._run(f"{self.command}-restore", "--noflush", "-w", stdin=script)
        if done.returncode != 0:
            raise FirewallError(f"{self.command}-restore failed: {done.stderr.strip()}\n{script}")


def docker_backend() -> Iptables:
    """The back end holding Docker's DOCKER-USER chain; an error if neither does."""
    for command in BACKENDS:
        iptables = Iptables(command)
        if iptables.has_chain(DOCKER_USER):
            return iptables
    raise FirewallError(
        "no DOCKER-USER chain in iptables-nft nor iptables-legacy: this must run in the "
        "host's network namespace (network_mode: host) with NET_ADMIN, on a Docker engine "
        'that manages iptables (no "iptables": false in /etc/docker/daemon.json); where '
        "Docker uses iptables-legacy, netguard also needs cap_add NET_RAW"
    )


def bridge_netfilter_problems() -> list[str]:
    """Why the kernel would not show bridged packets to iptables, if it would not."""
    try:
        if BRIDGE_NETFILTER.read_text().strip() == "1":
            return []
    except OSError:
        pass
    return [
        f"{BRIDGE_NETFILTER} is not 1, so packets between user containers bypass iptables: "
        "on the host, `modprobe br_netfilter` and `sysctl net.bridge.bridge-nf-call-iptables=1`"
        " (made permanent in /etc/modules-load.d and /etc/sysctl.d)"
    ]


def chain_problem(iptables: Iptables, chain: str, expected: list[str]) -> str | None:
    """Why `chain` does not hold exactly the rules `expected` (`-A` lines, in order), or
    None: the one read-back of a chain for netguard and the Swarm frontends' guard."""
    listing = iptables.listing(chain).splitlines()
    if not listing:
        return f"chain {chain} is missing"
    actual = [line for line in listing if line.startswith("-A ")]
    if actual == expected:
        return None
    wrong = next((a, e) for a, e in zip_longest(actual, expected, fillvalue="") if a != e)
    return (
        f"chain {chain} has {len(actual)} rules, not {len(expected)}; first "
        f"difference: {wrong[0] or 'nothing'} instead of {wrong[1] or 'nothing'}"
    )


def missing(iptables: Iptables, rules: Ruleset) -> list[str]:
    """What is not as it should be; empty when our chains hold exactly our rules, in
    order, and both jumps are in place. Four `iptables -S` calls, whatever the rules."""
    problems = [
        problem
        for chain in rules.chains
        if (problem := chain_problem(iptables, chain, rules.lines(chain)))
    ]
    for jump in rules.jumps:
        if rules.jump_line(jump) not in iptables.listing(jump.parent).splitlines():
            problems.append(f"the jump from {jump.parent} to {jump.chain} is missing")
    return problems


def apply(iptables: Iptables, rules: Ruleset) -> None:
    """Replace our chains' contents and add missing jumps, in one transaction."""
    absent: list[Jump] = [
        jump
        for jump in rules.jumps
        if rules.jump_line(jump) not in iptables.listing(jump.parent).splitlines()
    ]
    iptables.restore(rules.restore_script(absent))


def remove(iptables: Iptables, bridge: str) -> list[str]:
    """Delete our chains and every jump into them; return what was removed."""
    forward_chain, input_chain = chain_names(bridge)
    removed = []
    for jump in (Jump(DOCKER_USER, forward_chain), Jump(INPUT, input_chain)):
        while iptables.has_rule(jump.parent, jump.args(bridge)):
            iptables.change("-D", jump.parent, *jump.args(bridge))
            removed.append(f"jump {jump.parent} -> {jump.chain}")
    for chain in (forward_chain, input_chain):
        if iptables.has_chain(chain):
            iptables.change("-F", chain)
            iptables.change("-X", chain)
            removed.append(f"chain {chain}")
    return removed


def current_rules(net: NetworkSettings) -> Ruleset:
    return ruleset(net, nameservers_in(RESOLV_CONF.read_text()))


def run(net: NetworkSettings) -> NoReturn:
    """Check every few seconds; apply when anything differs (so at start too, and on a
    settings change). A failure at start stops the service: the hub then never starts."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # rules stay: see the docstring
    iptables = docker_backend()
    started = False
    while True:
        rules = current_rules(net)
        drift = missing(iptables, rules)
        if drift:
            apply(iptables, rules)
            if started:
                print(f"netguard: re-applied, found: {'; '.join(drift)}", flush=True)
            drift = missing(iptables, rules)
        problems = bridge_netfilter_problems() + drift
        if problems and not started:
            raise FirewallError("; ".join(problems))
        if problems:
            print(f"netguard: {'; '.join(problems)}", file=sys.stderr, flush=True)
        else:
            HEARTBEAT.touch()  # the health check reads its age
        if not started:
            print(
                f"netguard: {len(rules.forward)} forward and {len(rules.input)} input rules "
                f"for bridge {net.bridge} ({iptables.command}); "
                f"USER_LAN_ACCESS={str(net.lan_access).lower()}, "
                f"USER_INTERNET={str(net.internet).lower()}",
                flush=True,
            )
            started = True
        time.sleep(RECHECK_SECONDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labhub-netguard", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("run", "check", "remove"))
    action = parser.parse_args(argv).action
    try:
        net = NetworkSettings.from_env(os.environ)
        if action == "run":
            run(net)
        iptables = docker_backend()
        if action == "check":
            problems = bridge_netfilter_problems() + missing(iptables, current_rules(net))
            for problem in problems:
                print(f"netguard: {problem}", file=sys.stderr)
            return 1 if problems else 0
        removed = remove(iptables, net.bridge)
        print(f"netguard: removed {', '.join(removed) or 'nothing (none was there)'}")
        return 0
    except (SettingsError, FirewallError) as error:
        print(f"netguard: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
