"""The monitoring profile on a running stack: a real Prometheus scrapes the hub with its
read:metrics token, that token reads nothing else, every panel of the shipped dashboard
has data, a student's CPU and memory are measured as the engine sees them, and the
exporter's Docker proxy reads nothing but user containers' stats, and the idle culler's
stops show in the culls panel."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from browser import ARTIFACTS, CHROMIUM, chromium
from docker.models.containers import Container
from labhub import diskquota
from labhub.contract import OWNER_LABEL, volume_name_for
from labhub.dockerpolicy import metrics_list_filters
from loopfs import stack_with_quotas
from monitoring import (
    DASHBOARD,
    EVENT_METRICS,
    QUOTA_METRICS,
    dashboard_queries,
    panel_queries,
    prometheus_of,
    query,
    wait_for_data,
)
from stacks import HTTPS_PORT, REPO, STACK, USERS_CREATED, Stack, launched_stack

from testsupport.browsing import despite_network_changes
from testsupport.containers import user_container, user_containers
from testsupport.images import ensure_base_image
from testsupport.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Iterator[str]:
    with prometheus_of(stack) as url:
        yield url


def test_prometheus_scrapes_the_hub_with_its_token(prometheus: str) -> None:
    assert wait_for_data(prometheus, ['up{job="jupyterhub"} == 1']) == []
    targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    hub = [t for t in targets["activeTargets"] if t["labels"]["job"] == "jupyterhub"]
    assert [(t["health"], t["lastError"]) for t in hub] == [("up", "")]


def test_the_metrics_token_reads_the_metrics_and_nothing_else(stack: Stack) -> None:
    """The campus way: https://DOMAIN/hub/metrics through nginx, with the token."""
    token = stack.value("PROMETHEUS_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"}
    metrics = requests.get(
        f"{stack.base_url}/hub/metrics", headers=headers, verify=stack.ca_file, timeout=30
    )
    assert metrics.status_code == 200 and "jupyterhub_running_servers" in metrics.text
    users = requests.get(
        f"{stack.base_url}/hub/api/users", headers=headers, verify=stack.ca_file, timeout=30
    )
    assert users.status_code == 403
    anonymous = requests.get(f"{stack.base_url}/hub/metrics", verify=stack.ca_file, timeout=30)
    assert anonymous.status_code == 403
    assert "jupyterhub_running_servers" not in anonymous.text


def test_every_dashboard_panel_has_data_after_a_student_spawns(
    stack: Stack, prometheus: str, username: str
) -> None:
    student = stack.login(username)
    student.start_server(username)
    queries = dashboard_queries(gpu=False)
    assert len(queries) >= 8
    assert wait_for_data(prometheus, queries) == []
    running = query(prometheus, "jupyterhub_running_servers")
    assert float(running[0]["value"][1]) >= 1
    # Culls show once a culler stopped a server (test_the_idle_cullers_stops_...): here,
    # only that Prometheus takes the query.
    for expr in panel_queries(EVENT_METRICS):
        query(prometheus, expr)


def test_the_dashboard_is_provisioning_ready() -> None:
    """Each panel names the datasource uid the provisioning file creates."""
    datasources = (REPO / "compose/monitoring/grafana/datasources.yml").read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {"labhub-prometheus"} and "uid: labhub-prometheus" in datasources


# A student's load, started from a kernel in a session of its own so that it outlives the
# kernel: 400 MiB written (every page touched), 15 s of CPU time used (however busy the
# host's cores are), then the memory held for 5 min.
LOAD_PROCESS = """
import time
held = b"x" * (400 << 20)
while time.process_time() < 15:
    pass
time.sleep(300)
"""
LOAD = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {LOAD_PROCESS!r}], start_new_session=True)
print("load started")
"""


def value(prometheus: str, expr: str) -> float:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else 0.0


def seen_30_mib_home(prometheus: str, username: str) -> str:
    """Wait until Prometheus has `username`'s home at 30 MiB or more (the test wrote it);
    return the series' query, to compare with what the engine or the filesystem says."""
    used = f'labhub_home_used_bytes{{user="{username}"}}'
    wait_until(
        lambda: value(prometheus, used),
        150,
        f"Prometheus to see {username}'s 30 MiB home (bytes)",
        done=lambda seen: seen >= 30 * 2**20,
        interval=5,
    )
    return used


