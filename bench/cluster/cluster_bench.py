"""Cluster benchmark: users' spawns on a 3-node Swarm against a 1-node Swarm, in one run.

For each cluster (tests/swarm.py's engines in network namespaces on this machine, labhub's
Docker proxy with PROXY_POLICY=swarm in front of the manager, tests/swarmlab.py), `--users`
students spawn `--batch` at a time: each batch's spawns start together, as the hub starts
concurrent requests, and the next batch starts when all of them are done; the servers keep
running. Every spawn is LabSwarmSpawner.start() through the proxy, and measures:

* task running: the engine's time of the service's task becoming running (the Swarm path:
  placement, service, scheduling, the container's start on its node);
* start() returned: when the spawner saw the task running (DockerSpawner's SwarmSpawner
  polls after 1 s, then 1.5 times longer each time);
* ready: after that, the server answered its first connection at its task's address on
  its user's own overlay network, from the frontend container on the manager (where the
  hub runs), polled every 0.1 s; this includes one `docker exec` into that container
  (measured alone, too);
* the node each server runs on, read from the manager's tasks, per batch and in total.

The server is the tests' one-line perl server in the base image, not JupyterLab (the
2.3 GB workspace image is not copied to the nodes): the figures are the Swarm path's cost
(placement, the user's network, service, task, overlay), not JupyterLab's start-up. All
nodes share this machine's cores, so a bigger cluster shows the spread and the overhead,
not a speed-up.

Usage (as root: the clusters are network namespaces and engines on this machine):

    PYTHONPATH=hub:tests:. .venv/bin/python bench/cluster/cluster_bench.py \
        [--users 30] [--batch 10] [--json /tmp/cluster-bench.json]

Each cluster, with every server on it, is removed when its part of the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from labhub.contract import OWNER_LABEL
from swarmlab import FRONTEND, IMAGE, PREFIX, Cluster, client, lab_cluster

# The clusters compared, in nodes; the first is the baseline of the ratios.
SIZES = (1, 3)
PROBE_INTERVAL = 0.1
SPAWN_TIMEOUT = 300.0


@dataclass
class Spawn:
    user: str
    batch: int
    ok: bool = False
    error: str = ""
    requested_at: float = float("nan")  # time.time() of the request
    task_running: float = float("nan")  # request -> the engine's task state became running
    started: float = float("nan")  # request -> start() returned
    ready: float = float("nan")  # request -> start() returned, then the server answered
    node: str = ""  # n0 (the manager), n1, ...: where its task runs


async def spawn(cluster: Cluster, probes: ThreadPoolExecutor, result: Spawn) -> None:
    """Start one user's server, then wait for it to answer, as the hub does."""
    spawner = cluster.spawner(result.user)
    service = f"{PREFIX}-{result.user}"
    result.requested_at, start = time.time(), time.monotonic()
    try:
        address = await asyncio.wait_for(spawner.start(), SPAWN_TIMEOUT)
        result.started = time.monotonic() - start
        ip, port = address
        if port != 8888:
            raise RuntimeError(f"start() returned {address}, not port 8888")
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(probes, first_answer, cluster, ip)
        if answer != f"hello from {result.user}":
            raise RuntimeError(f"{service} answered {answer!r} over the overlay")
        result.ready = time.monotonic() - start
        result.ok = True
    except Exception as error:  # reported as a failure, never hidden
        result.error = f"{type(error).__name__}: {error}"
    finally:
        cluster.states[result.user] = spawner.get_state()


def first_answer(cluster: Cluster, address: str) -> str:
    """The first line the server at `address` (its task's, on its user's network) answers on
    port 8888, asked from the frontend container on the manager (where the hub runs, joined
    to every user's network) every PROBE_INTERVAL until SPAWN_TIMEOUT."""
    tries = int(SPAWN_TIMEOUT / PROBE_INTERVAL)
    answer = cluster.swarm.manager.docker(
        "exec", FRONTEND, "perl", "-e", client(address, 8888, tries, PROBE_INTERVAL),
        check=False, timeout=SPAWN_TIMEOUT + 30,
    )  # fmt: skip
    return answer.strip()


