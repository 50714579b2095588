"""Scheduler: rules, messages, and Hypothesis state-machine tests of the invariants."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from labhub.gpu import scheduler as s
from labhub.gpu.inventory import Device, Inventory

from .conftest import NOW

pytestmark = pytest.mark.unit

ONE = s.GpuRequest(whole=1)
SLICE = s.GpuRequest(shared=True)


def state_with(inventory: Inventory, *holders: tuple[str, s.GpuRequest]) -> s.State:
    state = s.rebuild(inventory, [])
    for name, request in holders:
        state = s.with_allocation(state, s.allocate(state, s.Holder(name), request, NOW))
    return state


def test_whole_gpus_are_exclusive_and_least_loaded_slices(inventory: Inventory) -> None:
    state = state_with(inventory, ("ada", ONE), ("bob", ONE), ("cy", SLICE), ("dan", SLICE))
    assert state.allocations["ada"].device_ids == ("0",)
    assert state.allocations["bob"].device_ids == ("1",)
    assert state.allocations["cy"].device_ids == ("2",)
    assert state.allocations["cy"].memory_cap_mib == 5000
    assert state.allocations["cy"].weight == pytest.approx(1 / 3)
    with pytest.raises(s.NoCapacity) as busy:
        s.allocate(state, s.Holder("eve"), ONE, NOW)
    assert busy.value.possible
    assert "GPU 0 (Test A100): 1/1 holders: ada" in busy.value.admin_message()
    assert "ada" not in busy.value.student_message()
    assert "busy" in busy.value.student_message()


def test_least_loaded_shared_device_first() -> None:
    shared = [
        Device(id=i, model="T4", memory_mib=16000, policy="shared", max_holders=2)
        for i in ("0", "1")
    ]
    state = state_with(tuple(shared), ("a", SLICE), ("b", SLICE))
    assert {state.allocations["a"].device_ids, state.allocations["b"].device_ids} == {
        ("0",),
        ("1",),
    }


def test_request_that_never_fits(inventory: Inventory) -> None:
    with pytest.raises(s.NoCapacity) as err:
        s.allocate(s.rebuild(inventory, []), s.Holder("ada"), s.GpuRequest(whole=3), NOW)
    assert not err.value.possible
    assert "cannot provide" in err.value.student_message()


def test_drain_and_reservations(inventory: Inventory) -> None:
    state = s.drain(s.rebuild(inventory, []), "0")
    state = s.reserve(state, "1", s.Reservation(group="nlp"))
    with pytest.raises(s.NoCapacity) as err:
        s.allocate(state, s.Holder("ada"), ONE, NOW)
    assert "drained" in err.value.admin_message()
    assert "reserved for group nlp" in err.value.admin_message()
    member = s.allocate(state, s.Holder("bob", groups=frozenset({"nlp"})), ONE, NOW)
    assert member.device_ids == ("1",)
    with pytest.raises(KeyError, match="known: 0, 1, 2"):
        s.drain(state, "7")


def test_cpu_request_gets_no_device(inventory: Inventory) -> None:
    allocation = s.allocate(s.rebuild(inventory, []), s.Holder("ada"), s.GpuRequest(), NOW)
    assert allocation.device_ids == () and allocation.weight == 0


def test_rebuild_refuses_double_booking(inventory: Inventory) -> None:
    a = s.Allocation(holder="a", user="a", device_ids=("0",), shared=False, since=NOW)
    b = s.Allocation(holder="b", user="b", device_ids=("0",), shared=False, since=NOW)
    ghost = s.Allocation(holder="c", user="c", device_ids=("9",), shared=False, since=NOW)
    with pytest.raises(s.DoubleBooking) as err:
        s.rebuild(inventory, [a, b, ghost])
    assert err.value.conflicts == {"0": ("a", "b"), "9": ("c",)}


def test_holder_cannot_allocate_twice(inventory: Inventory) -> None:
    state = state_with(inventory, ("ada", ONE))
    with pytest.raises(s.AlreadyHolding):
        s.allocate(state, s.Holder("ada"), ONE, NOW)


USERS = st.sampled_from(["ada", "bob", "cy", "dan", "eve", "fay"])
REQUESTS = st.sampled_from([s.GpuRequest(), ONE, s.GpuRequest(whole=2), SLICE])
DEVICE_IDS = st.sampled_from(["0", "1", "2", "3"])


def test_a_waiting_spawn_is_served_before_a_newcomer(inventory: Inventory) -> None:
    state = state_with(inventory, ("ada", ONE), ("bob", ONE))
    state = s.enqueue(state, s.Holder("cy"), ONE, NOW)
    state = s.release(state, "ada")
    with pytest.raises(s.NoCapacity) as err:  # a GPU is free, but cy was first
        s.allocate(state, s.Holder("dan"), ONE, NOW)
    assert err.value.possible
    # a slice is another line: cy's wait for a whole GPU does not hold it up
    assert s.allocate(state, s.Holder("dan"), SLICE, NOW).device_ids == ("2",)
    granted = s.with_allocation(state, s.allocate(state, s.Holder("cy"), ONE, NOW))
    assert granted.queue == () and granted.allocations["cy"].device_ids == ("0",)


class SchedulerMachine(RuleBasedStateMachine):
    """Random allocate/wait/release/drain/reserve sequences never break the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.inventory: Inventory = (
            Device(id="0", model="A", memory_mib=1000),
            Device(id="1", model="A", memory_mib=1000),
            Device(id="2", model="A", memory_mib=1000),
            Device(id="3", model="T4", memory_mib=900, policy="shared", max_holders=3),
        )
        self.state = s.rebuild(self.inventory, [])
        self.clock = NOW

    @rule(user=USERS, request=REQUESTS, group=st.sampled_from(["", "nlp"]))
    def allocate(self, user: str, request: s.GpuRequest, group: str) -> None:
        holder = s.Holder(user, groups=frozenset({group} - {""}))
        self.clock += timedelta(minutes=1)
        if holder.key in self.state.allocations:
            return
        ahead = self.state.first_in_line(request) if request.wants_gpu else None
        try:
            allocation = s.allocate(self.state, holder, request, self.clock)
        except s.NoCapacity as e:
            if ahead not in (None, holder.key):
                return  # first come, first served: someone waits for this kind ahead
            # refused only if fewer usable devices of the right kind than needed
            usable = [
                d
                for d in self.inventory
                if (d.policy == "shared") == request.shared
                and d.id not in self.state.drained
                and self._admits(d.id, holder)
                and len(self.state.holders_of(d.id)) < d.capacity
            ]
            assert len(usable) < (request.whole or 1), e
            return
        for device_id in allocation.device_ids:
            assert device_id not in self.state.drained
            assert self._admits(device_id, holder)
        assert len(set(allocation.device_ids)) == len(allocation.device_ids)
        # nobody else waiting for this kind of request was overtaken
        assert ahead in (None, holder.key)
        self.state = s.with_allocation(self.state, allocation)

    @rule(user=USERS, request=REQUESTS)
    def wait(self, user: str, request: s.GpuRequest) -> None:
        """A spawn joins the queue (as the store does when nothing fits and queueing is on)."""
        self.clock += timedelta(minutes=1)
        if user in self.state.allocations:
            with pytest.raises(s.AlreadyHolding):
                s.enqueue(self.state, s.Holder(user), request, self.clock)
            return
        before = self.state.queue
        self.state = s.enqueue(self.state, s.Holder(user), request, self.clock)
        if request.wants_gpu and all(w.holder != user for w in before):
            assert self.state.queue[-1].holder == user  # the newest waits last
        else:
            assert self.state.queue == before

    @precondition(lambda self: bool(self.state.queue))
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from([w.holder for w in self.state.queue]))
        self.state = s.leave_queue(self.state, holder)
        assert self.state.position(holder) is None

    def _admits(self, device_id: str, holder: s.Holder) -> bool:
        reservation = self.state.reservations.get(device_id)
        return reservation is None or reservation.admits(holder)

    @precondition(lambda self: bool(self.state.allocations))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from(sorted(self.state.allocations)))
        self.state = s.release(self.state, holder)
        assert holder not in self.state.allocations

    @rule(device=DEVICE_IDS, on=st.booleans())
    def drain(self, device: str, on: bool) -> None:
        self.state = s.drain(self.state, device, on)

    @rule(device=DEVICE_IDS, who=st.sampled_from([None, "ada", "@nlp"]))
    def reserve(self, device: str, who: str | None) -> None:
        reservation = None
        if who is not None:
            reservation = (
                s.Reservation(group=who[1:]) if who.startswith("@") else s.Reservation(user=who)
            )
        self.state = s.reserve(self.state, device, reservation)

    @invariant()
    def never_overbooked(self) -> None:
        for device in self.inventory:
            holders = self.state.holders_of(device.id)
            assert len(holders) <= device.capacity
            kinds = {self.state.allocations[h].shared for h in holders}
            assert kinds <= {device.policy == "shared"}

    @invariant()
    def the_queue_is_in_arrival_order_and_holds_no_holder(self) -> None:
        queue = self.state.queue
        assert [w.since for w in queue] == sorted(w.since for w in queue)
        assert len({w.holder for w in queue}) == len(queue)
        assert not {w.holder for w in queue} & set(self.state.allocations)
        for w in queue:
            same = [x.holder for x in queue if x.request == w.request]
            assert self.state.position(w.holder) == same.index(w.holder) + 1

    @invariant()
    def rebuild_round_trips(self) -> None:
        again = s.rebuild(
            self.inventory,
            list(self.state.allocations.values()),
            self.state.reservations,
            self.state.drained,
            reversed(self.state.queue),
        )
        assert again == self.state


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
TestSchedulerMachine = SchedulerMachine.TestCase