def engine_memory(container: Container) -> int:
    """What `docker stats` shows, read at the engine: usage less the inactive page cache."""
    memory = container.stats(stream=False)["memory_stats"]
    counters = memory["stats"]
    inactive = counters.get("total_inactive_file", counters.get("inactive_file", 0))
    return int(memory["usage"] - inactive)


def test_a_students_cpu_and_memory_are_measured_as_the_engine_sees_them(
    stack: Stack, prometheus: str, username: str
) -> None:
    student = stack.login(username)
    student.start_server(username)
    mine = f'user="{username}"'
    memory = f"labhub_container_memory_bytes{{{mine}}}"
    cpu = f"labhub_container_cpu_seconds_total{{{mine}}}"
    assert wait_for_data(prometheus, [cpu]) == []
    before = value(prometheus, cpu)
    assert "load started" in stack.run(student, username, LOAD)
    wait_until(
        lambda: (value(prometheus, memory), value(prometheus, cpu) - before),
        240,
        f"Prometheus to see {username}'s 400 MiB and 15 s of CPU (bytes, CPU seconds)",
        done=lambda seen: seen[0] > 400 * 2**20 and seen[1] >= 15,
        interval=5,
    )
    container = user_container(STACK, username)
    assert value(prometheus, memory) == pytest.approx(engine_memory(container), rel=0.15)
    limit = value(prometheus, f"labhub_container_memory_limit_bytes{{{mine}}}")
    assert limit == container.attrs["HostConfig"]["Memory"] == 3 * 2**30
    # The engine's own CPU counter has gone on from the last value Prometheus read.
    engine_cpu = container.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
    assert value(prometheus, cpu) <= engine_cpu
    assert value(prometheus, f"rate({cpu}[1m])") > 0
    # One series, labelled by user and server (the default server has no name).
    series = query(prometheus, memory)
    assert [(s["metric"]["user"], s["metric"].get("server", "")) for s in series] == [
        (username, "")
    ]
    assert value(prometheus, "labhub_container_stats_failed") == 0
    if Path(CHROMIUM).exists():
        screenshot_graph(stack, prometheus, f"rate({cpu}[1m])", ARTIFACTS / "prometheus-cpu.png")


def screenshot_graph(stack: Stack, prometheus: str, expr: str, path: Path) -> None:
    """Prometheus's own graph page for a per-user query, kept for docs/monitoring.md.

    Debian's Prometheus serves its classic UI (/classic), not the React one."""
    params = {"g0.expr": expr, "g0.tab": "0", "g0.range_input": "2m"}
    with chromium(stack) as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 620})
        despite_network_changes(
            lambda: page.goto(f"{prometheus}/classic/graph?{urllib.parse.urlencode(params)}")
        )
        page.locator(".graph_area svg path").first.wait_for(timeout=60_000)
        page.screenshot(path=str(path), full_page=True)


def proxied(exporter: Container, method: str, target: str) -> tuple[int, str]:
    """One request, as raw bytes, from inside the exporter's container to its Docker proxy."""
    request = f"{method} {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode()
    code = (
        "import socket, sys\n"
        "s = socket.create_connection(('metrics-docker-proxy', 2375), timeout=20)\n"
        f"s.sendall({request!r})\n"
        "answer = b''\n"
        "while chunk := s.recv(65536):\n"
        "    answer += chunk\n"
        "sys.stdout.write(answer.decode(errors='replace'))\n"
    )
    result = exporter.exec_run(["python", "-c", code])
    assert result.exit_code == 0, result.output
    answer = result.output.decode()
    return int(answer.split(" ", 2)[1]), answer


def fresh_disk_usage(exporter: Container) -> None:
    """Restart the exporter's proxy, which asks the engine's disk usage at most every
    5 min, so that its next answer is read now; wait until it answers again."""
    compose_service("metrics-docker-proxy").restart()
    wait_until(
        lambda: proxied(exporter, "GET", "/_ping")[0],
        30,
        "the restarted metrics proxy to answer",
        done=lambda status: status == 200,
        ignoring=(AssertionError,),
    )


