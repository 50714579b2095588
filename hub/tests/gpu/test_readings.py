"""Swarm mode: each node's GPUs' utilisation read on that node, through its Docker proxy.

The node proxy answers exactly `GET NODE_UTILISATION_ROUTE` itself, with what nvidia-smi
says there (here the stand-in tests/fake-nvml/nvidia-smi on PATH, as the stand-in runtime
gives it to a Swarm node's containers); `GpuReadings` asks every node's real proxy handler
on loopback at once and keys each GPU's figures by its node as the inventory names it (ID
or hostname). A node that does not answer gives no figures, which the utilisation rule
counts as busy.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub import cli, homemove, nodereads
from labhub.dockerpolicy import Policy, Refused, check_node_request
from labhub.dockerproxy import DiskUsage, handle, policy_from_env
from labhub.gpu.inventory import (
    NODE_DEVICES_ROUTE,
    NODE_UTILISATION_ROUTE,
    Device,
    Utilisation,
    load_inventory,
)
from labhub.gpu.readings import GpuReadings
from labhub.gpu.reclaim import devices_busy
from labhub.nodereads import NodeProxies
from labhub.swarmplacement import SwarmNode

from testsupport.dockerproxy import free_port
from testsupport.minimal_env import MINIMAL_ENV

T = TypeVar("T")
NODE_PROXIES = "lab-node-proxy"
FAKE_NVIDIA_SMI = Path(__file__).parents[3] / "tests" / "fake-nvml" / "nvidia-smi"
NODE = Policy(frozenset({"lab/workspace"}), "lab")
# The nodes' proxies by task address: n1 (hostname gpu-a) and n2 (gpu-b) answer, n3's
# task takes the connection and never answers.
ADDRESSES = {"127.0.0.2": ("n1", "gpu-a"), "127.0.0.3": ("n2", "gpu-b"), "127.0.0.4": None}
# Named as an admin may: by hostname, by node ID; and a device on the silent node.
INVENTORY = (
    Device("0", "Fake A100", 40960, node="gpu-a"),
    Device("1", "Fake A100", 40960, node="n2"),
    Device("0", "Fake A100", 40960, node="n3"),
)


@pytest.mark.parametrize("route", [NODE_UTILISATION_ROUTE, NODE_DEVICES_ROUTE])
def test_a_node_proxy_answers_exactly_get_of_its_gpu_routes(route: str) -> None:
    allowed = check_node_request(NODE, "GET", route, b"")
    assert allowed.nvidia_smi == allowed.target == route
    for method, target, reason in [
        ("POST", route, "not needed"),
        ("GET", route + "?format=csv", "query parameter 'format'"),
        ("GET", route + "/", "not needed"),
        ("GET", "/v1.41" + route, "not needed"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_node_request(NODE, method, target, b"")
    with pytest.raises(Refused, match="takes no request body"):
        check_node_request(NODE, "GET", route, b"{}")


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
    before=st.sampled_from(["", "/v1.41", "/labhub"]),
    route=st.sampled_from([NODE_UTILISATION_ROUTE, NODE_DEVICES_ROUTE]),
    after=st.text(max_size=30),
)
def test_nothing_else_makes_the_proxy_run_nvidia_smi(
    method: str, before: str, route: str, after: str
) -> None:
    try:
        allowed = check_node_request(NODE, method, before + route + after, b"")
    except Refused:
        return
    if allowed.nvidia_smi:
        assert method == "GET" and allowed.target == allowed.nvidia_smi == route


async def engine(node: str, hostname: str, path: str) -> asyncio.AbstractServer:
    """A node's engine on its Unix socket: `GET /info`, saying which node it is."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        info = {"Name": hostname, "Swarm": {"NodeID": node, "LocalNodeState": "active"}}
        body = json.dumps(info).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path)


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in nvidia-smi on PATH, reporting what the test writes to the file given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "fake-nvidia-smi.json"
    monkeypatch.setenv("FAKE_NVML_STATE", str(state))
    return state


def through_proxies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ask: Callable[[int], Awaitable[T]]
) -> T:
    """``ask(port)`` while the real node proxy handler serves at that port on each of
    ADDRESSES, the tasks of NODE_PROXIES, and the manager lists n1, n2 and n3.

    Within the real budget (nodereads.BUDGET), which the silent task makes each call wait
    out: with 1 s, the nodes that run nvidia-smi sometimes missed it on a loaded machine
    (a CI run beside these tests), and their figures were missing."""
    port = free_port()
    monkeypatch.setattr(nodereads, "task_addresses", lambda service, on: list(ADDRESSES))
    listed = [SwarmNode(n, True, True) for n in ("n1", "n2", "n3")]
    monkeypatch.setattr(homemove, "swarm_nodes", lambda: listed)
    check = policy_from_env({"PROXY_POLICY": "node", "ALLOWED_IMAGES": "lab/workspace"})

    async def run() -> T:
        servers = []
        for address, node in ADDRESSES.items():
            if node is None:
                servers.append(await asyncio.start_server(lambda r, w: r.read(), address, port))
                continue
            socket_path = str(tmp_path / f"{node[0]}.sock")
            servers.append(await engine(*node, socket_path))

            def proxy(
                r: asyncio.StreamReader, w: asyncio.StreamWriter, s: str = socket_path
            ) -> Any:
                return handle(check, s, DiskUsage(""), r, w, uploads=True)

            servers.append(await asyncio.start_server(proxy, address, port))
        try:
            return await ask(port)
        finally:
            for server in servers:
                server.close()

    return asyncio.run(run())


