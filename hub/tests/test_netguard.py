"""netguard's rules, checked by evaluating them on packets; its settings, checked for errors.

The evaluator below reads the `Rule` values the way iptables reads the rules they render
to (first match wins; RETURN lets the packet on to Docker's own rules, DROP ends it), so
the properties hold for any address in the users' subnet, not for a few examples.
"""

from __future__ import annotations

import ipaddress
import pwd
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub.frontguard import read_networks, unprivileged
from labhub.netguard import (
    PRIVATE_RANGES,
    FrontendRuleset,
    Rule,
    Ruleset,
    chain_names,
    frontend_ruleset,
    nameservers_in,
    ruleset,
)
from labhub.netguard_service import FirewallError
from labhub.settings import NetworkSettings, SettingsError

pytestmark = pytest.mark.unit

GOOD = {
    "USERS_BRIDGE": "labhub-users",
    "USERS_SUBNET": "172.31.240.0/20",
    "USERS_IP_RANGE": "172.31.248.0/21",
    "HUB_USERS_IP": "172.31.240.2",
    "PROXY_USERS_IP": "172.31.240.3",
}
NET = NetworkSettings.from_env(GOOD)
HUB, PROXY = NET.hub_ip, NET.proxy_ip
DNS = ipaddress.IPv4Address("10.255.255.53")


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection (or an answer, with established=True)."""

    source: ipaddress.IPv4Address
    destination: ipaddress.IPv4Address
    port: int
    protocol: str = "tcp"
    established: bool = False


def matches(rule: Rule, packet: Packet, subnet: ipaddress.IPv4Network) -> bool:
    return (
        (not rule.established or packet.established)
        and (rule.source is None or packet.source in rule.source)
        and (rule.destination is None or packet.destination in rule.destination)
        # On one bridge: the packet goes out through it when its destination is on it.
        and (not rule.to_users_bridge or packet.destination in subnet)
        and (rule.protocol is None or packet.protocol == rule.protocol)
        and (rule.port is None or packet.port == rule.port)
    )


def passes(rules: Ruleset, packet: Packet, chain: str = "forward") -> bool:
    for rule in rules.forward if chain == "forward" else rules.input:
        if matches(rule, packet, NET.subnet):
            return rule.verdict == "RETURN"
    return True


def net(**overrides: str) -> NetworkSettings:
    return NetworkSettings.from_env({**GOOD, **overrides})


users = st.integers(
    int(NET.ip_range.network_address) + 1, int(NET.ip_range.broadcast_address) - 1
).map(ipaddress.IPv4Address)
anywhere = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ports = st.integers(1, 65535)
RULES = ruleset(NET, [DNS])


def to_platform(target: ipaddress.IPv4Address, port: int) -> bool:
    return (target, port) in ((HUB, 8081), (PROXY, 8000))


# Every combination of the switches: user-to-user must not rest on the private-range rule.
SWITCHED = [
    ruleset(net(USER_LAN_ACCESS=lan, USER_INTERNET=internet, USER_EGRESS_ALLOW=allow), [DNS])
    for lan in ("true", "false")
    for internet in ("true", "false")
    for allow in ("", "172.31.240.0/20")
]


@given(users, users, ports)
def test_no_user_reaches_another_on_any_port(alice: object, bob: object, port: int) -> None:
    assert isinstance(alice, ipaddress.IPv4Address) and isinstance(bob, ipaddress.IPv4Address)
    for rules in SWITCHED:
        for protocol in ("tcp", "udp"):
            assert not passes(rules, Packet(alice, bob, port, protocol))


@given(users, ports)
def test_users_reach_the_hub_api_and_proxy_public_port_only(user: object, port: int) -> None:
    assert isinstance(user, ipaddress.IPv4Address)
    assert passes(RULES, Packet(user, HUB, 8081))
    assert passes(RULES, Packet(user, PROXY, 8000))
    assert passes(RULES, Packet(user, HUB, port)) == (port == 8081)
    assert passes(RULES, Packet(user, PROXY, port)) == (port == 8000)
    assert not passes(RULES, Packet(user, PROXY, 8001))


@given(users, ports)
def test_hub_and_proxy_open_connections_to_users_and_answers_flow(user: object, port: int) -> None:
    assert isinstance(user, ipaddress.IPv4Address)
    assert passes(RULES, Packet(HUB, user, port))
    assert passes(RULES, Packet(PROXY, user, port))
    # bob's server answering the proxy (or alice's own connection to the hub coming back).
    assert passes(RULES, Packet(user, PROXY, port, established=True))


@given(users, anywhere, ports)
def test_nothing_from_users_to_the_host_itself(user: object, host: object, port: int) -> None:
    assert isinstance(user, ipaddress.IPv4Address) and isinstance(host, ipaddress.IPv4Address)
    assert not passes(RULES, Packet(user, host, port), chain="input")
    assert passes(RULES, Packet(user, host, port, established=True), chain="input")


@given(users, anywhere, ports)
def test_lan_off_by_default_internet_on(user: object, target: object, port: int) -> None:
    assert isinstance(user, ipaddress.IPv4Address) and isinstance(target, ipaddress.IPv4Address)
    private = any(target in net for net in PRIVATE_RANGES)
    dns = target == DNS and port == 53
    expected = dns or to_platform(target, port) or not private
    assert passes(RULES, Packet(user, target, port)) == expected


@given(users, anywhere, ports)
def test_lan_access_and_no_internet_switch(user: object, target: object, port: int) -> None:
    assert isinstance(user, ipaddress.IPv4Address) and isinstance(target, ipaddress.IPv4Address)
    off_bridge = target not in NET.subnet
    platform = to_platform(target, port)
    lan = ruleset(net(USER_LAN_ACCESS="true"), [DNS])
    assert passes(lan, Packet(user, target, port)) == (off_bridge or platform)
    closed = ruleset(net(USER_INTERNET="false", USER_EGRESS_ALLOW="192.168.7.0/24"), [DNS])
    allowed = target in ipaddress.IPv4Network("192.168.7.0/24") or (target == DNS and port == 53)
    assert passes(closed, Packet(user, target, port)) == ((off_bridge and allowed) or platform)


def test_egress_allow_opens_one_lan_network_and_loopback_dns_is_skipped() -> None:
    rules = ruleset(
        net(USER_EGRESS_ALLOW="10.1.2.3, 10.20.0.0/24"),
        [DNS, DNS, *map(ipaddress.IPv4Address, ["127.0.0.53"])],
    )
    user = ipaddress.IPv4Address("172.31.250.9")
    assert passes(rules, Packet(user, ipaddress.IPv4Address("10.1.2.3"), 443))
    assert passes(rules, Packet(user, ipaddress.IPv4Address("10.20.0.77"), 22))
    assert not passes(rules, Packet(user, ipaddress.IPv4Address("10.1.2.4"), 443))
    assert sum(rule.port == 53 for rule in rules.forward) == 2  # udp + tcp to DNS, once


def test_restore_script_replaces_only_our_chains_and_adds_missing_jumps() -> None:
    forward, inbound = chain_names("labhub-users")
    script = RULES.restore_script(RULES.jumps[:1])
    lines = script.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert lines[1:3] == [f":{forward} - [0:0]", f":{inbound} - [0:0]"]
    assert f"-I DOCKER-USER 1 -i labhub-users -j {forward}" in lines
    assert not any(line.startswith("-I INPUT") for line in lines)
    # Only our chains are appended to; comments with spaces are quoted.
    appended = [line for line in lines if line.startswith("-A ")]
    assert {line.split()[1] for line in appended} == {forward, inbound}
    assert len(appended) == len(RULES.forward) + len(RULES.input)
    assert (
        f"-A {forward} -d 172.31.240.2/32 -o labhub-users -p tcp -m tcp --dport 8081 "
        '-m comment --comment "labhub: users to the hub API" -j RETURN'
    ) in lines
    assert "ACCEPT" not in script  # Docker's own rules still apply after ours


def test_chain_names_fit_iptables() -> None:
    assert all(len(name) <= 28 for name in chain_names("a" * 15))


def test_nameservers_in_resolv_conf() -> None:
    text = "# comment\nnameserver 10.255.255.53\nnameserver ::1\nsearch lab\nnameserver 1.1.1.1\n"
    assert nameservers_in(text) == [DNS, ipaddress.IPv4Address("1.1.1.1")]


def test_defaults_of_the_switches() -> None:
    assert (NET.lan_access, NET.internet, NET.egress_allow) == (False, True, ())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"USERS_SUBNET": ""}, "USERS_SUBNET is missing: run `make env`"),
        ({"USERS_SUBNET": "172.31.240.1/20"}, "USERS_SUBNET='172.31.240.1/20' is not valid"),
        ({"USERS_SUBNET": "172.31.240.0/28"}, "too small"),
        ({"USERS_BRIDGE": "a-very-long-bridge-name"}, "USERS_BRIDGE="),
        ({"USERS_BRIDGE": "bad name"}, "USERS_BRIDGE="),
        ({"USERS_IP_RANGE": "10.0.0.0/24"}, "must lie inside USERS_SUBNET"),
        ({"USERS_IP_RANGE": "172.31.240.0/21"}, "HUB_USERS_IP=172.31.240.2 lies inside"),
        ({"HUB_USERS_IP": "172.31.240.0"}, "HUB_USERS_IP=172.31.240.0 must be a host address"),
        ({"PROXY_USERS_IP": "10.0.0.3"}, "PROXY_USERS_IP=10.0.0.3 must be a host address"),
        ({"PROXY_USERS_IP": "172.31.240.2"}, "both 172.31.240.2"),
        ({"USER_LAN_ACCESS": "yes"}, "USER_LAN_ACCESS='yes' is not valid: use true or false"),
        ({"USER_INTERNET": "0"}, "USER_INTERNET="),
        ({"USER_EGRESS_ALLOW": "10.0.0.0/33"}, "'10.0.0.0/33' is not an IPv4 address"),
    ],
)
def test_each_bad_value_is_named(overrides: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        net(**overrides)
    assert expected in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        NetworkSettings.from_env({"USER_LAN_ACCESS": "maybe"})
    assert len(info.value.problems) == 6  # bridge, four addresses, the switch


def test_env_example_ships_a_valid_layout_and_the_safe_switches() -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    values = dict(
        line.split("=", 1)
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    )
    shipped = NetworkSettings.from_env(values)
    assert shipped == NET  # the layout GOOD above is .env.example's
    assert (shipped.lan_access, shipped.internet) == (False, True)


# --- Swarm mode: a frontend's own firewall (labhub.netguard.frontend_ruleset, applied by
# labhub.frontguard), for any address in the Swarm's pools; the networks file make up
# writes; the program it runs, with no privilege left.
SWARM_POOL = ipaddress.IPv4Network("10.0.0.0/8")
LAB_NET = ipaddress.IPv4Network("10.0.1.0/24")
FRONT_RULES = frontend_ruleset([8081], [SWARM_POOL], [LAB_NET])
FRONTEND = ipaddress.IPv4Address("10.0.7.3")  # the hub's address on some user's network

in_pool = st.integers(int(SWARM_POOL.network_address), int(SWARM_POOL.broadcast_address)).map(
    ipaddress.IPv4Address
)
swarm_users = in_pool.filter(lambda address: address not in LAB_NET)
protocols = st.sampled_from(["tcp", "udp"])


def front_passes(rules: FrontendRuleset, packet: Packet) -> bool:
    """First match wins; falling off the chain returns to INPUT, whose policy accepts."""
    no_bridge = ipaddress.IPv4Network("0.0.0.0/32")
    rule: Rule
    for rule in rules.rules:
        if matches(rule, packet, no_bridge):
            return rule.verdict == "RETURN"
    return True


@given(swarm_users, ports, protocols)
def test_a_users_server_opens_the_public_port_only(user: object, port: int, proto: str) -> None:
    packet = Packet(user, FRONTEND, port, proto)  # type: ignore[arg-type]
    assert front_passes(FRONT_RULES, packet) == (port == 8081 and proto == "tcp")


@given(st.integers(int(LAB_NET.network_address), int(LAB_NET.broadcast_address)), ports)
def test_the_lab_network_reaches_every_port(peer: int, port: int) -> None:
    assert front_passes(FRONT_RULES, Packet(ipaddress.IPv4Address(peer), FRONTEND, port))


@given(swarm_users, ports)
def test_answers_to_the_frontends_own_connections_come_back(user: object, port: int) -> None:
    assert front_passes(FRONT_RULES, Packet(user, FRONTEND, port, established=True))  # type: ignore[arg-type]


def test_outside_the_pools_nothing_is_dropped_and_nothing_is_accepted_by_us() -> None:
    # Local bridges (nginx, the Docker proxy, Prometheus) and loopback are not users'.
    for source in ("172.18.0.5", "127.0.0.1"):
        assert front_passes(FRONT_RULES, Packet(ipaddress.IPv4Address(source), FRONTEND, 10101))
    assert {rule.verdict for rule in FRONT_RULES.rules} == {"RETURN", "DROP"}


def test_the_restore_script_declares_our_chain_and_jumps_to_it_first() -> None:
    script = FRONT_RULES.restore_script()
    assert script.splitlines()[:2] == ["*filter", ":LABHUB-FRONTEND - [0:0]"]
    assert "-I INPUT 1 -j LABHUB-FRONTEND" in script.splitlines()
    assert script.endswith("COMMIT\n")
    assert FRONT_RULES.lines()[-1] == (
        '-A LABHUB-FRONTEND -s 10.0.0.0/8 -m comment --comment "labhub: nothing else from users"'
        " -j DROP"
    )


def test_several_pools_and_ports_each_get_their_rules() -> None:
    second = ipaddress.IPv4Network("192.168.128.0/18")
    rules = frontend_ruleset([8000, 3128], [SWARM_POOL, second], [LAB_NET])
    for pool in (SWARM_POOL, second):
        for port in (8000, 3128):
            user = ipaddress.IPv4Address(int(pool.network_address) + 70000 % pool.num_addresses)
            assert front_passes(rules, Packet(user, FRONTEND, port))
        assert not front_passes(rules, Packet(pool.network_address + 3000, FRONTEND, 8001))


def test_the_networks_file_make_up_writes_is_read() -> None:
    text = "users 10.0.0.0/8\nusers 192.168.128.0/18\nlab 10.0.1.0/24\n"
    assert read_networks(text, Path("f")) == (
        [SWARM_POOL, ipaddress.IPv4Network("192.168.128.0/18")],
        [LAB_NET],
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "f names no users' address pool; make up writes it"),
        ("lab 10.0.1.0/24\n", "f names no users' address pool"),
        ("users 10.0.0.0/33\n", "f line 1: 'users 10.0.0.0/33'"),
        ("users 10.0.0.1/8\n", "has host bits set"),
        ("pool 10.0.0.0/8\n", "not 'users <network>' or 'lab <network>'"),
        ("users 10.0.0.0/8 extra\n", "f line 1"),
    ],
)
def test_a_bad_networks_file_names_the_line_and_the_fix(text: str, expected: str) -> None:
    with pytest.raises(FirewallError, match="run make up") as raised:
        read_networks(text, Path("f"))
    assert expected in str(raised.value)


def test_the_program_runs_as_the_account_with_no_capability_nor_a_way_to_one() -> None:
    command = unprivileged(pwd.getpwnam("root"), ["tini", "-g", "--", "jupyterhub"])
    assert command[0] == "setpriv" and command[-4:] == ["tini", "-g", "--", "jupyterhub"]
    assert {"--reuid=0", "--regid=0", "--init-groups", "--inh-caps=-all"} <= set(command)
    assert {"--bounding-set=-all", "--no-new-privs"} <= set(command)
