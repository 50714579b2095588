"""The GPU service's /metrics: what a scrape reads, and who may read it."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from types import SimpleNamespace

import pytest
from labhub.gpu import metrics
from labhub.gpu.allocator import utcnow
from labhub.gpu.inventory import Device
from labhub.gpu.quota import QuotaPolicy
from labhub.gpu.scheduler import GpuRequest, Holder
from labhub.gpu.service import make_app
from labhub.gpu.store import Store
from prometheus_client.parser import text_string_to_metric_families
from tornado import web
from tornado.testing import AsyncHTTPTestCase

from .conftest import NOW

pytestmark = pytest.mark.unit

TOKEN = "m" * 64
INVENTORY = (
    Device(id="0", model="Test A100", memory_mib=40960),
    Device(id="1", model="Test T4", memory_mib=16384, policy="shared", max_holders=2),
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class MetricsTest(AsyncHTTPTestCase):
    def get_app(self) -> web.Application:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.store = Store(f"{self.tmp.name}/gpu.sqlite")
        self.policy = QuotaPolicy(user_hours=10, group_hours={"nlp": 100})
        return make_app(
            self.store, INVENTORY, object(), "/services/gpus/", "http://hub/api/", "t",
            self.policy, TOKEN,
        )  # fmt: skip

    def scrape(self, authorization: str | None = f"Bearer {TOKEN}") -> tuple[int, str]:
        headers = {"Authorization": authorization} if authorization else {}
        response = self.fetch("/services/gpus/metrics", headers=headers)
        return response.code, response.body.decode()

    def test_holders_capacity_queue_hours_and_events_are_exported(self) -> None:
        # The service reads this ISO week's ledger: the spawns happen now.
        now = utcnow()
        ada = Holder("ada", groups=frozenset({"nlp"}))
        self.store.allocate(INVENTORY, ada, GpuRequest(whole=1), now - timedelta(hours=2))
        bo = Holder("bo")
        self.store.allocate(INVENTORY, bo, GpuRequest(shared=True), now - timedelta(hours=2))
        self.store.release("bo", now, reason="idle")
        code, text = self.scrape()
        assert code == 200
        got = samples(text)
        a100 = (("device", "0"), ("model", "Test A100"))
        t4 = (("device", "1"), ("model", "Test T4"))
        assert got[("labhub_gpu_holders", a100)] == 1
        assert got[("labhub_gpu_holders", t4)] == 0
        assert got[("labhub_gpu_capacity", t4)] == 2
        assert got[("labhub_gpu_memory_total_bytes", a100)] == 40960 * 1024**2
        assert got[("labhub_gpu_queue_length", ())] == 0
        # bo held half a T4 for two hours: one GPU-hour, against a 10-hour user quota.
        assert got[("labhub_gpu_hours_used", (("subject", "user:bo"),))] == pytest.approx(1.0)
        assert got[("labhub_gpu_quota_hours", (("subject", "user:bo"),))] == 10
        assert got[("labhub_gpu_quota_hours", (("subject", "group:nlp"),))] == 100
        assert got[("labhub_gpu_events_total", (("action", "allocate"), ("reason", "")))] == 2
        assert got[("labhub_gpu_events_total", (("action", "release"), ("reason", "idle")))] == 1

    def test_a_recorded_cull_is_scraped_as_a_cull(self) -> None:
        """Through the store's real audit log and the handler, as Prometheus reads it."""
        now = utcnow()
        self.store.record("gpu-idle-culler", "cull", now, holder="ada/", idle_seconds=900)
        self.store.record("gpu-culler", "cull", now, holder="bo/", reason="session-length")
        code, text = self.scrape()
        assert code == 200
        got = samples(text)
        assert got[("labhub_culls_total", (("reason", "hub-idle"),))] == 1
        assert got[("labhub_culls_total", (("reason", "session-length"),))] == 1

    def test_without_the_token_there_is_nothing(self) -> None:
        for authorization in (None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "):
            code, text = self.scrape(authorization)
            assert code == 403, authorization
            assert "labhub_gpu" not in text


def test_no_token_configured_means_no_metrics() -> None:
    """PROMETHEUS_API_TOKEN empty: even an empty bearer is refused."""

    handler = metrics.MetricsHandler.__new__(metrics.MetricsHandler)
    handler.request = SimpleNamespace(headers={"Authorization": "Bearer "})  # type: ignore[assignment]
    handler.application = web.Application(metrics_token=None)
    assert not handler.authorised()


def test_the_oldest_waits_time_is_read_from_the_queue() -> None:
    report = {"devices": [], "queue": [{"holder": "x", "request": "r", "since": NOW.isoformat()}]}
    made = metrics.families(report, {}, {}, {}, NOW + timedelta(seconds=90))
    oldest = next(f for f in made if f.name == "labhub_gpu_queue_oldest_wait_seconds")
    assert [s.value for s in oldest.samples] == [90.0]


def test_culls_are_counted_by_reason_and_an_unnamed_reason_is_the_idle_cull() -> None:
    """The GPU idle culler's entries carry no reason (hub-idle); newer ones name theirs."""
    events = {
        ("cull", ""): 2,
        ("cull", "hub-idle"): 1,
        ("cull", "session-length"): 4,
        ("release", "idle"): 7,
    }
    made = metrics.families({"devices": [], "queue": []}, {}, {}, events, NOW)
    family = next(f for f in made if f.name == "labhub_culls")
    assert {s.labels["reason"]: s.value for s in family.samples} == {
        "hub-idle": 3,
        "session-length": 4,
    }