def read_through_proxies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Utilisation]:
    """`GpuReadings.read` over the real node proxies."""
    return through_proxies(
        tmp_path, monkeypatch, lambda port: GpuReadings(NODE_PROXIES, port).read(INVENTORY)
    )


def test_each_gpu_is_read_on_its_node_by_the_name_the_inventory_gives_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nvidia_smi: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = [
        {"index": str(i), "uuid": f"GPU-{i}", "name": "Fake A100", "memory.total": 40960,
         "utilization.gpu": percent, "memory.used": 100 * percent}
        for i, percent in ((0, 0), (1, 64))
    ]  # fmt: skip
    nvidia_smi.write_text(json.dumps({"gpus": gpus}))
    with caplog.at_level(logging.WARNING, "labhub.gpu.readings"):
        found = read_through_proxies(tmp_path, monkeypatch)
    # Every node here runs the same stand-in: each key names its node as the inventory does.
    assert found == {
        "0@gpu-a": Utilisation(0, 0),
        "1@gpu-a": Utilisation(64, 6400),
        "0@n2": Utilisation(0, 0),
        "1@n2": Utilisation(64, 6400),
    }
    # Named twice: its proxy's task that does not answer, and a listed node none answered for.
    silent, unread = caplog.messages
    assert "127.0.0.4 gave no GPU utilisation" in silent and "no answer" in silent
    assert "node n3 (ready): no Docker proxy answered for it" in unread
    # The silent node's device has no reading: busy for the utilisation rule, never idle.
    assert devices_busy(["0@n3"], found) is None
    assert devices_busy(["0:1@gpu-a"], found) is False  # a MIG instance, by its GPU
    assert devices_busy(["0@gpu-a", "1@n2"], found) is True


def test_a_node_without_nvidia_smi_gives_no_figures_and_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    with caplog.at_level(logging.WARNING, "labhub.gpu.readings"):
        assert read_through_proxies(tmp_path, monkeypatch) == {}
    # Only the silent node is reported: no figures is an answer, not a problem.
    assert len(caplog.messages) == 2 and not any("n1" in m or "n2" in m for m in caplog.messages)


def test_labhub_gpu_inventory_prints_every_nodes_devices_naming_its_node(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nvidia_smi: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gpu = {"index": "0", "uuid": "GPU-0", "name": "Fake A100", "memory.total": 40960,
           "utilization.gpu": 0, "memory.used": 0}  # fmt: skip
    nvidia_smi.write_text(json.dumps({"gpus": [gpu]}))
    env = {**MINIMAL_ENV, "ENGINE": "swarm", "NODE_PROXY_SERVICE": NODE_PROXIES}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def ask(port: int) -> int:
        monkeypatch.setattr(nodereads, "NodeProxies", functools.partial(NodeProxies, port=port))
        return await asyncio.to_thread(cli.main, ["gpu-inventory"])

    assert through_proxies(tmp_path, monkeypatch, ask) == 1  # n3 was not read
    out, err = capsys.readouterr()
    device = {"id": "0", "uuid": "GPU-0", "model": "Fake A100", "memory_mib": 40960,
              "policy": "exclusive"}  # fmt: skip
    # By hostname (no two nodes share one here); a file the hub loads as it is.
    printed = json.loads(out)
    assert printed == {"devices": [{**device, "node": "gpu-a"}, {**device, "node": "gpu-b"}]}
    (tmp_path / "gpus.json").write_text(out)
    assert [d.key for d in load_inventory(tmp_path / "gpus.json")] == ["0@gpu-a", "0@gpu-b"]
    assert "not read: the node (unknown) whose Docker proxy at 127.0.0.4" in err
    assert "not read: node n3 (ready): no Docker proxy answered for it" in err


def test_a_move_finds_each_nodes_proxy_by_the_node_its_engine_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nodes a move, a backup or a restore acts on: those whose proxy's engine named
    its node; the task that never answers is left out (then refused by name)."""

    async def ask(port: int) -> tuple[int, dict[str, str]]:
        found = await asyncio.to_thread(homemove.find_node_proxies, NODE_PROXIES, port)
        return port, found

    port, found = through_proxies(tmp_path, monkeypatch, ask)
    assert found == {"n1": f"tcp://127.0.0.2:{port}", "n2": f"tcp://127.0.0.3:{port}"}


def test_no_node_proxy_deployed_is_refused_with_how_to_deploy_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unresolved(service: str, port: int) -> list[str]:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(nodereads, "task_addresses", unresolved)
    with pytest.raises(homemove.MoveRefused, match=f"no node proxy found at tasks.{NODE_PROXIES}"):
        homemove.find_node_proxies(NODE_PROXIES)
