"""labhub-frontguard: a Swarm frontend guards its own network namespace, then runs its
program with no privilege left.

    labhub-frontguard --port 8081 --as jupyterhub -- tini -g -- jupyterhub ...

On a Swarm the hub's and CHP's containers join every user's own overlay network, where
the host's netguard never sees the traffic (docs/security.md). compose/swarm.yml starts
them as root with NET_ADMIN, SETUID, SETGID and SETPCAP only, and this first: it puts
`labhub.netguard.frontend_ruleset` in the container's own filter table (from users'
networks only `--port`), reads it back, then becomes `--as` with an empty capability
bounding set and no_new_privs (setpriv), and execs the program. A failure stops the
container before the program starts, so a frontend never serves unguarded; the rules live
as long as the container's network namespace, and a restart applies them again.

The users' address pools and the lab's network come from `make up`, which reads them from
the Swarm (scripts/swarm-manager.sh frontend-networks): lines `users <net>` and `lab <net>`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pwd
import sys
from pathlib import Path

from .netguard import INPUT, FrontendRuleset, frontend_ruleset
from .netguard_service import FirewallError, Iptables, chain_problem

NETWORKS_FILE = Path("/etc/labhub/frontend-networks")
WRITTEN_BY = "make up writes it (scripts/swarm-manager.sh frontend-networks): run make up"


def read_networks(
    text: str, source: Path
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv4Network]]:
    """The users' pools and the lab's networks of a networks file; an error naming the
    line if one is not `users <net>` or `lab <net>`, or if no pool is given."""
    found: dict[str, list[ipaddress.IPv4Network]] = {"users": [], "lab": []}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if len(fields) != 2 or fields[0] not in found:
                raise ValueError("not 'users <network>' or 'lab <network>'")
            found[fields[0]].append(ipaddress.IPv4Network(fields[1]))
        except ValueError as error:
            raise FirewallError(
                f"{source} line {number}: {line!r}: {error}; {WRITTEN_BY}"
            ) from None
    if not found["users"]:
        raise FirewallError(f"{source} names no users' address pool; {WRITTEN_BY}")
    return found["users"], found["lab"]


def missing(iptables: Iptables, rules: FrontendRuleset) -> list[str]:
    """What is not in place; empty when our chain holds exactly our rules and INPUT jumps
    to it first."""
    problem = chain_problem(iptables, rules.chain, rules.lines())
    problems = [problem] if problem else []
    jumps = [line for line in iptables.listing(INPUT).splitlines() if line.startswith("-A")]
    if jumps[:1] != [rules.jump_line]:
        problems.append(f"INPUT does not jump to {rules.chain} first: {jumps}")
    return problems


def guard(ports: list[int], networks_file: Path) -> FrontendRuleset:
    """Apply the rules in this namespace and check them; an error if they are not there."""
    try:
        text = networks_file.read_text()
    except OSError as error:
        raise FirewallError(f"cannot read {networks_file}: {error}; {WRITTEN_BY}") from error
    users, lab = read_networks(text, networks_file)
    rules = frontend_ruleset(ports, users, lab)
    iptables = Iptables("iptables")
    iptables.restore(rules.restore_script())
    problems = missing(iptables, rules)
    if problems:
        raise FirewallError("; ".join(problems))
    return rules


def unprivileged(account: pwd.struct_passwd, command: list[str]) -> list[str]:
    """`command` as `account` (its groups too), with no capability and no way to gain one."""
    return [
        "setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--init-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        *command,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labhub-frontguard", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, action="append", required=True,
                        help="a port users' servers may open here (repeatable)")  # fmt: skip
    parser.add_argument("--as", dest="user", required=True, help="the account to run as")
    parser.add_argument("--networks", type=Path, default=NETWORKS_FILE)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program to run after --")
    try:
        account = pwd.getpwnam(args.user)
        rules = guard(args.port, args.networks)
    except (FirewallError, KeyError) as error:
        print(f"labhub-frontguard: {error}; nothing started", file=sys.stderr, flush=True)
        return 2
    print(
        f"labhub-frontguard: {len(rules.rules)} rules in {rules.chain}; users' servers may "
        f"open port {', '.join(map(str, args.port))} only; running as {args.user}",
        flush=True,
    )
    os.environ["HOME"] = account.pw_dir
    execute = unprivileged(account, command)
    os.execvp(execute[0], execute)


if __name__ == "__main__":
    sys.exit(main())
