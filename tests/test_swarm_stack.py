"""`make up` with ENGINE=swarm: the platform on a real Swarm, a student logged in over TLS.

On a two-engine test cluster (tests/swarm.py) the README's own `make up`, pointed at the
manager's engine with DOCKER_HOST, checks the engine is a manager, makes the lab's overlay
network and starts nginx, CHP, the hub (LabSwarmSpawner) and the Docker proxy
(PROXY_POLICY=swarm) there. Students sign up and log in through nginx over TLS from this
host; each server is a Swarm service whose task runs on a node placement chose, reached
through CHP over the overlay. With MONITORING=true, Prometheus on the manager's loopback
has each node's servers' CPU and memory, read through that node's metrics proxy, which
users cannot reach. With QUOTA_ROOT (a `make up` again, on a btrfs every node sees), a
student's server on the worker writing past its disk quota gets "Disk quota exceeded", and
what it wrote shows in their api/me and the admin's Homes table, read on each node.
`make down` removes it all but the users' files. An engine that is not a manager is
refused with what to run.

The cluster and `make up` on it: tests/swarmstack.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labhub.contract import quota_home_options, user_network_name, volume_name_for
from labhub.frontguard import NETWORKS_FILE
from loopfs import btrfs_with_quotas
from stacks import STACK
from swarm import Node, run
from swarmlab import CONNECT, running_container, wait_for_running_task
from swarmstack import (
    EGRESS_IMAGE,
    METRICS_PROXIES,
    PREFIX,
    PROMETHEUS_IMAGE,
    PROXY_IMAGE,
    WORKSPACE_IMAGE,
    SwarmStack,
    make,
    swarm_env,
    swarm_stack_up,
)
from test_compose import rendered
from test_home_usage import homes_row

from testsupport.dockerproxy import free_port
from testsupport.hubclient import token_session
from testsupport.images import REPO
from testsupport.waiting import wait_until

# Two engines with the 2.4 GB workspace image loaded take minutes before make up starts.
pytestmark = [pytest.mark.swarm, pytest.mark.e2e, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def quota_root() -> Iterator[Path]:
    """A btrfs with quotas on, at one path every test node sees (the nodes are engines in
    network namespaces of this host, sharing its filesystem): QUOTA_ROOT for the quota test,
    kept until the stack is down."""
    with btrfs_with_quotas() as root:
        yield root


@pytest.fixture(scope="module")
def swarm_stack(tmp_path_factory: pytest.TempPathFactory, quota_root: Path) -> Iterator[SwarmStack]:
    # MONITORING=true: Prometheus and the exporter on the manager, a metrics proxy on each node.
    with swarm_stack_up(
        tmp_path_factory.mktemp("swarm-stack"),
        extra={"MONITORING": "true"},
        manager_images=(PROXY_IMAGE, EGRESS_IMAGE, PROMETHEUS_IMAGE),
    ) as running:
        yield running


def test_swarm_override_keeps_the_proxy_in_front_and_drops_the_single_host_guards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose/swarm.yml as `make up` renders it: the hub and CHP on the lab's overlay under
    the names the hub is given, the proxy's Swarm rules, no netguard or diskquota."""
    # The hashes of the files read at start, which make up gives compose (STARTUP_FILES_SHAS).
    monkeypatch.setenv("FRONTEND_NETWORKS_SHA", "f" * 64)
    monkeypatch.setenv("EGRESS_CONF_SHA", "e" * 64)
    monkeypatch.setenv("CONFIG_FILES_SHA", "c" * 64)
    services = rendered(tmp_path, "docker-compose.yml", "swarm.yml")
    assert set(services) == {"proxy", "proxy-chp", "hub", "docker-proxy", "egress"}
    hub, chp, proxy = services["hub"], services["proxy-chp"], services["docker-proxy"]
    names = {"HUB_CONTAINER": hub["container_name"], "CHP_CONTAINER": chp["container_name"]}
    assert names == {"HUB_CONTAINER": "labhub-hub", "CHP_CONTAINER": "labhub-proxy-chp"}
    assert names.items() <= hub["environment"].items()  # type: ignore[attr-defined]
    assert set(hub["depends_on"]) == {"docker-proxy", "proxy-chp"}  # type: ignore[arg-type]
    # node-proxies: the nodes' Docker proxies' network (tests/test_swarm_nodes.py).
    assert set(hub["networks"]) == {"labhub", "docker-api", "metrics", "node-proxies"}  # type: ignore[arg-type]
    assert hub["environment"]["NODE_PROXY_SERVICE"] == "labhub-node-proxy"  # type: ignore[index]
    assert set(chp["networks"]) == {"labhub", "frontend"}  # type: ignore[arg-type]
    assert proxy["environment"]["PROXY_POLICY"] == "swarm"  # type: ignore[index]
    assert not any("docker.sock" in str(v) for v in hub.get("volumes", []))  # type: ignore[attr-defined]
    # The hub and CHP guard their own network namespace first (labhub.frontguard), then run
    # what they ran before: the image's entrypoint and, for the hub, its command.
    dockerfile = (REPO / "images/hub/Dockerfile").read_text().splitlines()
    [image_cmd] = [json.loads(line[4:]) for line in dockerfile if line.startswith("CMD [")]
    [entry] = [json.loads(line[11:]) for line in dockerfile if line.startswith("ENTRYPOINT [")]
    assert hub["command"] == image_cmd
    # The account they run as is the image's, which make's commands in the hub's container
    # use too (a root there may not read the hub's files).
    [account] = re.findall(r"^HUB_ACCOUNT = (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert f'--create-home --uid "${{HUB_UID}}" --shell /usr/sbin/nologin {account}' in "\n".join(
        dockerfile
    )
    for service, port in ((hub, 8081), (chp, 8000)):
        assert service["entrypoint"] == [
            "labhub-frontguard", f"--port={port}", f"--as={account}", "--", *entry
        ]  # fmt: skip
        assert service["user"] == "root" and service["cap_drop"] == ["ALL"]
        assert set(service["cap_add"]) == {"NET_ADMIN", "SETUID", "SETGID", "SETPCAP"}  # type: ignore[arg-type]
        mounts = {m["target"]: m for m in service["volumes"]}  # type: ignore[attr-defined,index]
        assert mounts[str(NETWORKS_FILE)]["source"] == str(REPO / ".build/frontguard/networks")
        assert mounts[str(NETWORKS_FILE)]["read_only"] is True
    assert chp["labels"] == {"org.labhub.frontend-networks-sha256": "f" * 64}
    assert hub["labels"] == {
        "org.labhub.frontend-networks-sha256": "f" * 64,
        "org.labhub.config-files-sha256": "c" * 64,
    }
    assert services["egress"]["labels"] == {"org.labhub.squid-conf-sha256": "e" * 64}


