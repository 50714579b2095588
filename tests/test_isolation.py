"""Students cannot reach each other: probes from one student's kernel, on the real stack.

alice's kernel opens TCP connections to bob's container (by address and by name, on his
server's port 8888 and on a port he opened himself), to configurable-http-proxy's API,
to the Docker socket proxy, to the host and to a LAN address. netguard DROPs these, so
the expected outcome is a *timeout*: silence, not a refusal (a refusal would tell alice
that the address is in use and the port closed). Each probe has a control showing the
target does answer to someone allowed, so the silence is the guard's doing.

The LAN address lives in a network namespace this module makes (a veth pair, a private
address, a tiny listener), never on a real LAN host. The same probe connects when the
guard runs with USER_LAN_ACCESS=true: the positive control.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from labhub.netguard import chain_names, ruleset
from labhub.netguard_service import apply, docker_backend, missing, remove
from labhub.settings import NetworkSettings
from stacks import HTTPS_PORT, STACK, USERS_CREATED, Stack, users_network_for

from testsupport.containers import user_container
from testsupport.hubclient import HubClient
from testsupport.waiting import wait_until

# A probe waits this long for an answer; DROP shows as a timeout after it.
PROBE_SECONDS = 3.0
BOB_PORT = 8765
# This stack's users' network (tests/stacks.py gives every stack its own).
NETWORK = users_network_for(HTTPS_PORT)
FORWARD_CHAIN, INPUT_CHAIN = chain_names(NETWORK["USERS_BRIDGE"])

PROBE = """
import json, socket
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    host, port = target
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return "unresolved"
    try:
        with socket.create_connection((address, port), timeout=TIMEOUT) as connection:
            connection.settimeout(1)
            try:
                banner = connection.recv(16).decode(errors="replace")
            except OSError:
                banner = ""
            return "open" + (":" + banner if banner else "")
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return repr(error)
targets = TARGETS
with ThreadPoolExecutor(max_workers=16) as pool:
    print(json.dumps(dict(zip([f"{h}:{p}" for h, p in targets], pool.map(probe, targets)))))
