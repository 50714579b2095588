"""The reclaiming policy (labhub.gpu.reclaim), property-tested: samples of utilisation over
time, the session's start and extensions, the hub's activity -> keep, warn or stop.

The expected outcome is recomputed here from the samples themselves (the longest run of
idle samples, the session's end), not taken from the code under test.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub.gpu.inventory import Utilisation
from labhub.gpu.reclaim import (
    Deadlines,
    IdleClock,
    Keep,
    Rules,
    Stop,
    Warn,
    deadlines,
    decide,
    devices_busy,
)

from .conftest import NOW

pytestmark = pytest.mark.unit

rules_st = st.builds(
    Rules,
    idle_timeout_s=st.integers(60, 3600),
    warn_s=st.integers(0, 59),
    session_max_s=st.sampled_from([0, 600, 3600, 8 * 3600]),
    extension_s=st.integers(60, 7200),
    extensions=st.integers(0, 3),
    hub_idle_timeout_s=st.just(0),
    nvml=st.just(True),
)
# A cull round: seconds since the previous one, and what nvidia-smi said (None: no reading).
rounds_st = st.lists(
    st.tuples(st.integers(1, 600), st.sampled_from([True, False, None])), min_size=1, max_size=60
)


def simulate(
    rules: Rules, rounds: list[tuple[int, bool | None]], extensions_used: int = 0
) -> list[tuple[datetime, bool | None, object]]:
    """Run the culler's loop on the samples until a stop; (time, sample, decision) each round."""
    clock = IdleClock()
    now, seen = NOW, []
    for gap, busy in rounds:
        now += timedelta(seconds=gap)
        clock.observe(busy, now)
        due = deadlines(rules, NOW, extensions_used, clock.idle_since, None)
        decision = decide(rules, due, now)
        seen.append((now, busy, decision))
        if isinstance(decision, Stop):
            break
    return seen


def idle_run_start(seen: list[tuple[datetime, bool | None, object]]) -> datetime | None:
    """When the run of idle samples that ends with the last sample began (None: not idle)."""
    start = None
    for at, busy, _ in seen:
        start = (start or at) if busy is False else None
    return start


@given(rules=rules_st, rounds=rounds_st)
def test_stops_for_idle_gpu_exactly_when_idle_samples_span_the_timeout(
    rules: Rules, rounds: list[tuple[int, bool | None]]
) -> None:
    seen = simulate(rules, rounds)
    for i, (at, _, decision) in enumerate(seen):
        start = idle_run_start(seen[: i + 1])
        idle_for = (at - start).total_seconds() if start else -1
        ended = rules.length_stop_at(NOW, 0)
        length_over = ended is not None and at >= ended
        if isinstance(decision, Stop):
            assert length_over or idle_for >= rules.idle_timeout_s
            if decision.reason == "utilisation-idle":
                assert idle_for >= rules.idle_timeout_s
        else:
            assert idle_for < rules.idle_timeout_s and not length_over


@given(rules=rules_st, rounds=rounds_st)
def test_a_stop_is_warned_of_when_rounds_come_often_enough(
    rules: Rules, rounds: list[tuple[int, bool | None]]
) -> None:
    """Rounds at most half the warning window apart: no stop comes unannounced."""
    if rules.warn_s < 2:
        return
    gaps = [(min(gap, rules.warn_s // 2), busy) for gap, busy in rounds]
    seen = simulate(rules, gaps)
    *before, (stopped_at, _, last) = seen
    if not isinstance(last, Stop) or stopped_at - NOW <= timedelta(seconds=rules.warn_s):
        return
    warnings = [d for _, _, d in before if isinstance(d, Warn) and d.reason == last.reason]
    assert warnings, seen
    assert warnings[-1].stop_at <= stopped_at


@given(
    rules=rules_st.filter(lambda r: r.session_max_s > 0),
    used=st.integers(0, 3),
    after=st.integers(-10_000, 10_000),
)
def test_a_session_ends_at_its_length_plus_the_extensions_taken(
    rules: Rules, used: int, after: int
) -> None:
    end = NOW + timedelta(seconds=rules.session_max_s + used * rules.extension_s)
    due = deadlines(rules, NOW, used, None, None)
    assert due.length_stop_at == end
    now = end + timedelta(seconds=after)
    decision = decide(rules, due, now)
    if after >= 0:
        assert decision == Stop("session-length")
    elif -after <= rules.warn_s:
        assert decision == Warn("session-length", end)
    else:
        assert decision == Keep()
    # One more extension moves the end by exactly one extension.
    later = deadlines(rules, NOW, used + 1, None, None).length_stop_at
    assert later is not None and later - end == timedelta(seconds=rules.extension_s)


@given(rounds=rounds_st)
def test_without_nvml_or_with_the_rule_at_zero_nothing_stops_for_utilisation(
    rounds: list[tuple[int, bool | None]],
) -> None:
    for rules in (Rules(60, 10, 0, 60, 0, 0, nvml=False), Rules(0, 10, 0, 60, 0, 0, nvml=True)):
        seen = simulate(rules, rounds)
        assert all(isinstance(d, Keep) for _, _, d in seen)


def test_the_earliest_deadline_gives_the_reason() -> None:
    rules = Rules(60, 30, 600, 60, 1, 300, nvml=True)
    due = Deadlines(
        idle_stop_at=NOW + timedelta(seconds=20),
        length_stop_at=NOW + timedelta(seconds=10),
        hub_idle_stop_at=NOW + timedelta(seconds=5),
    )
    assert decide(rules, due, NOW) == Warn("hub-idle", NOW + timedelta(seconds=5))
    assert decide(rules, due, NOW + timedelta(seconds=25)) == Stop("hub-idle")


@pytest.mark.parametrize(
    ("devices", "readings", "busy"),
    [
        (("0",), {"0": 0}, False),
        (("0",), {"0": 3}, True),
        (("0", "1"), {"0": 0, "1": 1}, True),
        # A MIG instance or a shared slice is read through its parent GPU.
        (("2:1",), {"2": 0}, False),
        (("2:1",), {"2": 55}, True),
        # No reading for the device: unknown, never idle.
        (("3",), {"0": 0}, None),
    ],
    ids=["idle", "busy", "one-of-two-busy", "mig-idle", "mig-parent-busy", "no-reading"],
)
def test_devices_busy(
    devices: tuple[str, ...], readings: dict[str, int], busy: bool | None
) -> None:
    utilisation = {k: Utilisation(gpu_percent=v, memory_used_mib=0) for k, v in readings.items()}
    assert devices_busy(devices, utilisation) is busy