def test_swarm_monitoring_reads_each_nodes_metrics_proxy_not_the_single_host_one(
    tmp_path: Path,
) -> None:
    """MONITORING=true as `make up` renders it on a Swarm: the exporter reads the tasks of
    the nodes' metrics proxies on their network (the Makefile's METRICS_PROXIES), and the
    single-host proxy on the manager's socket is not started."""
    services = rendered(tmp_path, "docker-compose.yml", "swarm.yml", profiles="monitoring")
    assert {"prometheus", "container-metrics"} <= set(services)
    assert "metrics-docker-proxy" not in services
    exporter = services["container-metrics"]
    env = exporter["environment"]
    assert env["DOCKER_HOST"] == "tcp://tasks.labhub-metrics-proxy:2375"  # type: ignore[index]
    assert set(exporter["networks"]) == {"metrics", "metrics-proxies"}  # type: ignore[arg-type]
    assert not exporter.get("depends_on")
    assert not any("docker.sock" in str(v) for v in exporter.get("volumes", []))  # type: ignore[attr-defined]


def test_make_n_up_in_swarm_mode_only_prints(tmp_path: Path) -> None:
    """`make -n up` runs the lines that call make (GNU make does, to print what they would
    do), so those must start nothing themselves: with an engine that does not exist, a
    command that ran would fail the dry run."""
    env_file = swarm_env(tmp_path, "127.0.0.1", (free_port(), free_port()))
    dry = make("up", env_file, "unix:///nonexistent/docker.sock", "-n", "BUILD=no")
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "up -d --wait egress" in dry.stdout