"""


@dataclass
class Students:
    """alice probes; bob runs his server and a port of his own."""

    alice: str
    bob: str
    alice_client: HubClient
    bob_client: HubClient
    bob_token: str
    bob_ip: str
    bob_name: str


def run_json(stack: Stack, client: HubClient, user: str, code: str) -> Any:
    return json.loads(stack.run(client, user, code).strip().splitlines()[-1])


def probe_from_alice(stack: Stack, students: Students, targets: list[tuple[str, int]]) -> Any:
    code = PROBE.replace("TARGETS", repr(targets)).replace("TIMEOUT", repr(PROBE_SECONDS))
    return run_json(stack, students.alice_client, students.alice, code)


def container_ip(container: Any, network: str) -> str:
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def from_hub(address: str, port: int) -> str:
    """Connect from the hub's container (allowed to open connections to users)."""
    hub = docker.from_env().containers.get(f"{STACK}-hub-1")
    code = (
        "import socket\n"
        f"socket.create_connection(({address!r}, {port}), timeout={PROBE_SECONDS}).close()\n"
        "print('open')"
    )
    result = hub.exec_run(["python", "-c", code])
    return str(result.output.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def students(stack: Stack) -> Iterator[Students]:
    suffix = uuid.uuid4().hex[:6]
    alice, bob = f"iso-alice-{suffix}", f"iso-bob-{suffix}"
    USERS_CREATED.extend([alice, bob])
    alice_client, bob_client = stack.login(alice), stack.login(bob)
    alice_client.start_server(alice)
    bob_client.start_server(bob)
    # bob serves his home folder to the class, as the issue describes (stays after the kernel).
    started = run_json(
        stack,
        bob_client,
        bob,
        f"""
import json, socket, subprocess, sys, time
subprocess.Popen([sys.executable, "-m", "http.server", "{BOB_PORT}", "--bind", "0.0.0.0"],
                 cwd="/home/jovyan", start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(50):
    try:
        socket.create_connection(("127.0.0.1", {BOB_PORT}), timeout=1).close()
        print(json.dumps("listening")); break
    except OSError:
        time.sleep(0.2)
else:
    print(json.dumps("not listening"))
""",
    )
    assert started == "listening"
    container = user_container(STACK, bob)
    yield Students(
        alice,
        bob,
        alice_client,
        bob_client,
        bob_client.new_token(bob),
        container_ip(container, STACK),
        container.name,
    )
    for name, client in ((alice, alice_client), (bob, bob_client)):
        with contextlib.suppress(Exception):
            client.stop_server(name)


@contextlib.contextmanager
def host_listener() -> Iterator[int]:
    """A TCP listener on every host address (bounded to this block); yields its port."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = server.accept()
                connection.sendall(b"host")
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@contextlib.contextmanager
def lan_host() -> Iterator[tuple[str, int]]:
    """A stand-in LAN host: a namespace behind a veth pair, 192.168.<port % 256>.2/30,
    answering "lan" on a port. Removed afterwards."""
    octet = HTTPS_PORT & 255
    namespace, outside, inside = f"lhlan{HTTPS_PORT}", f"lhv{HTTPS_PORT}", f"lhp{HTTPS_PORT}"
    host_ip, lan_ip, port = f"192.168.{octet}.1", f"192.168.{octet}.2", 7070

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    ip("netns", "add", namespace)
    listener = None
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", namespace)
        ip("addr", "add", f"{host_ip}/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", namespace, "addr", "add", f"{lan_ip}/30", "dev", inside)
        ip("-n", namespace, "link", "set", inside, "up")
        server = (
            "import socket, time\n"
            f"s = socket.create_server(({lan_ip!r}, {port})); s.settimeout(1)\n"
            "end = time.monotonic() + 600\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            "        c, _ = s.accept(); c.sendall(b'lan'); c.close()\n"
            "    except TimeoutError:\n"
            "        pass\n"
        )
        listener = subprocess.Popen(["ip", "netns", "exec", namespace, "python3", "-c", server])
        # Control: the host itself reaches it (so the path exists).

        def answers() -> bytes:
            with socket.create_connection((lan_ip, port), timeout=1) as connection:
                return connection.recv(16)

        wait_until(
            answers,
            10,
            "the stand-in LAN host to answer the host itself",
            done=lambda greeting: greeting == b"lan",
            interval=0.1,
            ignoring=(OSError,),
        )
        yield lan_ip, port
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def host_address() -> str:
    """The host's own address on its default route (its LAN address)."""
    route = subprocess.run(
        ["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
    ).stdout.split()
    return route[route.index("src") + 1]


def chain_rules(chain: str) -> str:
    return docker_backend().listing(chain)


def netguard_with(stack: Stack, **overrides: str) -> None:
    """Recreate the stack's netguard with these settings on top of its .env."""
    env_file = stack.env_file.with_name(f".env.netguard-{uuid.uuid4().hex[:6]}")
    lines = [
        line
        for line in stack.env_file.read_text().splitlines()
        if line.split("=", 1)[0] not in overrides
    ]
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    env_file.chmod(0o600)
    dataclasses.replace(stack, env_file=env_file).compose("up", "-d", "--no-deps", "netguard")


# --- The proof -----------------------------------------------------------------------


@pytest.mark.e2e
def test_students_cannot_reach_each_other_the_proxy_api_docker_or_the_host(
    stack: Stack, students: Students
) -> None:
    api = docker.from_env()
    proxy = api.containers.get(f"{STACK}-docker-proxy-1")
    docker_proxy_ip = next(iter(proxy.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    hub = api.containers.get(f"{STACK}-hub-1")
    gateway = hub.attrs["NetworkSettings"]["Networks"][STACK]["Gateway"]
    # Controls: bob's two ports answer the hub, which may open connections to users.
    assert from_hub(students.bob_ip, 8888) == "open"
    assert from_hub(students.bob_ip, BOB_PORT) == "open"
    with host_listener() as host_port:
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as control:
            assert control.recv(16) == b"host"
        targets = [
            (students.bob_ip, 8888),
            (students.bob_ip, BOB_PORT),
            (students.bob_name, 8888),
            (students.bob_name, BOB_PORT),
            ("proxy-chp", 8001),
            (docker_proxy_ip, 2375),
            (gateway, host_port),
            (host_address(), host_port),
            # Allowed: the hub API and the proxy's public port.
            ("hub", 8081),
            ("proxy-chp", 8000),
        ]
        seen = probe_from_alice(stack, students, targets)
    silent = [f"{host}:{port}" for host, port in targets[:-2]]  # all but the two allowed
    assert {target: seen[target] for target in silent} == dict.fromkeys(silent, "timeout"), seen
    assert seen["hub:8081"] == seen["proxy-chp:8000"] == "open", seen


@pytest.mark.e2e
def test_the_hub_api_and_bobs_server_through_the_hub_still_work(
    stack: Stack, students: Students
) -> None:
    seen = run_json(
        stack,
        students.alice_client,
        students.alice,
        """
import json, os, urllib.request
request = urllib.request.Request(os.environ["JUPYTERHUB_API_URL"] + "/user")
request.add_header("Authorization", "token " + os.environ["JUPYTERHUB_API_TOKEN"])
with urllib.request.urlopen(request, timeout=10) as response:
    print(json.dumps([response.status, json.load(response)["name"]]))
""",
    )
    assert seen == [200, students.alice]
    session = requests.Session()
    session.trust_env = False
    response = session.get(
        stack.base_url + f"/user/{students.bob}/api/status",
        headers={"Authorization": f"token {students.bob_token}"},
        verify=stack.ca_file,
        timeout=30,
    )
    assert response.status_code == 200, response.text[:300]


@pytest.mark.e2e
def test_user_containers_have_no_ipv6_path(stack: Stack, students: Students) -> None:
    """netguard's rules are IPv4: IPv6 must not be a way around them (Docker gives
    containers on a network without IPv6 no IPv6 address, link-local included)."""
    seen = run_json(
        stack,
        students.alice_client,
        students.alice,
        "import json; print(json.dumps(open('/proc/net/if_inet6').read()))",
    )
    assert seen == "", seen


@pytest.mark.e2e
def test_lan_is_off_by_default_and_on_with_user_lan_access(
    stack: Stack, students: Students
) -> None:
    with lan_host() as (lan_ip, port):
        target = f"{lan_ip}:{port}"
        assert probe_from_alice(stack, students, [(lan_ip, port)])[target] == "timeout"
        # Positive control: the same probe connects once the guard allows the LAN.
        try:
            netguard_with(stack, USER_LAN_ACCESS="true")
            wait_until(
                lambda: "private ranges" not in chain_rules(FORWARD_CHAIN),
                30,
                "netguard applied USER_LAN_ACCESS=true",
            )
            assert probe_from_alice(stack, students, [(lan_ip, port)])[target] == "open:lan"
        finally:
            stack.compose("up", "-d", "--no-deps", "netguard")
            wait_until(
                lambda: "private ranges" in chain_rules(FORWARD_CHAIN),
                30,
                "netguard back to USER_LAN_ACCESS=false",
            )
        assert probe_from_alice(stack, students, [(lan_ip, port)])[target] == "timeout"


@pytest.mark.e2e
def test_rules_survive_a_guard_restart_and_come_back_after_a_flush(
    stack: Stack, students: Students
) -> None:
    before = chain_rules(FORWARD_CHAIN)
    guard = docker.from_env().containers.get(f"{STACK}-netguard-1")
    guard.stop(timeout=10)
    # Stopped, the guard leaves its rules: students stay apart.
    assert chain_rules(FORWARD_CHAIN) == before
    target = f"{students.bob_ip}:{BOB_PORT}"
    assert probe_from_alice(stack, students, [(students.bob_ip, BOB_PORT)])[target] == "timeout"
    guard.start()
    wait_until(lambda: healthy(f"{STACK}-netguard-1"), 60, "netguard healthy after its restart")
    assert chain_rules(FORWARD_CHAIN) == before
    # Someone flushes our chain (a firewall reload would): the guard puts it back.
    iptables = docker_backend()
    iptables.change("-F", FORWARD_CHAIN)
    assert "-A " not in chain_rules(FORWARD_CHAIN)
    wait_until(lambda: chain_rules(FORWARD_CHAIN) == before, 20, "rules re-applied after a flush")
    assert "re-applied" in guard.logs(tail=20).decode()
    assert probe_from_alice(stack, students, [(students.bob_ip, BOB_PORT)])[target] == "timeout"


# The Swarm frontends' guard (labhub.frontguard), in a network namespace of its own: what
# it applies and how its read-back sees a changed chain or a rule put before its jump.
FRONTGUARD_DRIFT = """
import json, sys
from pathlib import Path
from labhub.frontguard import guard, missing
from labhub.netguard_service import Iptables
iptables = Iptables("iptables")
rules = guard([8081], Path(sys.argv[1]))
print(json.dumps([len(rules.rules), rules.chain, missing(iptables, rules)]))
iptables.change("-D", rules.chain, "1")
print(json.dumps(missing(iptables, rules)))
iptables.change("-I", "INPUT", "1", "-j", "ACCEPT")
print(json.dumps(missing(iptables, rules)))
"""


@pytest.mark.integration
def test_the_frontguards_read_back_sees_a_changed_chain_and_a_rule_before_its_jump(
    tmp_path: Path,
) -> None:
    networks = tmp_path / "frontend-networks"
    networks.write_text("users 10.20.0.0/16\nlab 10.30.0.0/24\n")
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", FRONTGUARD_DRIFT, str(networks)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    applied, changed, jumped_over = (json.loads(line) for line in done.stdout.splitlines())
    count, chain, problems = applied
    assert problems == [] and count > 3
    # Its first rule, answers pass, was deleted.
    assert len(changed) == 1, changed
    assert changed[0].startswith(f"chain {chain} has {count - 1} rules, not {count}")
    assert "RELATED,ESTABLISHED" in changed[0]
    assert jumped_over[0] == changed[0] and len(jumped_over) == 2
    assert jumped_over[1].startswith(f"INPUT does not jump to {chain} first")


def healthy(name: str) -> bool:
    container = docker.from_env().containers.get(name)
    return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")


# --- The service's own mechanics, on the host's real firewall (no stack) ------------


@pytest.mark.integration
def test_apply_is_idempotent_check_sees_drift_and_remove_leaves_nothing() -> None:
    net = NetworkSettings.from_env({**users_network_for(65001), "USERS_BRIDGE": "lhselftest"})
    iptables = docker_backend()
    rules = ruleset(net, [ipaddress.IPv4Address("192.0.2.53")])
    forward, inbound = chain_names(net.bridge)
    jump = f"-i {net.bridge} -j"
    try:
        apply(iptables, rules)
        apply(iptables, rules)
        assert missing(iptables, rules) == []
        assert iptables.listing(forward).count("-A ") == len(rules.forward)
        assert iptables.listing(inbound).count("-A ") == len(rules.input)
        # One jump each, however often applied.
        assert iptables.listing("DOCKER-USER").count(jump) == 1
        assert iptables.listing("INPUT").count(jump) == 1
        iptables.change("-D", forward, "1")
        drift = missing(iptables, rules)
        assert len(drift) == 1 and "RELATED,ESTABLISHED" in drift[0], drift
        assert f"has {len(rules.forward) - 1} rules, not {len(rules.forward)}" in drift[0]
        apply(iptables, rules)
        assert missing(iptables, rules) == []
    finally:
        removed = remove(iptables, net.bridge)
    assert len(removed) == 4, removed  # two jumps, two chains
    assert not iptables.has_chain(forward) and not iptables.has_chain(inbound)
    assert jump not in iptables.listing("DOCKER-USER") + iptables.listing("INPUT")
