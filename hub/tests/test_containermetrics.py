"""The per-user container metrics: how a stats sample is read, and a scrape's bounds."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from labhub import containermetrics, diskquota
from labhub.containermetrics import SWARM_NODE_LABEL, Engine, Usage, families, usage_of
from labhub.contract import OWNER_LABEL, SERVER_LABEL, volume_name_for
from prometheus_client.parser import text_string_to_metric_families
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

pytestmark = pytest.mark.unit

LABELS = {OWNER_LABEL: "ada", SERVER_LABEL: ""}


async def scrape(engine: Engine) -> str:
    """The exporter's /metrics read once over HTTP, as Prometheus reads it."""
    exporter_socket, exporter_port = bind_unused_port()
    exporter = HTTPServer(containermetrics.make_app(engine))
    exporter.add_sockets([exporter_socket])
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{exporter_port}/metrics")
        return response.body.decode()
    finally:
        client.close()
        exporter.stop()


def stats(
    usage: int, inactive: dict[str, int], cpu_ns: int, limit: int = 3 << 30
) -> dict[str, Any]:
    """The parts of an engine's stats answer (one-shot) that the exporter reads."""
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}},
        "precpu_stats": {"cpu_usage": {"total_usage": 0}},
        "memory_stats": {"usage": usage, "limit": limit, "stats": {"rss": 1, **inactive}},
    }


@pytest.mark.parametrize(
    "inactive",
    [{"total_inactive_file": 100 << 20, "inactive_file": 5}, {"inactive_file": 100 << 20}],
    ids=["cgroup-v1", "cgroup-v2"],
)
def test_memory_is_usage_less_the_inactive_page_cache(inactive: dict[str, int]) -> None:
    sample = usage_of(LABELS, stats(400 << 20, inactive, cpu_ns=2_500_000_000))
    assert sample == Usage("ada", "", 2.5, 300 << 20, 3 << 30)


def test_a_stopped_container_has_no_sample() -> None:
    """The engine answers a container that is not running with empty stats."""
    assert usage_of(LABELS, {"cpu_stats": {"cpu_usage": {}}, "memory_stats": {}}) is None


def test_a_scrape_is_labelled_by_user_server_and_node() -> None:
    """On one host the node is empty (Prometheus stores no empty label)."""
    made = families(
        [Usage("bo", "gpu", 1.0, 5, 9, node="n2"), Usage("ada", "", 2.0, 7, 9)],
        failed=1,
        homes={"ada": diskquota.Usage(used=3, limit=40), "bo": diskquota.Usage(used=4, limit=0)},
        proxies_failed=2,
    )
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in made for s in f.samples}
    ada = (("node", ""), ("server", ""), ("user", "ada"))
    bo = (("node", "n2"), ("server", "gpu"), ("user", "bo"))
    assert samples[("labhub_container_cpu_seconds_total", ada)] == 2
    assert samples[("labhub_container_memory_bytes", bo)] == 5
    assert samples[("labhub_container_memory_limit_bytes", ada)] == 9
    assert samples[("labhub_container_stats_failed", ())] == 1
    assert samples[("labhub_container_proxies_failed", ())] == 2
    assert samples[("labhub_home_used_bytes", (("user", "bo"),))] == 4
    assert samples[("labhub_home_limit_bytes", (("user", "ada"),))] == 40
    # No quota, no limit series (rather than a limit of 0 bytes).
    assert ("labhub_home_limit_bytes", (("user", "bo"),)) not in samples


class FakeEngine(web.RequestHandler):
    """The two reads of the metrics proxy: a list of three, and their stats. `slow` never
    answers within the budget; `broken` answers 500."""

    async def get(self, container: str | None = None) -> None:
        if container is None:
            self.finish(
                json.dumps(
                    [
                        {"Id": name, "Labels": {OWNER_LABEL: name}}
                        for name in ("ada", "slow", "broken")
                    ]
                )
            )
            return
        if container == "broken":
            raise web.HTTPError(500)
        if container == "slow":
            await asyncio.sleep(3)
        self.finish(json.dumps(stats(10 << 20, {}, cpu_ns=10**9)))