def running_tasks(cluster: Cluster) -> dict[str, tuple[str, float]]:
    """Each lab service's running task: its node ID and when it became running (time.time()),
    from the manager's task list."""
    manager = cluster.swarm.manager
    ids = manager.docker("service", "ls", "--quiet", "--filter", f"label={OWNER_LABEL}").split()
    services = dict(
        line.split()
        for line in manager.docker(
            "service", "inspect", "--format", "{{.ID}} {{.Spec.Name}}", *ids
        ).splitlines()
    )
    tasks = manager.docker(
        "service", "ps", "--quiet", "--no-trunc", "--filter", "desired-state=running", *services
    ).split()
    found = {}
    for line in manager.docker(
        "inspect", "--type", "task", "--format",
        "{{.ServiceID}} {{.NodeID}} {{.Status.State}} {{json .Status.Timestamp}}", *tasks,
    ).splitlines():  # fmt: skip
        service_id, node_id, state, stamp = line.split()
        if state == "running":
            found[services[service_id]] = (node_id, epoch(stamp))
    return found


def epoch(stamp: str) -> float:
    """time.time() of an engine's RFC 3339 timestamp ("2026-12-02T10:27:01.123456789Z")."""
    day, _, fraction = json.loads(stamp).rstrip("Z").partition(".")
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction}")


async def spawn_batch(cluster: Cluster, probes: ThreadPoolExecutor, batch: list[Spawn]) -> None:
    await asyncio.gather(*(spawn(cluster, probes, result) for result in batch))