def compose_service(name: str) -> Container:
    """The running container of this test stack's compose service `name`."""
    labels = [f"com.docker.compose.project={STACK}", f"com.docker.compose.service={name}"]
    found: list[Container] = docker.from_env().containers.list(filters={"label": labels})
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def other_stacks_user() -> Iterator[Container]:
    """A user container as another stack on this engine would have one: the owner label,
    not this stack's network."""
    container = docker.from_env().containers.run(
        ensure_base_image(),
        ["sleep", "300"],
        labels={OWNER_LABEL: "intruder", "labhub.test": "monitoring"},
        network_mode="none",
        detach=True,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def test_the_exporters_proxy_reads_user_containers_stats_and_nothing_else(
    stack: Stack, prometheus: str, username: str, other_stacks_user: Container
) -> None:
    """A compromised exporter, attacking from its own container with raw requests."""
    student = stack.login(username)
    student.start_server(username)
    exporter, hub = compose_service("container-metrics"), compose_service("hub")
    mine = user_container(STACK, username)
    status, answer = proxied(
        exporter, "GET", f"/containers/{mine.id}/stats?stream=false&one-shot=true"
    )
    assert status == 200 and '"memory_stats"' in answer
    listing = urllib.parse.urlencode({"filters": json.dumps(metrics_list_filters(STACK))})
    status, answer = proxied(exporter, "GET", f"/containers/json?{listing}")
    assert status == 200 and mine.id in answer and hub.id not in answer
    # Disk usage: the sizes of this stack's user volumes, none of the engine's images,
    # containers, or other volumes (the hub's, other stacks' users').
    fresh_disk_usage(exporter)
    status, answer = proxied(exporter, "GET", "/system/df")
    sizes = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert status == 200 and list(sizes) == ["Volumes"], answer[:300]
    assert volume_name_for(username, STACK) in sizes["Volumes"]
    assert all(name.startswith(f"{STACK}-user-") for name in sizes["Volumes"]), sizes
    engine_volumes = {volume["Name"] for volume in docker.from_env().df()["Volumes"]}
    assert set(sizes["Volumes"]) < engine_volumes
    refused = [
        ("GET", "/system/df?type=volume", "takes no parameters"),
        ("GET", "/system/info", "not needed by the metrics exporter"),
        ("GET", f"/containers/{hub.id}/stats?stream=false", "not a labhub user container"),
        ("GET", f"/containers/{exporter.id}/stats?stream=false", "not a labhub user container"),
        (
            "GET",
            f"/containers/{other_stacks_user.id}/stats?stream=false",
            "not a user container of this stack",
        ),
        ("GET", "/containers/json?all=1", "user containers only"),
        # A user container's inspect shows its environment: the user's hub API token.
        ("GET", f"/containers/{mine.id}/json", "not needed by the metrics exporter"),
        ("GET", f"/containers/{mine.id}/stats?stream=true", "stream=false"),
        ("GET", f"/containers/{mine.id}/logs?stdout=1", "not needed by the metrics exporter"),
        ("POST", f"/containers/{mine.id}/stop", "only reads"),
        ("POST", f"/containers/{mine.id}/kill", "only reads"),
    ]
    for method, target, reason in refused:
        status, answer = proxied(exporter, method, target)
        assert status == 403 and reason in answer, (method, target, answer[:300])
    # At the engine: the student's server still runs.
    mine.reload()
    assert mine.status == "running"


def test_without_quotas_a_students_home_is_measured_as_the_engine_sizes_it(
    stack: Stack, prometheus: str, username: str
) -> None:
    student = stack.login(username)
    student.start_server(username)
    assert "written" in stack.run(student, username, WRITE_30M)
    fresh_disk_usage(compose_service("container-metrics"))
    used = seen_30_mib_home(prometheus, username)
    # At the engine: the size of the student's home volume, as `docker system df -v`.
    volumes = docker.from_env().df()["Volumes"]
    [home] = [v for v in volumes if v["Name"] == volume_name_for(username, STACK)]
    assert value(prometheus, used) == pytest.approx(home["UsageData"]["Size"], rel=0.1)
    # No quota, no limit series; the disk panel's use query has data.
    assert query(prometheus, f'labhub_home_limit_bytes{{user="{username}"}}') == []
    assert wait_for_data(prometheus, panel_queries(("labhub_home_used_bytes",))) == []


WRITE_30M = """
import os
with open("/home/jovyan/blob.bin", "wb") as f:
    f.write(os.urandom(30 << 20))
    f.flush()
    os.fsync(f.fileno())
os.sync()
print("written")
"""

# A second stack, with disk quotas: its name and port follow the default stack's.
QUOTA_STACK, QUOTA_PORT = f"{STACK}q", HTTPS_PORT + 1


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    """A stack with QUOTA_ROOT on a btrfs this test makes on a loop device (100 MiB each)."""
    with stack_with_quotas(tmp_path_factory, QUOTA_STACK, QUOTA_PORT) as (stack, root):
        yield stack, root


def test_a_students_home_is_measured_as_its_qgroup_counts_it(
    quota_stack: tuple[Stack, Path], username: str
) -> None:
    stack, root = quota_stack
    with prometheus_of(stack) as prometheus:
        student = stack.login(username)
        student.start_server(username)
        assert "written" in stack.run(student, username, WRITE_30M)
        used = seen_30_mib_home(prometheus, username)
        # At the filesystem: the qgroup of the student's home subvolume, read on the host.
        home = diskquota.usage(root / volume_name_for(username, QUOTA_STACK))
        assert value(prometheus, used) == pytest.approx(home.used, rel=0.1)
        limit = value(prometheus, f'labhub_home_limit_bytes{{user="{username}"}}')
        assert limit == home.limit == 100 * 2**20
        assert wait_for_data(prometheus, panel_queries(QUOTA_METRICS)) == []


def test_a_student_with_a_quota_starts_their_server_again(
    quota_stack: tuple[Stack, Path], username: str
) -> None:
    """Once the student's server ran, their home is 0700 to them: the diskquota service
    (no CAP_DAC_OVERRIDE) must set the limit again without opening it (it failed so,
    "Permission denied", and the second start answered 500)."""
    stack, root = quota_stack
    student = stack.login(username)
    student.start_server(username)
    assert "written" in stack.run(student, username, WRITE_30M)
    student.stop_server(username)
    student.start_server(username)
    home = root / volume_name_for(username, QUOTA_STACK)
    assert home.stat().st_mode & 0o777 == 0o700
    assert diskquota.usage(home).limit == 100 * 2**20


# A third stack whose idle culler stops a server idle for a minute (checked every minute).
CULL_STACK, CULL_PORT, CULL_IDLE_TIMEOUT = f"{STACK}c", HTTPS_PORT + 2, 60


@pytest.fixture(scope="module")
def culling_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    extra = {"IDLE_TIMEOUT": str(CULL_IDLE_TIMEOUT)}
    with launched_stack(tmp_path_factory, CULL_STACK, CULL_PORT, extra) as stack:
        yield stack


def test_the_idle_cullers_stops_are_counted_in_the_culls_panel(
    culling_stack: Stack, username: str
) -> None:
    """A server without a GPU left idle is stopped by the hub-wide idle culler: the culls
    panel shows it as "hub-idle"; a student stopping their own server is no cull."""
    stack = culling_stack
    hub_culls = 'labhub_culls_total{job="jupyterhub",reason="hub-idle"}'
    with prometheus_of(stack) as prometheus:
        # The series is there at 0 before any cull, so that increase() counts the first.
        assert wait_for_data(prometheus, [hub_culls]) == []
        assert value(prometheus, hub_culls) == 0
        # Stopped by its owner well within the idle timeout: not a cull.
        stopper, idler = f"{username}-own", username
        USERS_CREATED.append(stopper)
        client = stack.login(stopper)
        client.start_server(stopper)
        client.stop_server(stopper)
        # Left idle: the culler stops it within the timeout and one round of the culler.
        student = stack.login(idler)
        student.start_server(idler)
        wait_until(
            lambda: student.api("GET", f"/users/{idler}").json().get("servers"),
            CULL_IDLE_TIMEOUT + 60 + 60,
            f"the idle culler to stop {idler}'s server",
            done=lambda servers: not servers,
            interval=5,
        )
        # At the engine: the server's container is gone (the home volume stays).
        assert user_containers(CULL_STACK, idler) == []
        wait_until(
            lambda: value(prometheus, hub_culls),
            60,
            "Prometheus to scrape the hub's count of the cull",
            done=lambda seen: seen > 0,
            interval=5,
        )
        assert value(prometheus, hub_culls) == 1
        # The dashboard's own culls query returns that cull, by reason.
        [panel] = panel_queries(EVENT_METRICS)
        by_reason = {r["metric"]["reason"]: float(r["value"][1]) for r in query(prometheus, panel)}
        assert by_reason.get("hub-idle", 0) > 0, by_reason
