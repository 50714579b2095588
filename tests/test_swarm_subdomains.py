"""SUBDOMAINS=true on a Swarm: each student's server on its own origin, and its GPU status.

On a two-engine test cluster with `make up` (tests/swarmstack.py) with SUBDOMAINS=true,
DOMAIN=lab.localhost and a GPU inventory (so that the GPU service runs, as in
tests/test_swarm_gpu_stack.py), a student logs in through nginx over TLS at the hub's
host. Her server runs as a Swarm service and is served on her own origin,
<user>.lab.localhost; the hub's origin only sends the browser there. From inside the
server, `LABHUB_GPU_STATUS_URL` answers with the token's user's api/me, as the user guide's
`curl` reads it, and JupyterLab's status item gets the GPU service's answer ("service":
"ok"). The GPU service is on a host of its own with subdomains (gpus--service.DOMAIN),
which a user's own overlay network had no name for: before, the item said "unavailable".

This process resolves lab.localhost and its subdomains to the manager's address, where
nginx listens, as a LAN's DNS would.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from stacks import HTTPS_PORT, STACK, USERS_CREATED
from swarmlab import wait_for_running_task
from swarmstack import PREFIX, SwarmStack
from test_swarm_gpu_stack import gpu_stack_up

from testsupport.hubclient import run_in_kernel, token_session

pytestmark = [pytest.mark.swarm, pytest.mark.e2e, pytest.mark.timeout(2400)]

DOMAIN = "lab.localhost"

# What the user guide tells a student to run, in Python: api/me at the URL the server got.
READ_ME = """
import json, os, urllib.request
request = urllib.request.Request(
    os.environ["LABHUB_GPU_STATUS_URL"],
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
)
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=30))))
"""


@pytest.fixture(scope="module")
def subdomain_swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    extra = {"DOMAIN": DOMAIN, "SUBDOMAINS": "true"}
    with gpu_stack_up(tmp_path_factory, "swarm-subdomains", extra) as running:
        original = socket.getaddrinfo
        manager = running.manager.address

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(host, str) and (host == DOMAIN or host.endswith(f".{DOMAIN}")):
                host = manager
            return original(host, *args, **kwargs)

        socket.getaddrinfo = getaddrinfo
        try:
            yield dataclasses.replace(
                running,
                stack=dataclasses.replace(running.stack, base_url=f"https://{DOMAIN}:{HTTPS_PORT}"),
            )
        finally:
            socket.getaddrinfo = original


def test_a_students_server_is_on_her_own_origin_and_reaches_the_gpu_service(
    subdomain_swarm: SwarmStack,
) -> None:
    stack, student = subdomain_swarm.stack, "subann"
    USERS_CREATED.append(student)
    client = stack.client()
    login = client.login(student, stack.ensure_account(student), follow=False)
    assert login.status_code == 302 and client.logged_in, login.text[:300]
    model = client.start_server(student, timeout=600, options={"profile": "cpu"})
    try:
        origin = f"https://{student}.{DOMAIN}:{HTTPS_PORT}"
        assert model["servers"][""]["full_url"] == f"{origin}/user/{student}/"
        wait_for_running_task(subdomain_swarm.swarm, f"{PREFIX}-{student}")
        token = client.new_token(student)
        lab = token_session(stack.ca_file, token)
        api = lab.get(f"{origin}/user/{student}/api/status", timeout=60)
        assert api.status_code == 200 and "kernels" in api.json(), api.text[:300]
        # The hub's origin serves no user content: it sends the browser to hers.
        on_hub = lab.get(f"{stack.base_url}/user/{student}/api/status", timeout=60)
        assert on_hub.history and on_hub.history[0].status_code == 302, on_hub.history
        assert on_hub.url.startswith(origin), on_hub.url

        # JupyterLab's status item reached the GPU service (before: "no answer").
        status = lab.get(f"{origin}/user/{student}/labhub/status", timeout=60)
        assert status.status_code == 200, status.text[:300]
        assert status.json()["service"] == "ok", status.json()
        # And the URL itself answers from inside the server, as the user guide's curl.
        output = run_in_kernel(origin, stack.ca_file, student, token, READ_ME)
        me = json.loads(output.strip().splitlines()[-1])
        assert me["user"] == student and "servers" in me, output
    finally:
        client.stop_server(student)


# Run in a student's kernel: which of `ports` on a frontend (by its container name, as her
# network resolves it) accept a TCP connection. Bounded: one try of 3 s a port.
PROBE = """
import json, socket
found = {}
for host, ports in %r.items():
    address = socket.gethostbyname(host)
    for port in ports:
        try:
            socket.create_connection((address, port), timeout=3).close()
            found[f"{host}:{port}"] = "connected"
        except OSError as error:
            found[f"{host}:{port}"] = type(error).__name__
