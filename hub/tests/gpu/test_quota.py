"""Quota rules of the pure layer, as properties: GPU-hours are charged exactly once, split at
ISO week boundaries, and a spawn is refused exactly when an applicable quota is used up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from labhub.gpu import quota
from labhub.gpu.scheduler import Allocation

from .conftest import NOW

pytestmark = pytest.mark.unit

INSTANTS = st.datetimes(
    min_value=datetime(2024, 12, 20), max_value=datetime(2026, 1, 10), timezones=st.just(UTC)
)
DURATIONS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
GROUPS = st.frozensets(st.sampled_from(["nlp", "vision", "students"]))
WEIGHTS = st.sampled_from([0.0, 1 / 3, 0.5, 1.0, 2.0])
HOURS = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(start=INSTANTS, length=DURATIONS)
def test_split_by_week_keeps_every_second_in_its_own_week(
    start: datetime, length: timedelta
) -> None:
    parts = quota.split_by_week(start, start + length)
    assert sum(parts.values()) == pytest.approx(length.total_seconds())
    assert all(0 < seconds <= 7 * 24 * 3600 for seconds in parts.values())
    # the weeks named are exactly those the interval touches, recomputed hour by hour
    if length:
        step, cursor, touched = timedelta(minutes=30), start, set()
        while cursor < start + length:
            touched.add(quota.iso_week(cursor))
            cursor += step
        assert set(parts) >= touched
        assert len(parts) <= len(touched) + 1


@given(start=INSTANTS, length=DURATIONS, weight=WEIGHTS, groups=GROUPS)
def test_holding_charges_weight_times_hours_to_the_user_and_each_group(
    start: datetime, length: timedelta, weight: float, groups: frozenset[str]
) -> None:
    allocation = Allocation(
        holder="ada", user="ada", device_ids=("0",), shared=False, since=start,
        groups=groups, weight=weight,
    )  # fmt: skip
    charged = quota.charges(allocation, start + length)
    subjects = {"user:ada"} | {f"group:{g}" for g in groups}
    for subject in subjects:
        total = sum(h for (_, s), h in charged.items() if s == subject)
        assert total == pytest.approx(weight * length.total_seconds() / 3600)
    assert {s for _, s in charged} <= subjects


@given(
    user_hours=st.none() | HOURS,
    group_hours=st.dictionaries(st.sampled_from(["nlp", "vision"]), HOURS),
    groups=GROUPS,
    used=st.dictionaries(
        st.sampled_from(["user:ada", "group:nlp", "group:vision", "group:students"]), HOURS
    ),
    topups=st.dictionaries(st.sampled_from(["user:ada", "group:nlp"]), HOURS),
)
def test_a_spawn_is_refused_exactly_when_an_applicable_quota_is_used_up(
    user_hours: float | None,
    group_hours: dict[str, float],
    groups: frozenset[str],
    used: dict[str, float],
    topups: dict[str, float],
) -> None:
    policy = quota.QuotaPolicy(user_hours=user_hours, group_hours=group_hours)
    lines = quota.lines_for(policy, "ada", groups, used, topups)
    limits = {} if user_hours is None else {"user:ada": user_hours}
    limits |= {f"group:{g}": h for g, h in group_hours.items() if g in groups}
    assert {line.subject for line in lines} == set(limits)
    for line in lines:
        assert line.limit == pytest.approx(limits[line.subject] + topups.get(line.subject, 0))
    spent = any(used.get(s, 0) >= limit + topups.get(s, 0) for s, limit in limits.items())
    if spent:
        with pytest.raises(quota.QuotaExceeded, match="used up"):
            quota.check(lines)
    else:
        quota.check(lines)


@given(ledger=st.dictionaries(st.sampled_from(["user:ada", "group:nlp"]), HOURS))
def test_running_allocations_count_only_this_weeks_hours(ledger: dict[str, float]) -> None:
    monday = datetime(2025, 11, 24, tzinfo=UTC)
    since_last_week = Allocation(
        holder="ada", user="ada", device_ids=("0",), shared=False,
        since=monday - timedelta(hours=5), weight=1.0,
    )  # fmt: skip
    used = quota.usage_this_week(ledger, [since_last_week], NOW)
    assert used["user:ada"] == pytest.approx(ledger.get("user:ada", 0) + 9.0)  # 00:00 to 09:00
    assert used.get("group:nlp", 0) == ledger.get("group:nlp", 0)
