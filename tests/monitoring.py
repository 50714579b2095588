"""A stack's Prometheus (compose profile "monitoring") and queries against it, for the
monitoring tests of the CPU stack and the GPU stack."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import requests
from stacks import REPO, Stack

from testsupport.waiting import wait_until

DASHBOARD = REPO / "compose/monitoring/grafana/dashboards/labhub.json"
# Read from NVML (nvidia-smi) in the hub container: no data on a host without it.
NVML_METRICS = ("labhub_gpu_utilisation_ratio", "labhub_gpu_memory_used_bytes")
# Counters with no series until the event happens once (a culler stopping a server).
EVENT_METRICS = ("labhub_culls_total",)
# The homes' disk: the limit only with QUOTA_ROOT; without it, the use is read from the
# engine every 5 min, so a home made since shows up to 5 min later.
QUOTA_METRICS = ("labhub_home_used_bytes", "labhub_home_limit_bytes")
# The compose profile "monitoring": removed together after a test, so that no later test
# finds a socket holder it does not expect.
MONITORING_SERVICES = ("prometheus", "container-metrics", "metrics-docker-proxy")


@contextlib.contextmanager
def prometheus_of(stack: Stack) -> Iterator[str]:
    """The stack's own Prometheus service, started from its compose file, removed after."""
    # --build: the image of this checkout, not one left by an earlier run under the tag.
    # Its dependencies (the per-user exporter and its Docker proxy) start with it.
    started = stack.compose(
        "--profile", "monitoring", "up", "-d", "--build", "--wait", "prometheus", check=False
    )
    assert started.returncode == 0, f"the monitoring profile did not start: {started.stderr}"
    try:
        yield f"http://127.0.0.1:{stack.value('PROMETHEUS_PORT')}"
    finally:
        stack.compose(
            "--profile", "monitoring", "rm", "--stop", "--force", "-v", *MONITORING_SERVICES
        )


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; raises on a query Prometheus refuses (a broken panel)."""
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def wait_for_data(prometheus: str, exprs: list[str], timeout: float = 150) -> list[str]:
    """The expressions that still return nothing after `timeout` (scrapes are every 15 s)."""
    missing = list(exprs)

    def still_missing() -> list[str]:
        missing[:] = [expr for expr in missing if not query(prometheus, expr)]
        return missing

    with contextlib.suppress(TimeoutError):
        wait_until(still_missing, timeout, "data for every query", done=lambda m: not m, interval=5)
    return missing


def panel_queries(metrics: tuple[str, ...] = ()) -> list[str]:
    """Every panel query of the shipped dashboard, or those that read one of `metrics`."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return [expr for expr in exprs if not metrics or any(m in expr for m in metrics)]


def dashboard_queries(gpu: bool) -> list[str]:
    """The panel queries that have data on any running stack, of the GPU panels or of the
    others (not those of events or of disk quotas)."""
    rare = EVENT_METRICS + QUOTA_METRICS
    return [
        expr
        for expr in panel_queries()
        if ("labhub_gpu" in expr) == gpu and not any(m in expr for m in rare)
    ]