def test_a_scrape_reports_what_came_in_time_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One stats call per container, in parallel, the scrape within its budget: the
    exporter's /metrics read over HTTP while the engine stalls on one container."""
    monkeypatch.setattr(containermetrics, "SCRAPE_BUDGET", 1.0)
    routes = [(r"/containers/json", FakeEngine), (r"/containers/([a-z]+)/stats", FakeEngine)]

    async def scenario() -> tuple[float, str]:
        engine_socket, engine_port = bind_unused_port()
        engine_server = HTTPServer(web.Application(routes))
        engine_server.add_sockets([engine_socket])
        try:
            started = time.monotonic()
            text = await scrape(Engine(f"tcp://127.0.0.1:{engine_port}", "lab"))
            return time.monotonic() - started, text
        finally:
            engine_server.stop()

    elapsed, text = asyncio.run(scenario())
    assert elapsed < 2
    got = {
        (s.name, s.labels.get("user")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert got[("labhub_container_memory_bytes", "ada")] == 10 << 20
    assert ("labhub_container_memory_bytes", "slow") not in got
    assert got[("labhub_container_stats_failed", None)] == 2


class EngineWithVolumes(web.RequestHandler):
    """The metrics proxy of a stack without quotas: one user container (ada's), its
    stats, and the stack's user volumes' sizes (what the proxy makes of /system/df)."""

    def get(self, what: str) -> None:
        answers: dict[str, Any] = {
            "containers/json": [{"Id": "a1", "Labels": {OWNER_LABEL: "ada"}}],
            "containers/a1/stats": stats(10 << 20, {}, cpu_ns=10**9),
            "system/df": {
                "Volumes": {
                    volume_name_for("ada", "lab"): 42 << 20,
                    volume_name_for("bo", "lab"): 1,
                }
            },
        }
        self.finish(json.dumps(answers[what]))


def test_without_quotas_a_running_users_home_is_its_volumes_size() -> None:
    """QUOTA_ROOT empty: the home's bytes come from the engine's disk usage, for the
    users whose server runs only (bo's server does not), and with no limit series."""

    async def scenario() -> str:
        engine_socket, engine_port = bind_unused_port()
        engine_server = HTTPServer(web.Application([(r"/(.+)", EngineWithVolumes)]))
        engine_server.add_sockets([engine_socket])
        try:
            return await scrape(Engine(f"tcp://127.0.0.1:{engine_port}", "lab", quotas=False))
        finally:
            engine_server.stop()

    got = {
        (s.name, s.labels.get("user")): s.value
        for f in text_string_to_metric_families(asyncio.run(scenario()))
        for s in f.samples
    }
    homes = {key: value for key, value in got.items() if key[0].startswith("labhub_home")}
    assert homes == {("labhub_home_used_bytes", "ada"): 42 << 20}


class NodeProxy(web.RequestHandler):
    """One Swarm node's metrics proxy: its task containers (the Swarm agent's node label on
    each), their stats, its volumes' sizes and its quota homes' usage (as the node's
    diskquota service counts them, [used, limit]); `down` answers 500 to the list, a home
    size of -1 is a node whose diskquota service does not answer (502)."""

    def initialize(self, node: str, users: list[str], home_size: int) -> None:
        self.node, self.users, self.home_size = node, users, home_size

    def get(self, what: str) -> None:
        if self.node == "down":
            raise web.HTTPError(500)
        if what == "labhub/quota-usage":
            if self.home_size < 0:
                raise web.HTTPError(502)
            # Both nodes hold a home for ada (an old copy on n2): the figures read are n1's.
            homes = {volume_name_for(u, "lab"): [self.home_size, 100 << 20] for u in ("ada", "bo")}
            self.finish(json.dumps(homes))
            return
        if what == "containers/json":
            assert "com.docker.swarm.service.name" in self.get_query_argument("filters")
            labels = {SERVER_LABEL: "", SWARM_NODE_LABEL: self.node}
            listed = [{"Id": u, "Labels": {OWNER_LABEL: u, **labels}} for u in self.users]
            self.finish(json.dumps(listed))
        elif what == "system/df":
            # Both nodes hold a home for ada (an old copy on n2): the size read is n1's.
            self.finish(json.dumps({"Volumes": {volume_name_for("ada", "lab"): self.home_size}}))
        else:
            self.finish(json.dumps(stats(10 << 20, {}, cpu_ns=10**9)))


def scrape_nodes(
    monkeypatch: pytest.MonkeyPatch,
    nodes: dict[str, tuple[str, list[str], int]],
    quotas: bool = False,
) -> tuple[dict[tuple[str, str | None, str | None], float], list[tuple[str, int]]]:
    """One scrape of an exporter with DOCKER_HOST=tcp://tasks.lab-metrics-proxy:PORT, where
    that name resolves to the addresses of ``nodes``, each a NodeProxy (node, its users,
    its home size): the samples by name, user and node, and the names resolved."""
    asked: list[tuple[str, int]] = []

    def resolved(service: str, port: int) -> list[str]:
        asked.append((service, port))
        return list(nodes)

    monkeypatch.setattr(containermetrics, "task_addresses", resolved)

    async def scenario(port: int) -> str:
        servers = []
        for address, (node, users, size) in nodes.items():
            handler = (r"/(.+)", NodeProxy, {"node": node, "users": users, "home_size": size})
            server = HTTPServer(web.Application([handler]))
            server.listen(port, address)
            servers.append(server)
        try:
            return await scrape(Engine(f"tcp://tasks.lab-metrics-proxy:{port}", "lab", quotas))
        finally:
            for server in servers:
                server.stop()

    probe, port = bind_unused_port()
    probe.close()
    got = {
        (s.name, s.labels.get("user"), s.labels.get("node")): s.value
        for f in text_string_to_metric_families(asyncio.run(scenario(port)))
        for s in f.samples
    }
    return got, [(service, asked_port - port) for service, asked_port in asked]


def test_in_swarm_mode_each_scrape_reads_every_nodes_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_HOST=tcp://tasks.<service>:PORT: every address that name resolves to at the
    scrape is a node's proxy; each series names its node, a home is sized on the node of
    its user's server, and a proxy that does not list is counted, the others reported."""
    nodes = {
        "127.0.0.1": ("n1", ["ada"], 42),
        "127.0.0.2": ("n2", ["bo"], 7),
        "127.0.0.3": ("down", [], 0),
    }
    got, asked = scrape_nodes(monkeypatch, nodes)
    assert asked == [("lab-metrics-proxy", 0)]
    assert got[("labhub_container_memory_bytes", "ada", "n1")] == 10 << 20
    assert got[("labhub_container_memory_bytes", "bo", "n2")] == 10 << 20
    assert got[("labhub_container_proxies_failed", None, None)] == 1
    homes = {key: value for key, value in got.items() if key[0] == "labhub_home_used_bytes"}
    assert homes == {("labhub_home_used_bytes", "ada", None): 42}


def test_with_quotas_in_swarm_mode_a_home_is_read_on_its_users_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QUOTA_ROOT on a Swarm: each user's home usage and limit come from the quota homes of
    the node their server runs on, through that node's metrics proxy (the exporter has no
    usage socket of its own there); a node whose diskquota service does not answer leaves
    its users' homes out, the others' and every server's samples are still reported."""
    nodes = {
        "127.0.0.1": ("n1", ["ada"], 42),
        "127.0.0.2": ("n2", ["bo"], 7),
        "127.0.0.3": ("n3", ["cy"], -1),
    }
    got, _ = scrape_nodes(monkeypatch, nodes, quotas=True)
    homes = {key: value for key, value in got.items() if key[0].startswith("labhub_home")}
    assert homes == {
        ("labhub_home_used_bytes", "ada", None): 42,
        ("labhub_home_limit_bytes", "ada", None): 100 << 20,
        ("labhub_home_used_bytes", "bo", None): 7,
        ("labhub_home_limit_bytes", "bo", None): 100 << 20,
    }
    assert got[("labhub_container_memory_bytes", "cy", "n3")] == 10 << 20
    assert got[("labhub_container_proxies_failed", None, None)] == 0


def test_docker_host_must_name_a_tcp_proxy() -> None:
    for wrong in ("unix:///var/run/docker.sock", "tcp://tasks.x", "tcp://:2375"):
        with pytest.raises(SystemExit, match=r"tcp://tasks\.<service>:PORT"):
            Engine(wrong, "lab")
