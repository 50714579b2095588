"""Per-user container CPU and memory for Prometheus (MONITORING=true, docs/monitoring.md).

At each scrape: the stack's user containers (label `labhub.user`, on DOCKER_NETWORK), then
one stats sample of each (`stream=false&one-shot=true`: no second sample a second later),
all at once, the whole within SCRAPE_BUDGET seconds. The Docker API is read through a
socket proxy of its own (PROXY_POLICY=metrics, `labhub.dockerpolicy.check_metrics_request`)
that allows exactly these two reads, for user containers only. A container whose sample
does not come in time is left out and counted in `labhub_container_stats_failed`.

CPU is a counter (seconds of CPU time since the container started): Prometheus's `rate()`
turns it into cores in use. Memory is what `docker stats` shows: usage less the inactive
page cache. Disk, for the users whose server runs: with QUOTA_ROOT, the home's usage and
limit as its btrfs qgroup counts them, read from the diskquota service's usage socket
(`labhub.diskquota.read_usage`); without quotas (QUOTA_ROOT empty), the home volume's size
as the engine's disk usage (`GET /system/df`) counts it, which the proxy reads from the
engine at most once every DISK_USAGE_EVERY seconds and cuts down to the stack's user
volumes.

In Swarm mode the users' servers are task containers on every node: DOCKER_HOST names the
tasks of a global service of such proxies, one in front of each node's engine
(`tcp://tasks.<service>:2375`, PROXY_POLICY=node-metrics, on an overlay network users are
not on), and each scrape reads every task `tasks.<service>` resolves to then
(`labhub.swarmtasks`), each node's users' task containers and volumes, all at once. Each
series then has the node's ID (`node`, empty on one host); a node whose proxy does not
list its containers is left out and counted in `labhub_container_proxies_failed`. With
QUOTA_ROOT each node's homes are read on that node: its metrics proxy answers
`GET QUOTA_USAGE_ROUTE` from the node's diskquota usage socket, as a node proxy does.

Run: labhub-container-metrics (DOCKER_HOST, DOCKER_NETWORK, QUOTA_ROOT, LISTEN_PORT from the
environment).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from tornado import httpclient, web

from . import diskquota
from .contract import OWNER_LABEL, SERVER_LABEL, volume_name_for
from .dockerpolicy import metrics_list_filters
from .gpu.metrics import Snapshot
from .swarmtasks import task_addresses

log = logging.getLogger("labhub.containermetrics")

# A scrape answers within this (Prometheus's scrape timeout is 10 s); late samples are dropped.
SCRAPE_BUDGET = 8.0
# Stats calls in flight at once: the engine and the proxy are shared with the hub.
PARALLEL = 16
# The label the Swarm agent gives each task's container: its node's ID.
SWARM_NODE_LABEL = "com.docker.swarm.node.id"
# DOCKER_HOST's host in Swarm mode: the tasks of the nodes' metrics proxies' service.
_TASKS = "tasks."


@dataclass(frozen=True)
class Usage:
    """One container's sample: whose it is, and what it uses."""

    user: str
    server: str
    cpu_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    node: str = ""


def usage_of(labels: Mapping[str, str], stats: Mapping[str, Any]) -> Usage | None:
    """A user container's stats read the way `docker stats` reads them (cgroup v1 or v2);
    None for a container that is not running (the engine answers with empty stats)."""
    memory = stats.get("memory_stats") or {}
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    if "usage" not in memory or "total_usage" not in cpu:
        return None
    counters = memory.get("stats") or {}
    # cgroup v1 calls it total_inactive_file, v2 inactive_file: page cache the kernel can drop.
    inactive = counters.get("total_inactive_file", counters.get("inactive_file", 0))
    used = memory["usage"] - inactive if inactive < memory["usage"] else memory["usage"]
    return Usage(
        user=labels[OWNER_LABEL],
        server=labels.get(SERVER_LABEL, ""),
        cpu_seconds=cpu["total_usage"] / 1e9,
        memory_bytes=used,
        memory_limit_bytes=memory.get("limit", 0),
        node=labels.get(SWARM_NODE_LABEL, ""),
    )