def test_make_up_with_engine_swarm_on_an_engine_not_in_a_swarm_says_docker_swarm_init(
    tmp_path: Path,
) -> None:
    """This host's own engine is in no Swarm: `make up` stops before building anything."""
    assert "inactive" in run("docker", "info", "--format", "{{.Swarm.LocalNodeState}}")
    # Ports free on this host's loopback (the cluster's are in the manager's namespace).
    env_file = swarm_env(tmp_path, "127.0.0.1", (free_port(), free_port()))
    # The session's own single-host stack of this name may be up on this engine: make up
    # must add nothing to it.
    project = (
        "docker",
        "ps",
        "--all",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={STACK}",
    )
    before = run(*project)
    up = make("up", env_file, os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    assert up.returncode == 2, up.stdout[-2000:]
    assert "is not in a Swarm" in up.stderr and "docker swarm init" in up.stderr, up.stderr
    assert "Successfully built" not in up.stdout
    assert run(*project) == before


def test_make_up_on_a_swarm_serves_tls_logins_and_spawns_each_server_as_a_service_on_a_node(
    swarm_stack: SwarmStack,
) -> None:
    stack, manager = swarm_stack.stack, swarm_stack.manager
    users = ("swann", "swbob")
    nodes, clients = {}, {}
    for user in users:
        # Sign-up and login through nginx over TLS, checked against the stack's own CA.
        # Not following the hub's redirects: they name DOMAIN (localhost), not the manager.
        client = clients[user] = stack.client()
        login = client.login(user, stack.ensure_account(user), follow=False)
        assert login.status_code == 302 and client.logged_in, login.text[:300]
        client.start_server(user, timeout=600)
        # The server's API through nginx and CHP, over the overlay to the task: /api answers
        # anyone, /api/status a token the server checks with the hub over the overlay.
        response = client.session.get(stack.base_url + f"/user/{user}/api", timeout=60)
        assert response.status_code == 200 and "version" in response.json(), response.text
        session = token_session(stack.ca_file, client.new_token(user))
        status = session.get(stack.base_url + f"/user/{user}/api/status", timeout=60)
        assert status.status_code == 200 and "started" in status.json(), status.text[:300]
        # A Swarm service, pinned to the node its task runs on, with the user's home there.
        nodes[user] = wait_for_running_task(swarm_stack.swarm, f"{PREFIX}-{user}")
        constraints = manager.docker(
            "service", "inspect", "--format", "{{json .Spec.TaskTemplate.Placement.Constraints}}",
            f"{PREFIX}-{user}",
        )  # fmt: skip
        assert json.loads(constraints) == [f"node.id=={nodes[user]}"]
        # It reached the hub (the token check above) by the hub's container name.
        env = manager.docker(
            "service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
            f"{PREFIX}-{user}",
        )  # fmt: skip
        assert f"JUPYTERHUB_API_URL=http://{STACK}-hub:8081/hub/api" in json.loads(env)
        home = swarm_stack.node(nodes[user])
        assert volume_name_for(user, STACK) in home.docker("volume", "ls", "--quiet").split()
    # Two first spawns spread over both nodes: one server runs on the worker, reached over
    # the overlay from the manager's CHP.
    assert set(nodes.values()) == {node.node_id for node in swarm_stack.swarm.nodes}
    # The hub holds no Docker socket: it reaches the engine through the Swarm proxy only.
    hub = json.loads(manager.docker("inspect", f"{STACK}-hub"))[0]
    assert "docker.sock" not in json.dumps(hub["Mounts"])
    assert "DOCKER_HOST=tcp://docker-proxy:2375" in hub["Config"]["Env"]
    proxy = json.loads(manager.docker("inspect", f"{STACK}-docker-proxy-1"))[0]
    [socket] = [m["Source"] for m in proxy["Mounts"] if m["Destination"] == "/var/run/docker.sock"]
    assert socket == str(manager.socket)  # the manager's engine, not this host's
    proxy_env = manager.docker(
        "inspect", "--format", "{{json .Config.Env}}", f"{STACK}-docker-proxy-1"
    )
    assert "PROXY_POLICY=swarm" in json.loads(proxy_env)
    # Stopped through the hub: the service is gone.
    for user in users:
        clients[user].stop_server(user)
        assert not manager.docker("service", "ls", "--quiet", "--filter", f"name={PREFIX}-{user}")


def prometheus_query(swarm_stack: SwarmStack, expr: str) -> list[dict[str, Any]]:
    """An instant query to the stack's Prometheus, on the manager's loopback (PROMETHEUS_PORT,
    the default), from inside the manager's network namespace."""
    manager = swarm_stack.manager
    answer = run(
        "nsenter", f"--net=/run/netns/{manager.name}", "curl", "--silent", "--fail", "--get",
        "--data-urlencode", f"query={expr}", "http://127.0.0.1:9090/api/v1/query",
    )  # fmt: skip
    result: list[dict[str, Any]] = json.loads(answer)["data"]["result"]
    return result


# The HTTP status a GET of argv[1] gets (urllib raises on 4xx: its code then).
STATUS_OF = (
    "import sys, urllib.request, urllib.error\n"
    "try: print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
    "except urllib.error.HTTPError as error: print(error.code)"
)


def metrics_proxy_address(node: Node) -> str:
    """The address of `node`'s metrics proxy task on their network (the node's engine lists
    its own endpoints on an overlay: the task's container is `<service>.<node>.<task>`)."""
    network = json.loads(node.docker("network", "inspect", METRICS_PROXIES))[0]
    [address] = [
        endpoint["IPv4Address"].split("/")[0]
        for endpoint in network["Containers"].values()
        if endpoint["Name"].startswith(f"{METRICS_PROXIES}.")
    ]
    return str(address)


def test_monitoring_on_a_swarm_measures_each_nodes_servers_through_its_own_proxy(
    swarm_stack: SwarmStack,
) -> None:
    """Two students' servers, one on each node: Prometheus on the manager has each one's
    CPU time and memory, labelled with the node the engine ran it on (so the worker's came
    through the worker's metrics proxy), and the hub's own metrics. A student's server
    cannot reach the metrics proxies: not by their tasks' name, not at their addresses; the
    exporter reaches them but reads no more than its metrics."""
    stack, swarm = swarm_stack.stack, swarm_stack.swarm
    users = ("swann", "swbob")
    nodes, clients = {}, {}
    for user in users:
        client = clients[user] = stack.client()
        assert client.login(user, stack.ensure_account(user), follow=False).status_code == 302
        client.start_server(user, timeout=600)
        nodes[user] = wait_for_running_task(swarm, f"{PREFIX}-{user}")
    assert set(nodes.values()) == {node.node_id for node in swarm.nodes}
    [on_worker] = [user for user in users if nodes[user] == swarm.workers[0].node_id]

    def measured() -> set[tuple[str, str, str]]:
        series = [
            sample["metric"]
            for metric in ("labhub_container_cpu_seconds_total", "labhub_container_memory_bytes")
            for sample in prometheus_query(swarm_stack, f"{metric} > 0")
        ]
        return {(s["__name__"], s.get("user", ""), s.get("node", "")) for s in series}

    wanted = {
        (metric, user, nodes[user])
        for metric in ("labhub_container_cpu_seconds_total", "labhub_container_memory_bytes")
        for user in users
    }
    wait_until(lambda: wanted <= measured(), 150, "both servers' CPU and memory in Prometheus")
    assert prometheus_query(swarm_stack, 'up{job="jupyterhub"} == 1')
    assert prometheus_query(swarm_stack, "labhub_container_proxies_failed == 0")
    # The attack: from the worker's student's server, the metrics proxies' tasks (one on
    # each node, on their own internal overlay network) by name and by address.
    worker = swarm.workers[0]
    container = running_container(worker, f"{PREFIX}-{on_worker}")
    proxies = {node.node_id: metrics_proxy_address(node) for node in swarm.nodes}
    for host in (f"tasks.{METRICS_PROXIES}", METRICS_PROXIES, *proxies.values()):
        tried = worker.docker("exec", container, "perl", "-e", CONNECT, host, "2375")
        assert tried.startswith("failed"), (host, tried)
    # The exporter, which does reach them, gets no more than the metrics reads: the worker's
    # proxy refuses an unfiltered list of its containers.
    unfiltered = swarm_stack.manager.docker(
        "exec", f"{STACK}-container-metrics-1", "python", "-c", STATUS_OF,
        f"http://{proxies[worker.node_id]}:2375/containers/json",
    )  # fmt: skip
    assert unfiltered.strip() == "403", unfiltered
    for user in users:
        clients[user].stop_server(user)


def test_a_home_from_before_swarm_mode_is_kept_on_its_node_at_the_first_spawn(
    swarm_stack: SwarmStack,
) -> None:
    """A lab moving from one host to Swarm keeps its students' files: a user whose home
    volume is already on a node (and who has no home node recorded) is placed there, even
    where the load alone would choose the other node."""
    stack, manager = swarm_stack.stack, swarm_stack.manager
    # Another student's server makes one node the busier one; the old home goes there.
    busy = stack.client()
    assert busy.login("swann", stack.ensure_account("swann"), follow=False).status_code == 302
    busy.start_server("swann", timeout=600)
    node = swarm_stack.node(wait_for_running_task(swarm_stack.swarm, f"{PREFIX}-swann"))
    user = "swold"
    node.docker(
        "run", "--rm", "--network", "none", "--user", "1000:100",
        "--volume", f"{volume_name_for(user, STACK)}:/home/jovyan", WORKSPACE_IMAGE,
        "sh", "-c", "echo written on one host > /home/jovyan/before-swarm.txt",
    )  # fmt: skip
    client = stack.client()
    assert client.login(user, stack.ensure_account(user), follow=False).status_code == 302
    client.start_server(user, timeout=600)
    assert wait_for_running_task(swarm_stack.swarm, f"{PREFIX}-{user}") == node.node_id
    container = running_container(node, f"{PREFIX}-{user}")
    text = node.docker("exec", container, "cat", "/home/jovyan/before-swarm.txt")
    assert text.strip() == "written on one host"
    for name, session in ((user, client), ("swann", busy)):
        session.stop_server(name)
        assert not manager.docker("service", "ls", "--quiet", "--filter", f"name={PREFIX}-{name}")


def test_make_up_again_gives_the_egress_proxy_changed_rules_and_a_running_server_its_frontends(
    swarm_stack: SwarmStack,
) -> None:
    """Squid and the frontends' guards read the files make up writes only when their
    container starts. An admin who changes USER_EGRESS_ALLOW and runs make up again gets the
    egress proxy recreated with the new rules (their hash is its label; the hub too, for
    its .env), while CHP, whose file did not change, keeps running; make up with nothing
    changed recreates none. A new container is on no user's network: the hub's polls
    connect the new hub and egress proxy to a server's network that ran all along."""
    stack, manager, env = swarm_stack.stack, swarm_stack.manager, swarm_stack.env_file
    egress, chp, hub = (f"{STACK}-{name}" for name in ("egress", "proxy-chp", "hub"))

    def containers() -> dict[str, str]:
        return {
            name: manager.docker("inspect", "--format", "{{.Id}}", name).strip()
            for name in (egress, chp, hub)
        }

    def up() -> None:
        done = make("up", env, swarm_stack.docker_host, "BUILD=no", *swarm_stack.make_args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    user = "swrules"
    client = stack.client()
    assert client.login(user, stack.ensure_account(user), follow=False).status_code == 302
    client.start_server(user, timeout=600)
    network = user_network_name(user, STACK)

    def on_network() -> set[str]:
        found = manager.docker("network", "inspect", "--format", "{{json .Containers}}", network)
        return {endpoint["Name"] for endpoint in (json.loads(found) or {}).values()}

    assert {egress, chp, hub} <= on_network()
    before = containers()
    up()
    assert containers() == before
    env.write_text(env.read_text() + "USER_EGRESS_ALLOW=192.168.77.7\n")
    up()
    after = containers()
    assert after[egress] != before[egress] and after[chp] == before[chp]
    assert after[hub] != before[hub]  # USER_EGRESS_ALLOW is in its environment too
    conf = manager.docker("exec", egress, "cat", "/etc/squid/squid.conf")
    assert "192.168.77.7" in conf and conf == (REPO / ".build/egress/squid.conf").read_text()
    # The hub polls every server at its start and every 30 s (JupyterHub's poll_interval).
    wait_until(lambda: {egress, chp, hub} <= on_network(), 120, "the new frontends to rejoin")
    response = client.session.get(stack.base_url + f"/user/{user}/api", timeout=60)
    assert response.status_code == 200 and "version" in response.json(), response.text
    client.stop_server(user)


def test_with_quota_root_a_server_on_the_worker_gets_disk_quota_exceeded_past_its_limit(
    swarm_stack: SwarmStack, quota_root: Path
) -> None:
    """QUOTA_ROOT on a Swarm (the settings refused it before): `make up` again with it runs
    the diskquota service on every node; each new user's home is a subvolume with the
    DISK_QUOTA limit on its node, and the server on the worker, writing past it in its
    container, gets "Disk quota exceeded"; the student's api/me, the admin's Homes table
    and Prometheus show each home's usage and limit, read on its node. Later tests keep
    the stack as it is now."""
    stack, manager, env = swarm_stack.stack, swarm_stack.manager, swarm_stack.env_file
    env.write_text(env.read_text() + f"QUOTA_ROOT={quota_root}\nDISK_QUOTA=40M\n")
    up = make("up", env, swarm_stack.docker_host, "BUILD=no", *swarm_stack.make_args)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert f"diskquota service runs on each of the 2 nodes ({STACK}-diskquota)" in up.stdout
    # Two first spawns at once-empty nodes: one on each, so one on the worker.
    users, clients, nodes = ("swquota1", "swquota2"), {}, {}
    for user in users:
        client = clients[user] = stack.client()
        assert client.login(user, stack.ensure_account(user), follow=False).status_code == 302
        client.start_server(user, timeout=600)
        nodes[user] = wait_for_running_task(swarm_stack.swarm, f"{PREFIX}-{user}")
    [user] = [u for u in users if nodes[u] != manager.node_id]
    worker, volume = swarm_stack.node(nodes[user]), volume_name_for(user, STACK)
    container = running_container(worker, f"{PREFIX}-{user}")
    # The worker's engine bound the home onto its subvolume under QUOTA_ROOT.
    mounts = json.loads(worker.docker("inspect", "--format", "{{json .Mounts}}", container))
    [home] = [m for m in mounts if m["Destination"] == "/home/jovyan"]
    assert home["Name"] == volume
    options = worker.docker("volume", "inspect", "--format", "{{json .Options}}", volume)
    assert json.loads(options) == quota_home_options(str(quota_root), volume)
    write = subprocess.run(
        ["docker", "-H", f"unix://{worker.socket}", "exec", container, "sh", "-c",
         "dd if=/dev/zero of=/home/jovyan/big bs=1M count=60 2>&1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert write.returncode != 0 and "Disk quota exceeded" in write.stdout, write.stdout
    # The limit the kernel enforced is DISK_QUOTA's, on that user's subvolume.
    qgroups = run("btrfs", "qgroup", "show", "--raw", "-re", str(quota_root))
    assert str(40 * 2**20) in qgroups, qgroups
    # What was written shows where the student and the admin look, read on each home's node
    # through its Docker proxy: the student's api/me through nginx, with their own token
    # (btrfs commits every 30 s), and the admin page's Homes table, a row per user, both nodes.
    written = int(worker.docker("exec", container, "stat", "-c", "%s", "/home/jovyan/big"))
    me = token_session(stack.ca_file, clients[user].new_token(user))
    home = wait_until(
        lambda: me.get(f"{stack.base_url}/services/gpus/api/me", timeout=60).json()["home"],
        120,
        f"api/me to count {user}'s {written} bytes",
        done=lambda seen: seen is not None and seen["used_bytes"] >= written,
        interval=5,
    )
    assert home["limit_bytes"] == 40 * 2**20, home
    # With the admin's token: the OAuth redirects of a browser login name DOMAIN (localhost),
    # not the manager's address this host reaches nginx at.
    admin = token_session(stack.ca_file, stack.admin().new_token(stack.admins[0]))
    page = admin.get(f"{stack.base_url}/services/gpus/", allow_redirects=False, timeout=60)
    assert page.status_code == 200 and "Home usage not read" not in page.text, page.text[-3000:]
    name, used, limit, _ = homes_row(page.text, user)
    assert (name, limit) == (user, "40.0 MiB")
    assert float(used.removesuffix(" MiB")) >= written / 2**20 - 0.1, (used, written)
    [other] = [u for u in users if u != user]
    assert homes_row(page.text, other)[2] == "40.0 MiB"  # the manager's home, its row too
    # The admin's command line, read the same way: each home with a node that holds it (the
    # test nodes share one btrfs, so each node lists both homes; a real node lists its own).
    listed = swarm_stack.make("disk-usage")
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    mine = [row for row in rows if row[0] == volume and row[1] == worker.node_id]
    assert len(mine) == 1 and mine[0][3] == "40.0", listed.stdout
    assert float(mine[0][2]) >= written / 2**20 - 0.1, (mine, written)
    assert {row[1] for row in rows} == {manager.node_id, worker.node_id}, listed.stdout

    # And Prometheus (MONITORING=true): the worker's student's home as its qgroup counts it,
    # with its limit, read through the worker's metrics proxy (the exporter on the manager
    # has no usage socket of its own in Swarm mode).
    def home_metrics() -> dict[str, float]:
        return {
            sample["metric"]["__name__"]: float(sample["value"][1])
            for sample in prometheus_query(
                swarm_stack, f'{{__name__=~"labhub_home_(used|limit)_bytes",user="{user}"}}'
            )
        }

    measured = wait_until(
        home_metrics,
        120,
        f"{user}'s home usage and limit in Prometheus",
        done=lambda seen: seen.get("labhub_home_used_bytes", 0) >= written,
        interval=5,
    )
    assert measured["labhub_home_limit_bytes"] == 40 * 2**20, measured
    for name in users:
        clients[name].stop_server(name)
        assert not manager.docker("service", "ls", "--quiet", "--filter", f"name={PREFIX}-{name}")


def test_with_quota_root_a_restored_home_keeps_its_quota_and_a_move_mixes_no_homes(
    swarm_stack: SwarmStack, quota_root: Path, tmp_path: Path
) -> None:
    """On the stack the test above left with QUOTA_ROOT (its two students' homes one on each
    node): `make restore ONLY_USERS=` of the worker's student (refused with QUOTA_ROOT
    before) makes the home exactly the backup's again, a file written after the backup
    gone, and still a subvolume with DISK_QUOTA's limit that the kernel enforces, bound by a
    volume with the quota options. `make move-home` onto the manager is refused, nothing
    changed: the test nodes share one btrfs, so the manager already has a home folder of
    that name, which a copy would be written into and the old one's deletion then delete."""
    manager, worker = swarm_stack.manager, swarm_stack.swarm.workers[0]
    [user] = [
        name
        for name in ("swquota1", "swquota2")
        if volume_name_for(name, STACK) in worker.docker("volume", "ls", "--quiet").split()
    ]
    volume, home = volume_name_for(user, STACK), quota_root / volume_name_for(user, STACK)
    client = swarm_stack.stack.client()
    assert (
        client.login(user, swarm_stack.stack.ensure_account(user), follow=False).status_code == 302
    )

    def in_server(script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert wait_for_running_task(swarm_stack.swarm, f"{PREFIX}-{user}") == worker.node_id
        container = running_container(worker, f"{PREFIX}-{user}")
        return subprocess.run(
            ["docker", "-H", f"unix://{worker.socket}", "exec", container, "sh", "-c", script],
            capture_output=True, text=True, check=check,
        )  # fmt: skip

    # The test above left the home full, where no server starts: its file goes, committed.
    (home / "big").unlink(missing_ok=True)
    run("btrfs", "filesystem", "sync", str(quota_root))
    client.start_server(user, timeout=600)
    in_server("echo backed-up > /home/jovyan/kept.txt")
    _, folder = swarm_stack.backup_into(tmp_path / "backups")
    in_server("cd /home/jovyan && echo changed > kept.txt && echo new > after-backup.txt")
    client.stop_server(user)
    restored = make(
        "restore", swarm_stack.env_file, swarm_stack.docker_host, f"BACKUP={folder}",
        f"ONLY_USERS={user}", timeout=900,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    # At the file system every node's QUOTA_ROOT is here: the backup's files, nothing newer,
    # in a subvolume whose qgroup has DISK_QUOTA's limit; the worker's volume bound onto it.
    assert (home / "kept.txt").read_text() == "backed-up\n"
    assert not (home / "after-backup.txt").exists()
    subvolume_id = run("btrfs", "subvolume", "show", str(home)).split("Subvolume ID:")[1].split()[0]
    qgroups = run("btrfs", "qgroup", "show", "--raw", "-re", str(quota_root)).splitlines()
    [limit] = [line.split()[3] for line in qgroups if line.split()[:1] == [f"0/{subvolume_id}"]]
    assert limit == str(40 * 2**20), qgroups
    options = worker.docker("volume", "inspect", "--format", "{{json .Options}}", volume)
    assert json.loads(options) == quota_home_options(str(quota_root), volume)
    # The next spawn, on the worker again, sees the backup's files and is held to the quota.
    client.start_server(user, timeout=600)
    assert in_server("cat /home/jovyan/kept.txt").stdout == "backed-up\n"
    write = in_server("dd if=/dev/zero of=/home/jovyan/big bs=1M count=60 2>&1", check=False)
    assert write.returncode != 0 and "Disk quota exceeded" in write.stdout, write.stdout
    client.stop_server(user)
    moved = make(
        "move-home", swarm_stack.env_file, swarm_stack.docker_host, f"USER={user}",
        f"NODE={manager.node_id}", timeout=600,
    )  # fmt: skip
    assert moved.returncode == 2, moved.stdout[-3000:] + moved.stderr[-3000:]
    assert f"node {manager.node_id} already has a home folder {home}" in moved.stderr
    assert volume not in manager.docker("volume", "ls", "--quiet").split()
    assert volume in worker.docker("volume", "ls", "--quiet").split()
    assert (home / "kept.txt").read_text() == "backed-up\n"


def test_make_remove_user_volume_removes_a_deleted_users_home_on_its_node_and_its_quota(
    swarm_stack: SwarmStack, quota_root: Path
) -> None:
    """The admin deletes the worker's quota student in the hub, then `make remove-user-volume`
    (refused by the manager's Docker proxy before: no volume route there) removes the
    volume on the worker, through its Docker proxy, and its subvolume under QUOTA_ROOT,
    through that node's diskquota service."""
    worker = swarm_stack.swarm.workers[0]
    [user] = [
        name
        for name in ("swquota1", "swquota2")
        if volume_name_for(name, STACK) in worker.docker("volume", "ls", "--quiet").split()
    ]
    volume = volume_name_for(user, STACK)
    refused = make(
        "remove-user-volume", swarm_stack.env_file, swarm_stack.docker_host, f"NAME={user}"
    )
    assert refused.returncode != 0 and "still exists in the hub" in refused.stderr, refused.stderr
    assert (quota_root / volume).is_dir()
    admin = token_session(
        swarm_stack.stack.ca_file, swarm_stack.stack.admin().new_token(swarm_stack.stack.admins[0])
    )
    deleted = admin.delete(f"{swarm_stack.stack.base_url}/hub/api/users/{user}", timeout=60)
    assert deleted.status_code == 204, deleted.text
    removed = make(
        "remove-user-volume", swarm_stack.env_file, swarm_stack.docker_host, f"NAME={user}"
    )
    assert removed.returncode == 0, removed.stdout[-3000:] + removed.stderr[-3000:]
    # One btrfs is every test node's QUOTA_ROOT: whichever node's service comes first deletes.
    assert f"node {worker.node_id}: removed {volume}" in removed.stdout, removed.stdout
    assert "its home under QUOTA_ROOT" in removed.stdout, removed.stdout
    assert volume not in worker.docker("volume", "ls", "--quiet").split()
    assert not (quota_root / volume).exists()


def test_make_up_refuses_a_swarm_worker_naming_the_manager(swarm_stack: SwarmStack) -> None:
    worker = swarm_stack.swarm.workers[0]
    up = make("up", swarm_stack.env_file, f"unix://{worker.socket}", "BUILD=no")
    assert up.returncode == 2, up.stdout[-2000:]
    assert "is a Swarm worker, not a manager" in up.stderr, up.stderr[-2000:]
    assert "make up on a manager" in up.stderr
    assert not worker.docker(
        "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={STACK}"
    )


def test_make_down_removes_the_platform_and_the_overlay_but_keeps_the_homes(
    swarm_stack: SwarmStack,
) -> None:
    manager = swarm_stack.manager
    down = swarm_stack.make("down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert not manager.docker(
        "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={STACK}"
    )
    assert not manager.docker("service", "ls", "--quiet")
    networks = manager.docker("network", "ls", "--format", "{{.Name}}").split()
    assert STACK not in networks
    assert f"{STACK}-diskquota" not in networks  # the quota test's diskquota services' own
    homes = [
        volume
        for node in swarm_stack.swarm.nodes
        for volume in node.docker("volume", "ls", "--quiet").split()
    ]
    assert {volume_name_for(user, STACK) for user in ("swann", "swbob")} <= set(homes)


# make backup and make restore read and write each home on its node in Swarm mode
# (tests/test_swarm_nodes.py); a backup that fails its checksums is refused before any.
def test_restore_in_swarm_mode_refuses_a_damaged_backup_before_anything(tmp_path: Path) -> None:
    env_file = swarm_env(tmp_path, "127.0.0.1")
    backups = tmp_path / "backups"
    folder = backups / "20261202T000000Z"
    (folder / "volumes").mkdir(parents=True)
    (folder / "volumes" / "x.tar.gz").write_bytes(b"as backed up")
    subprocess.run(
        "sha256sum volumes/x.tar.gz > SHA256SUMS", shell=True, cwd=folder, check=True
    )  # fmt: skip
    (folder / "volumes" / "x.tar.gz").write_bytes(b"damaged")
    result = subprocess.run(
        ["make", "--no-print-directory", "restore", f"ENV_FILE={env_file}", f"BACKUP={folder}"],
        cwd=REPO, text=True, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"restore: {folder} fails its checksums, nothing restored" in result.stderr
    assert [path.name for path in backups.iterdir()] == [folder.name]