print(json.dumps(found))
"""


def listening_ports(swarm_stack: SwarmStack, container: str) -> set[int]:
    """The TCP ports a process listens on in `container`'s network namespace, on any
    address but loopback (its /proc/net/tcp and tcp6, state 0A)."""
    ports = set()
    for table in ("tcp", "tcp6"):
        lines = swarm_stack.manager.docker("exec", container, "cat", f"/proc/net/{table}")
        for line in lines.splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            raw = bytes.fromhex(address)  # each 32-bit word in the kernel's (little) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            if state == "0A" and not ipaddress.ip_address(words).is_loopback:
                ports.add(int(port, 16))
    return ports


def test_a_students_server_reaches_only_the_public_port_of_each_frontend(
    subdomain_swarm: SwarmStack,
) -> None:
    """The hub's, CHP's and the egress proxy's containers join each user's network. From a
    student's kernel, every port something listens on there is closed but the one she
    needs: the hub's API, CHP's public port, Squid's. The GPU service (10101) and CHP's API
    (8001), which the hub and CHP use between them, do not answer her, while her GPU status
    item, routed by CHP to the GPU service over the lab's network, still does."""
    stack, student = subdomain_swarm.stack, "subprobe"
    USERS_CREATED.append(student)
    public = {f"{STACK}-hub": 8081, f"{STACK}-proxy-chp": 8000, f"{STACK}-egress": 3128}
    listening = {name: listening_ports(subdomain_swarm, name) for name in public}
    # What an attacker would try: every listener, so the test covers what runs, not a list.
    assert {10101} <= listening[f"{STACK}-hub"] and {8001} <= listening[f"{STACK}-proxy-chp"]
    client = stack.client()
    login = client.login(student, stack.ensure_account(student), follow=False)
    assert login.status_code == 302 and client.logged_in, login.text[:300]
    client.start_server(student, timeout=600, options={"profile": "cpu"})
    try:
        origin = f"https://{student}.{DOMAIN}:{HTTPS_PORT}"
        wait_for_running_task(subdomain_swarm.swarm, f"{PREFIX}-{student}")
        token = client.new_token(student)
        targets = {name: sorted(ports) for name, ports in listening.items()}
        output = run_in_kernel(origin, stack.ca_file, student, token, PROBE % targets)
        found = json.loads(output.strip().splitlines()[-1])
        expected = {
            f"{name}:{port}": "connected" if port == public[name] else "TimeoutError"
            for name, ports in listening.items()
            for port in ports
        }
        assert found == expected
        status = token_session(stack.ca_file, token).get(
            f"{origin}/user/{student}/labhub/status", timeout=60
        )
        assert status.status_code == 200 and status.json()["service"] == "ok", status.text[:300]
    finally:
        client.stop_server(student)
    # The rules cannot be undone from inside: no process of the hub or CHP keeps a
    # capability, nor can gain one (PID 1, the ancestor of every other, has none to give).
    for name in (f"{STACK}-hub", f"{STACK}-proxy-chp"):
        status_lines = subdomain_swarm.manager.docker("exec", name, "cat", "/proc/1/status")
        fields = dict(line.split(":\t", 1) for line in status_lines.splitlines() if ":\t" in line)
        assert fields["CapBnd"].strip() == fields["CapEff"].strip() == "0" * 16, (name, fields)
        assert fields["NoNewPrivs"].strip() == "1" and fields["Uid"].split()[0] != "0", fields
