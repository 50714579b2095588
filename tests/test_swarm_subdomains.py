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
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from stacks import HTTPS_PORT, USERS_CREATED
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