def families(
    samples: Iterable[Usage],
    failed: int,
    homes: Mapping[str, diskquota.Usage],
    proxies_failed: int = 0,
) -> list[Metric]:
    """The metric families of one scrape; ``homes``: each user's home, by user;
    ``proxies_failed``: the nodes' proxies that did not list their containers (Swarm)."""
    labels = ["user", "server", "node"]
    cpu = CounterMetricFamily(
        "labhub_container_cpu_seconds",
        "CPU time a user's server has used since it started (rate(): cores in use)",
        labels=labels,
    )
    memory = GaugeMetricFamily(
        "labhub_container_memory_bytes",
        "Memory a user's server uses, page cache it can drop excluded (as docker stats)",
        labels=labels,
    )
    limit = GaugeMetricFamily(
        "labhub_container_memory_limit_bytes", "A user's server's memory limit", labels=labels
    )
    for sample in sorted(samples, key=lambda s: (s.user, s.server, s.node)):
        names = [sample.user, sample.server, sample.node]
        cpu.add_metric(names, sample.cpu_seconds)
        memory.add_metric(names, sample.memory_bytes)
        limit.add_metric(names, sample.memory_limit_bytes)
    missed = GaugeMetricFamily(
        "labhub_container_stats_failed",
        f"User containers whose stats did not come within {SCRAPE_BUDGET} s this scrape",
    )
    missed.add_metric([], failed)
    unlisted = GaugeMetricFamily(
        "labhub_container_proxies_failed",
        "Swarm nodes whose metrics proxy did not list its user containers this scrape",
    )
    unlisted.add_metric([], proxies_failed)
    home_used = GaugeMetricFamily(
        "labhub_home_used_bytes",
        "Bytes in a user's home (its btrfs qgroup with QUOTA_ROOT, else the engine's "
        "volume size, read at most every few minutes)",
        labels=["user"],
    )
    home_limit = GaugeMetricFamily(
        "labhub_home_limit_bytes", "A user's disk quota (QUOTA_ROOT)", labels=["user"]
    )
    for user, home in sorted(homes.items()):
        home_used.add_metric([user], home.used)
        if home.limit:
            home_limit.add_metric([user], home.limit)
    return [cpu, memory, limit, missed, unlisted, home_used, home_limit]


@dataclass(frozen=True)
class Reading:
    """One scrape's reading of every proxy: the samples, the containers that missed the
    budget, each running user's home, and the proxies that did not list their containers."""

    samples: list[Usage]
    failed: int
    homes: dict[str, diskquota.Usage]
    proxies_failed: int = 0