def bench_cluster(cluster: Cluster, users: int, batch_size: int) -> dict[str, Any]:
    """Spawn `users` servers `batch_size` at a time on `cluster`; the figures of one size."""
    spawns = [Spawn(user=f"student{i:02d}", batch=i // batch_size + 1) for i in range(users)]
    batches = [spawns[i : i + batch_size] for i in range(0, users, batch_size)]
    walls = []
    with ThreadPoolExecutor(batch_size, thread_name_prefix="probe") as probes:
        for number, batch in enumerate(batches, 1):
            began = time.monotonic()
            asyncio.run(spawn_batch(cluster, probes, batch))
            walls.append(time.monotonic() - began)
            done = [s for s in batch if s.ok]
            print(
                f"  {len(cluster.swarm.nodes)} node(s), batch {number}: {len(done)}/{len(batch)}"
                f" ready in {walls[-1]:.2f} s, ready max {max_of(s.ready for s in done):.2f} s",
                flush=True,
            )
    names = {node.node_id: f"n{index}" for index, node in enumerate(cluster.swarm.nodes)}
    tasks = running_tasks(cluster)
    for result in spawns:
        if result.ok:
            node_id, running_at = tasks[f"{PREFIX}-{result.user}"]
            result.node, result.task_running = names[node_id], running_at - result.requested_at
    # The prober's own share of `ready`: one `docker exec` against a server already up.
    probe = []
    for result in spawns[:3]:
        began = time.monotonic()
        first_answer(cluster, f"{PREFIX}-{result.user}")
        probe.append(time.monotonic() - began)
    good = [s for s in spawns if s.ok]
    return {
        "nodes": len(cluster.swarm.nodes),
        "users": users,
        "batch": batch_size,
        "failures": len(spawns) - len(good),
        "ready_p50": median_of(s.ready for s in good),
        "ready_max": max_of(s.ready for s in good),
        "task_running_p50": median_of(s.task_running for s in good),
        "task_running_max": max_of(s.task_running for s in good),
        "started_p50": median_of(s.started for s in good),
        "started_max": max_of(s.started for s in good),
        "probe_alone_p50": median_of(probe),
        "batch_walls": walls,
        "per_node": counts(good, names.values()),
        "per_batch": [counts([s for s in batch if s.ok], names.values()) for batch in batches],
        "errors": [f"{s.user}: {s.error}" for s in spawns if not s.ok],
        "spawns": [asdict(s) for s in spawns],
    }


def median_of(values: Any) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def max_of(values: Any) -> float:
    return max(values, default=float("nan"))


def counts(spawns: list[Spawn], nodes: Iterable[str]) -> dict[str, int]:
    """Servers per node among `spawns`, every node named (none: 0)."""
    found = Counter(s.node for s in spawns)
    return {node: found[node] for node in nodes}


def report(runs: list[dict[str, Any]], ratios: dict[str, float]) -> str:
    """The table printed at the end (the JSON has every spawn)."""
    rows = [
        "| cluster | ready p50 | ready max | task running p50 / max | start() returned p50 / max"
        " | batches, all ready | failures | servers per node |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        walls = " / ".join(f"{wall:.1f}" for wall in run["batch_walls"])
        spread = ", ".join(f"{node}: {n}" for node, n in run["per_node"].items())
        rows.append(
            f"| {run['nodes']} node{'s' if run['nodes'] > 1 else ''} | {run['ready_p50']:.2f} s"
            f" | {run['ready_max']:.2f} s"
            f" | {run['task_running_p50']:.2f} / {run['task_running_max']:.2f} s"
            f" | {run['started_p50']:.2f} / {run['started_max']:.2f} s"
            f" | {walls} s | {run['failures']} | {spread} |"
        )
    rows.append(
        f"\n{SIZES[-1]} nodes / {SIZES[0]} node, same run: ready p50 {ratios['ready_p50']:.2f}x,"
        f" ready max {ratios['ready_max']:.2f}x, batch wall {ratios['batch_wall_mean']:.2f}x"
    )
    probes = ", ".join(f"{run['probe_alone_p50']:.2f} s ({run['nodes']})" for run in runs)
    rows.append(f"in ready: the probe's `docker exec` alone, p50 (nodes): {probes}")
    last = runs[-1]
    batches = " | ".join(
        f"batch {i}: " + ", ".join(f"{node} {n}" for node, n in spread.items())
        for i, spread in enumerate(last["per_batch"], 1)
    )
    rows.append(f"placement per batch, {last['nodes']} nodes: {batches}")
    return "\n".join(rows)


def check_machine() -> None:
    """Stop with what to do when the clusters cannot be made here."""
    if os.geteuid() != 0:
        sys.exit("run it as root: each cluster node is a network namespace and a dockerd")
    found = subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, check=False
    ).returncode
    if found != 0:
        sys.exit(f"the host engine has no {IMAGE}: `make base-image` makes it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30, help="students per cluster (1..60)")
    parser.add_argument("--batch", type=int, default=10, help="spawning at once (1..users)")
    parser.add_argument("--json", type=argparse.FileType("w"), help="write every figure here")
    args = parser.parse_args()
    if not 1 <= args.users <= 60 or not 1 <= args.batch <= args.users:
        parser.error("--users must be 1..60 and --batch 1..--users (bounded on purpose)")
    check_machine()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "server": f"one-line perl server in {IMAGE}",
        "load_before": os.getloadavg(),
        "runs": [],
    }
    for size in SIZES:
        began = time.monotonic()
        with lab_cluster(size) as cluster:
            setup = time.monotonic() - began
            print(f"{size} node(s) up in {setup:.0f} s", flush=True)
            run = bench_cluster(cluster, args.users, args.batch)
            run["setup_seconds"] = setup
            results["runs"].append(run)
    one, many = results["runs"][0], results["runs"][-1]
    results["ratios"] = {
        "ready_p50": many["ready_p50"] / one["ready_p50"],
        "ready_max": many["ready_max"] / one["ready_max"],
        "batch_wall_mean": statistics.mean(many["batch_walls"])
        / statistics.mean(one["batch_walls"]),
    }
    results["load_after"] = os.getloadavg()
    print(report(results["runs"], results["ratios"]))
    for run in results["runs"]:
        for error in run["errors"]:
            print(f"failed on {run['nodes']} node(s): {error}")
    if args.json:
        json.dump(results, args.json, indent=2)
    return 1 if any(run["failures"] for run in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
