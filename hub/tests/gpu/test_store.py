"""Store: atomic allocation under concurrency, queue, quotas, audit log, restart adoption."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from labhub.gpu import quota
from labhub.gpu.inventory import Device, Inventory
from labhub.gpu.scheduler import Allocation, DoubleBooking, GpuRequest, Holder, NoCapacity
from labhub.gpu.store import Store

from .conftest import NOW

pytestmark = pytest.mark.unit

ONE = GpuRequest(whole=1)


def test_twenty_users_at_once_on_two_exclusive_gpus(store: Store) -> None:
    two: Inventory = tuple(Device(id=i, model="A", memory_mib=1000) for i in ("0", "1"))

    def spawn(n: int) -> tuple[str, ...] | str:
        try:
            return store.allocate(two, Holder(f"user{n}"), ONE, NOW).device_ids
        except NoCapacity as e:
            return e.student_message()

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(spawn, range(20)))
    granted = [r for r in results if isinstance(r, tuple)]
    assert sorted(granted) == [("0",), ("1",)]
    assert sum("busy" in r for r in results if isinstance(r, str)) == 18
    assert len(store.allocations()) == 2


def test_release_charges_usage_and_quota_refuses(store: Store, inventory: Inventory) -> None:
    policy = quota.QuotaPolicy(user_hours=2.0, group_hours={"nlp": 10.0})
    ada = Holder("ada", groups=frozenset({"nlp"}))
    store.allocate(inventory, ada, ONE, NOW, policy)
    store.release("ada", NOW + timedelta(hours=2), reason="culled")
    assert store.usage(NOW + timedelta(hours=3)) == {"user:ada": 2.0, "group:nlp": 2.0}
    with pytest.raises(quota.QuotaExceeded, match=r"user:ada used 2\.0 of 2\.0"):
        store.allocate(inventory, ada, ONE, NOW + timedelta(hours=3), policy)
    # a CPU server is never refused for GPU quota
    assert store.allocate(inventory, ada, GpuRequest(), NOW, policy).device_ids == ()
    store.topup("user:ada", 1.5, "root", NOW)
    lines = store.quota_lines(policy, "ada", frozenset({"nlp"}), NOW + timedelta(hours=3))
    assert [(x.subject, x.left) for x in lines] == [("user:ada", 1.5), ("group:nlp", 8.0)]
    store.reset("user:ada", "root", NOW)
    assert store.allocate(inventory, ada, ONE, NOW + timedelta(hours=4), policy).device_ids
    actions = [e.action for e in store.audit()]
    assert actions == ["allocate", "reset", "topup", "release", "allocate"]


def test_queue_is_first_come_first_served(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("a"), ONE, NOW)
    store.allocate(inventory, Holder("b"), ONE, NOW)
    for name, minute in (("early", 1), ("late", 2)):
        when = NOW + timedelta(minutes=minute)
        with pytest.raises(NoCapacity):
            store.allocate(inventory, Holder(name), ONE, when, queue=True)
    assert [h for h, _, _ in store.queue()] == ["early", "late"]
    assert store.queue_position(inventory, "late") == 2
    store.release("a", NOW + timedelta(minutes=3))
    with pytest.raises(NoCapacity):  # late may not overtake early
        store.allocate(inventory, Holder("late"), ONE, NOW + timedelta(minutes=4), queue=True)
    assert store.allocate(inventory, Holder("early"), ONE, NOW, queue=True).device_ids == ("0",)
    assert store.queue_position(inventory, "early") is None
    store.leave_queue("late")
    assert store.queue() == []


def test_reservation_and_drain_are_recorded(store: Store, inventory: Inventory) -> None:
    from labhub.gpu.scheduler import Reservation

    store.set_reservation(inventory, "0", Reservation(user="ada"), "root", NOW)
    store.set_drained(inventory, "1", True, "root", NOW)
    with pytest.raises(NoCapacity, match="reserved for user ada"):
        store.allocate(inventory, Holder("bob"), ONE, NOW)
    assert store.allocate(inventory, Holder("ada"), ONE, NOW).device_ids == ("0",)
    with pytest.raises(KeyError, match="no device '9'"):
        store.set_drained(inventory, "9", True, "root", NOW)
    assert store.drained_since() == {"1": NOW.isoformat()}


def test_audit_log_is_append_only(store: Store) -> None:
    store.record("root", "revoke", NOW, holder="ada")
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()


def test_adopt_after_restart(store: Store, inventory: Inventory) -> None:
    store.allocate(inventory, Holder("gone"), ONE, NOW)
    kept = Allocation(holder="kept", user="kept", device_ids=("1",), shared=False, since=NOW,
                      weight=1.0)  # fmt: skip
    released, adopted = store.adopt(inventory, [kept], NOW + timedelta(hours=1))
    assert (released, adopted) == (["gone"], ["kept"])
    assert [a.holder for a in store.allocations()] == ["kept"]
    twin = Allocation(holder="twin", user="twin", device_ids=("1",), shared=False, since=NOW)
    with pytest.raises(DoubleBooking):
        store.adopt(inventory, [kept, twin], NOW)
    assert [a.holder for a in store.allocations()] == ["kept"]


def test_split_by_week_crosses_monday() -> None:
    sunday_night = NOW - timedelta(hours=10)  # NOW is Monday 09:00 UTC
    assert quota.split_by_week(sunday_night, NOW) == {"2025-W47": 3600.0, "2025-W48": 32400.0}