class Engine:
    """The exporter's reads, through its Docker socket proxy (DOCKER_HOST=tcp://HOST:PORT),
    or in Swarm mode through each node's (DOCKER_HOST=tcp://tasks.<service>:PORT)."""

    def __init__(
        self,
        docker_host: str,
        network: str,
        quotas: bool = False,
        usage_socket: str = diskquota.USAGE_SOCKET,
    ) -> None:
        host, _, port = docker_host.removeprefix("tcp://").rpartition(":")
        if not docker_host.startswith("tcp://") or not host or not port.isdigit():
            raise SystemExit(
                f"labhub-container-metrics: DOCKER_HOST={docker_host!r}: give the metrics "
                "Docker proxy as tcp://HOST:PORT (Swarm mode: tcp://tasks.<service>:PORT)"
            )
        self.host, self.port = host, int(port)
        self.network = network
        self.swarm = host.startswith(_TASKS)
        self.quotas = quotas
        self.usage_socket = usage_socket
        self.http = httpclient.AsyncHTTPClient(force_instance=True, max_clients=PARALLEL)

    async def proxies(self) -> list[str]:
        """The proxies to read this scrape: the one, or every node's task of the service
        (socket.gaierror, an OSError, when none resolves)."""
        if not self.swarm:
            return [f"http://{self.host}:{self.port}"]
        service = self.host.removeprefix(_TASKS)
        addresses = await asyncio.to_thread(task_addresses, service, self.port)
        return [f"http://{address}:{self.port}" for address in addresses]

    async def _get(self, proxy: str, path: str) -> Any:
        response = await self.http.fetch(proxy + path, request_timeout=SCRAPE_BUDGET)
        return json.loads(response.body)

    async def user_containers(self, proxy: str) -> list[dict[str, Any]]:
        filters = json.dumps(metrics_list_filters(self.network, self.swarm))
        found: list[dict[str, Any]] = await self._get(
            proxy, "/containers/json?" + urlencode({"filters": filters})
        )
        return found

    async def usage(self, proxy: str, container: Mapping[str, Any]) -> Usage | None:
        stats = await self._get(
            proxy, f"/containers/{container['Id']}/stats?stream=false&one-shot=true"
        )
        return usage_of(container.get("Labels") or {}, stats)

    async def scrape(self, proxy: str) -> tuple[list[Usage], int]:
        """Every running user container's usage, and how many did not answer in time."""
        containers = await self.user_containers(proxy)
        tasks = [asyncio.ensure_future(self.usage(proxy, container)) for container in containers]
        if not tasks:
            return [], 0
        done, pending = await asyncio.wait(tasks, timeout=SCRAPE_BUDGET)
        for task in pending:
            task.cancel()
        samples, failed = [], len(pending)
        for task in done:
            if task.exception() is not None:
                log.warning("stats of a user container failed: %s", task.exception())
                failed += 1
            elif (sample := task.result()) is not None:
                samples.append(sample)
        return samples, failed

    async def homes(self, proxy: str) -> dict[str, diskquota.Usage]:
        """Every home's usage by volume name: with quotas, from the diskquota service (in
        Swarm mode the node's, through its proxy), else the volumes' sizes from the
        engine's disk usage; none when it does not answer within the budget."""
        try:
            if self.quotas and self.swarm:
                return diskquota.usages(await self._get(proxy, diskquota.QUOTA_USAGE_ROUTE))
            if self.quotas:
                return await asyncio.wait_for(
                    diskquota.read_usage(self.usage_socket), SCRAPE_BUDGET
                )
            sizes: dict[str, int] = (await self._get(proxy, "/system/df"))["Volumes"]
            return {volume: diskquota.Usage(used=size, limit=0) for volume, size in sizes.items()}
        except (
            diskquota.DiskQuotaError,
            TimeoutError,
            httpclient.HTTPError,
            OSError,
            ValueError,
            TypeError,
        ) as error:
            log.warning("homes' usage not read: %s", error)
            return {}

    def users_homes(
        self, samples: Iterable[Usage], homes: Mapping[str, diskquota.Usage]
    ) -> dict[str, diskquota.Usage]:
        """The homes of the users whose server runs, by user."""
        volumes = {sample.user: volume_name_for(sample.user, self.network) for sample in samples}
        return {user: homes[volume] for user, volume in volumes.items() if volume in homes}

    async def read_one(self, proxy: str) -> Reading:
        """One proxy's containers and, for their users, the homes on its engine."""
        (samples, failed), homes = await asyncio.gather(self.scrape(proxy), self.homes(proxy))
        return Reading(samples, failed, self.users_homes(samples, homes))

    async def read(self) -> Reading:
        """Every proxy's reading at once; raises the error of the first when none lists."""
        proxies = await self.proxies()
        found = await asyncio.gather(
            *(self.read_one(proxy) for proxy in proxies), return_exceptions=True
        )
        readings = [reading for reading in found if isinstance(reading, Reading)]
        errors = [error for error in found if not isinstance(error, Reading)]
        for error in errors:
            if not isinstance(error, (httpclient.HTTPError, OSError)):
                raise error
            log.warning("a metrics proxy did not list its containers: %s", error)
        if errors and not readings:
            raise errors[0]
        return Reading(
            samples=[sample for reading in readings for sample in reading.samples],
            failed=sum(reading.failed for reading in readings),
            homes={user: home for reading in readings for user, home in reading.homes.items()},
            proxies_failed=len(errors),
        )


class MetricsHandler(web.RequestHandler):
    """GET /metrics: Prometheus text, read at the engine now."""

    async def get(self) -> None:
        engine: Engine = self.settings["engine"]
        try:
            reading = await engine.read()
        except (httpclient.HTTPError, OSError) as error:
            raise web.HTTPError(
                502, f"the Docker proxy did not list user containers: {error}"
            ) from error
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            Snapshot(
                families(reading.samples, reading.failed, reading.homes, reading.proxies_failed)
            )
        )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(registry))


def make_app(engine: Engine) -> web.Application:
    return web.Application([(r"/metrics", MetricsHandler)], engine=engine)


def main() -> None:
    """Serve /metrics on LISTEN_PORT (9180) for Prometheus on the metrics network."""
    logging.basicConfig(level=logging.INFO, format="[container-metrics] %(levelname)s %(message)s")
    network = os.environ.get("DOCKER_NETWORK", "")
    if not network:
        raise SystemExit("labhub-container-metrics: DOCKER_NETWORK is empty: the stack's network")
    quotas = bool(os.environ.get("QUOTA_ROOT"))
    engine = Engine(os.environ.get("DOCKER_HOST", ""), network, quotas)
    port = int(os.environ.get("LISTEN_PORT", "9180"))

    async def serve() -> None:
        make_app(engine).listen(port)
        log.info("per-user container metrics on :%d/metrics (network %s)", port, network)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
