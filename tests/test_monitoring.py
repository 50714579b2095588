"""The monitoring profile on a running stack: a real Prometheus scrapes the hub with its
read:metrics token, that token reads nothing else, and every panel of the shipped
dashboard has data."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from monitoring import DASHBOARD, dashboard_queries, prometheus_of, query, wait_for_data
from stacks import REPO, Stack

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


def test_the_dashboard_is_provisioning_ready() -> None:
    """Each panel names the datasource uid the provisioning file creates."""
    datasources = (REPO / "compose/monitoring/grafana/datasources.yml").read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {"labhub-prometheus"} and "uid: labhub-prometheus" in datasources
