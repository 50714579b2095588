"""The GPU service's Prometheus metrics, for the people who keep the server running.

At each scrape, from the same record and inventory the admin page shows: per device its
utilisation and memory (NVML, where the host has it), holders, capacity and drain flag;
the queue; GPU-hours per user and group this ISO week against their quota; and, from the
append-only audit log, how many allocations, releases (by reason: idle, stopped, revoked,
...), culls (by reason) and admin actions there have been. `families` is pure;
`MetricsHandler` serves it to a bearer of PROMETHEUS_API_TOKEN (docs/monitoring.md).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from labhub.gpu import quota
from labhub.gpu.allocator import utcnow
from labhub.gpu.api import devices_report
from labhub.gpu.inventory import Inventory
from labhub.gpu.store import Store
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from tornado import web

MIB = 1024**2
# The reason of a "cull" audit entry that names none: the idle cull, which recorded none.
DEFAULT_CULL_REASON = "hub-idle"


def families(
    report: Mapping[str, Any],
    used: Mapping[str, float],
    limits: Mapping[str, float],
    events: Mapping[tuple[str, str], int],
    now: datetime,
) -> list[Metric]:
    """The metric families of one scrape.

    ``report`` is the admin page's devices report, ``used``/``limits`` GPU-hours per
    subject (``user:ada``, ``group:nlp``) this week, ``events`` audit entries counted by
    (action, reason).
    """
    device_labels = ["device", "model"]
    utilisation = GaugeMetricFamily(
        "labhub_gpu_utilisation_ratio", "GPU busy fraction (NVML), 0-1", labels=device_labels
    )
    memory_used = GaugeMetricFamily(
        "labhub_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=device_labels
    )
    memory_total = GaugeMetricFamily(
        "labhub_gpu_memory_total_bytes", "GPU memory of the device", labels=device_labels
    )
    holders = GaugeMetricFamily(
        "labhub_gpu_holders", "Servers holding the device now", labels=device_labels
    )
    capacity = GaugeMetricFamily(
        "labhub_gpu_capacity", "Servers that may hold the device at once", labels=device_labels
    )
    drained = GaugeMetricFamily(
        "labhub_gpu_drained", "1 while an admin drains the device", labels=device_labels
    )
    for device in report["devices"]:
        labels = [device["id"], device["model"]]
        if device["utilisation_percent"] is not None:
            utilisation.add_metric(labels, device["utilisation_percent"] / 100)
        if device["memory_used_mib"] is not None:
            memory_used.add_metric(labels, device["memory_used_mib"] * MIB)
        memory_total.add_metric(labels, device["memory_mib"] * MIB)
        holders.add_metric(labels, len(device["holders"]))
        capacity.add_metric(labels, device["capacity"])
        drained.add_metric(labels, 1 if device["drained_since"] else 0)

    queue = report["queue"]
    queued = GaugeMetricFamily("labhub_gpu_queue_length", "Spawns waiting for a GPU")
    queued.add_metric([], len(queue))
    oldest = GaugeMetricFamily(
        "labhub_gpu_queue_oldest_wait_seconds", "How long the first in the queue has waited"
    )
    waits = [(now - datetime.fromisoformat(entry["since"])).total_seconds() for entry in queue]
    oldest.add_metric([], max(waits, default=0.0))

    hours = GaugeMetricFamily(
        "labhub_gpu_hours_used", "GPU-hours used this ISO week", labels=["subject"]
    )
    for subject, value in sorted(used.items()):
        hours.add_metric([subject], value)
    quota_hours = GaugeMetricFamily(
        "labhub_gpu_quota_hours", "GPU-hour quota this ISO week, top-ups included",
        labels=["subject"],
    )  # fmt: skip
    for subject, value in sorted(limits.items()):
        quota_hours.add_metric([subject], value)

    counted = CounterMetricFamily(
        "labhub_gpu_events", "Audit log entries by action and reason", labels=["action", "reason"]
    )
    for (action, reason), count in sorted(events.items()):
        counted.add_metric([action, reason], count)
    return [
        utilisation, memory_used, memory_total, holders, capacity, drained, queued, oldest,
        hours, quota_hours, counted, culls(events),
    ]  # fmt: skip


def culls(events: Mapping[tuple[str, str], int]) -> CounterMetricFamily:
    """Servers stopped by a culler, by reason ("hub-idle", "gpu-utilisation-idle",
    "session-length", ...): the audit entries of action "cull"."""
    by_reason: dict[str, int] = {}
    for (action, reason), count in events.items():
        if action == "cull":
            key = reason or DEFAULT_CULL_REASON
            by_reason[key] = by_reason.get(key, 0) + count
    family = CounterMetricFamily("labhub_culls", "Servers culled, by reason", labels=["reason"])
    for reason, count in sorted(by_reason.items()):
        family.add_metric([reason], count)
    return family


class Snapshot:
    """A collector of metric families made beforehand (prometheus_client's exposition)."""

    def __init__(self, made: list[Metric]) -> None:
        self.made = made

    def collect(self) -> Iterator[Metric]:
        yield from self.made


class MetricsHandler(web.RequestHandler):
    """GET metrics: Prometheus text for a bearer of PROMETHEUS_API_TOKEN, 403 otherwise."""

    def check_xsrf_cookie(self) -> None:  # GET only; a token, not a cookie
        return None

    def authorised(self) -> bool:
        expected: str | None = self.settings["metrics_token"]
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        return bool(
            expected
            and scheme.lower() in ("bearer", "token")
            and hmac.compare_digest(given.strip().encode(), expected.encode())
        )

    async def get(self) -> None:
        if not self.authorised():
            raise web.HTTPError(403, "send PROMETHEUS_API_TOKEN as 'Authorization: Bearer ...'")
        store: Store = self.settings["gpu_store"]
        inventory: Inventory = self.settings["gpu_inventory"]
        policy: quota.QuotaPolicy = self.settings["gpu_quota"]
        now = utcnow()
        report = await devices_report(store, inventory, self.settings["gpu_readings"])
        used, topups = await asyncio.to_thread(store.week_ledgers, now)
        events = await asyncio.to_thread(store.event_counts)
        users = [s.split(":", 1)[1] for s in used if s.startswith("user:")]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            Snapshot(
                families(
                    report,
                    used,
                    quota.limits(policy, users, policy.group_hours, topups),
                    events,
                    now,
                )
            )
        )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(registry))
