"""One inventory for a Swarm: devices carry their node, the books are keyed by (node, device).

The state machine drives the pure scheduler over a two-node inventory whose devices share
ids ("0" on both nodes), with nodes going down and coming back, servers limited to their
home node or free to go anywhere; after every step nothing is double-booked on any node,
every allocation sits on one node the server may run on, and no device of a down node was
given.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from labhub.gpu import scheduler as s
from labhub.gpu.allocator import load_gpu_files
from labhub.gpu.inventory import Device, Inventory, InventoryError, load_inventory, split_key
from labhub.gpu.reclaim import devices_busy
from labhub.settings import Settings, SettingsError

from testsupport.minimal_env import MINIMAL_ENV

from .conftest import NOW

pytestmark = pytest.mark.unit

ONE = s.GpuRequest(whole=1)
TWO = s.GpuRequest(whole=2)
SLICE = s.GpuRequest(shared=True)

CLUSTER: Inventory = (
    Device(id="0", model="A100", memory_mib=40960, node="gpu-a"),
    Device(id="1", model="A100", memory_mib=40960, node="gpu-a"),
    Device(id="0", model="A100", memory_mib=40960, node="gpu-b"),
    Device(id="1", model="T4", memory_mib=16000, policy="shared", max_holders=2, node="gpu-b"),
)


def write(tmp_path: Path, devices: list[dict[str, object]]) -> Path:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"devices": devices}))
    return path


def test_a_declared_cluster_inventory_keys_each_device_by_its_node(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"id": "0", "model": "A100", "memory_mib": 40960, "node": "gpu-a"},
            {"id": "0", "model": "A100", "memory_mib": 40960, "node": "gpu-b"},
        ],
    )
    devices = load_inventory(path)
    assert [d.key for d in devices] == ["0@gpu-a", "0@gpu-b"]
    assert [split_key(d.key) for d in devices] == [("0", "gpu-a"), ("0", "gpu-b")]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (
            [
                {"id": "0", "model": "A", "memory_mib": 1, "node": "gpu-a"},
                {"id": "0", "model": "A", "memory_mib": 1, "node": "gpu-a"},
            ],
            "device id '0' on node 'gpu-a' appears twice",
        ),
        (
            [
                {"id": "0", "model": "A", "memory_mib": 1, "node": "gpu-a"},
                {"id": "1", "model": "A", "memory_mib": 1},
            ],
            "some devices name a node and some do not",
        ),
        (
            [{"id": "0", "model": "A", "memory_mib": 1, "node": "gpu@a"}],
            r"devices\[0\]\.node: .gpu@a. does not match",
        ),
    ],
    ids=["same-device-twice-on-a-node", "mixed", "bad-node-name"],
)
def test_a_wrong_cluster_inventory_is_refused_by_name(
    tmp_path: Path, devices: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(InventoryError, match=message):
        load_inventory(write(tmp_path, devices))


@pytest.mark.parametrize(
    ("engine", "devices", "message"),
    [
        ("swarm", "auto", "GPU_INVENTORY=auto detects the hub's own host only"),
        ("swarm", [{"id": "0", "model": "A", "memory_mib": 1}], 'every device needs its "node"'),
        (
            "docker",
            [{"id": "0", "model": "A", "memory_mib": 1, "node": "gpu-a"}],
            "devices name a node, but ENGINE is 'docker'",
        ),
    ],
    ids=["swarm-auto", "swarm-without-nodes", "one-host-with-nodes"],
)
def test_an_inventory_that_does_not_fit_the_engine_stops_the_hub(
    tmp_path: Path, engine: str, devices: list[dict[str, object]] | str, message: str
) -> None:
    inventory = devices if isinstance(devices, str) else str(write(tmp_path, devices))
    settings = Settings.from_env({**MINIMAL_ENV, "GPU_INVENTORY": inventory})
    with pytest.raises(SettingsError) as error:
        load_gpu_files(replace(settings, engine=engine))  # ENGINE=swarm: refused at start-up yet
    assert any(message in problem for problem in error.value.problems), error.value.problems


def test_a_cluster_inventory_on_a_swarm_loads(tmp_path: Path) -> None:
    path = write(tmp_path, [{"id": "0", "model": "A", "memory_mib": 1, "node": "gpu-a"}])
    settings = Settings.from_env({**MINIMAL_ENV, "GPU_INVENTORY": str(path)})
    inventory, _ = load_gpu_files(replace(settings, engine="swarm"))
    assert [d.key for d in inventory] == ["0@gpu-a"]


def test_two_whole_gpus_come_from_one_node() -> None:
    state = s.rebuild(CLUSTER, [])
    first = s.allocate(state, s.Holder("ada"), TWO, NOW)
    assert first.device_ids == ("0@gpu-a", "1@gpu-a")
    state = s.with_allocation(state, s.allocate(state, s.Holder("bob"), ONE, NOW))
    assert state.allocations["bob"].device_ids == ("0@gpu-a",)
    # one exclusive GPU free on each node: two exist, but not on one node
    with pytest.raises(s.NoCapacity) as err:
        s.allocate(state, s.Holder("cy"), TWO, NOW)
    assert err.value.possible


def test_a_home_node_without_such_gpus_is_refused_naming_the_node() -> None:
    state = s.rebuild(CLUSTER, [])
    with pytest.raises(s.NoCapacity) as err:
        s.allocate(state, s.Holder("ada"), SLICE, NOW, nodes=frozenset({"gpu-a"}))
    assert not err.value.possible
    assert "node gpu-a (where your files are) cannot provide" in err.value.student_message()
    assert "No a shared GPU slice on node gpu-a" in err.value.admin_message()


def test_a_down_nodes_devices_are_not_given_but_the_spawn_may_wait_for_them() -> None:
    state = s.rebuild(CLUSTER, [])
    with pytest.raises(s.NoCapacity) as err:
        s.allocate(state, s.Holder("ada"), SLICE, NOW, down=frozenset({"gpu-b"}))
    assert err.value.possible
    assert s.allocate(state, s.Holder("ada"), ONE, NOW, down=frozenset({"gpu-a"})).device_ids == (
        "0@gpu-b",
    )


def test_a_spawn_waiting_for_its_home_node_holds_up_no_one_elsewhere() -> None:
    state = s.rebuild(CLUSTER, [])
    for user in ("ada", "bob"):
        on_a = s.allocate(state, s.Holder(user), ONE, NOW, nodes=frozenset({"gpu-a"}))
        state = s.with_allocation(state, on_a)
    state = s.enqueue(state, s.Holder("cy"), ONE, NOW, nodes=frozenset({"gpu-a"}))
    assert s.allocate(state, s.Holder("dan"), ONE, NOW).device_ids == ("0@gpu-b",)
    with pytest.raises(s.NoCapacity):  # cy waits for gpu-a first
        s.allocate(state, s.Holder("eve"), ONE, NOW, nodes=frozenset({"gpu-a"}))


def test_another_nodes_gpu_has_no_utilisation_reading_on_the_hubs_host() -> None:
    from labhub.gpu.inventory import Utilisation

    busy_here = {"0": Utilisation(gpu_percent=90, memory_used_mib=1)}
    assert devices_busy(["0"], busy_here) is True
    assert devices_busy(["0@gpu-a", "0:1@gpu-b"], busy_here) is None


NODES = ("gpu-a", "gpu-b")
USERS = st.sampled_from(["ada", "bob", "cy", "dan", "eve", "fay"])
REQUESTS = st.sampled_from([s.GpuRequest(), ONE, TWO, SLICE])
WHERE = st.sampled_from([None, frozenset({"gpu-a"}), frozenset({"gpu-b"})])
KEYS = st.sampled_from([d.key for d in CLUSTER])


class ClusterSchedulerMachine(RuleBasedStateMachine):
    """Random allocations, releases, drains and nodes leaving and coming back."""

    def __init__(self) -> None:
        super().__init__()
        self.state = s.rebuild(CLUSTER, [])
        self.down: frozenset[str] = frozenset()
        self.clock = NOW

    @rule(user=USERS, request=REQUESTS, nodes=WHERE)
    def allocate(self, user: str, request: s.GpuRequest, nodes: frozenset[str] | None) -> None:
        holder = s.Holder(user)
        self.clock += timedelta(minutes=1)
        if holder.key in self.state.allocations:
            return
        try:
            allocation = s.allocate(self.state, holder, request, self.clock, nodes, self.down)
        except s.NoCapacity:
            # refused only if no allowed, up node has enough free devices of the kind
            for node in set(NODES) - self.down:
                if nodes is not None and node not in nodes:
                    continue
                free = [
                    d
                    for d in CLUSTER
                    if d.node == node
                    and (d.policy == "shared") == request.shared
                    and d.key not in self.state.drained
                    and len(self.state.holders_of(d.key)) < d.capacity
                ]
                assert len(free) < (request.whole or 1)
            return
        on = {split_key(key)[1] for key in allocation.device_ids}
        assert len(on) <= 1, allocation
        assert not on & self.down
        assert nodes is None or on <= nodes
        self.state = s.with_allocation(self.state, allocation)

    @precondition(lambda self: bool(self.state.allocations))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(sorted(self.state.allocations)))
        self.state = s.release(self.state, holder)

    @rule(node=st.sampled_from(NODES), up=st.booleans())
    def node_goes(self, node: str, up: bool) -> None:
        self.down = self.down - {node} if up else self.down | {node}

    @rule(key=KEYS, on=st.booleans())
    def drain(self, key: str, on: bool) -> None:
        self.state = s.drain(self.state, key, on)

    @invariant()
    def no_device_of_any_node_is_overbooked(self) -> None:
        for device in CLUSTER:
            assert len(self.state.holders_of(device.key)) <= device.capacity
        booked = [k for a in self.state.allocations.values() for k in a.device_ids]
        exclusive = {d.key for d in CLUSTER if d.policy == "exclusive"}
        assert len([k for k in booked if k in exclusive]) == len(
            {k for k in booked if k in exclusive}
        )

    @invariant()
    def every_allocation_is_on_one_node(self) -> None:
        for allocation in self.state.allocations.values():
            assert len({split_key(k)[1] for k in allocation.device_ids}) <= 1


# No per-step deadline: a step is microseconds, but a loaded 2-core CI host can stall one.
ClusterSchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestClusterSchedulerMachine = ClusterSchedulerMachine.TestCase
