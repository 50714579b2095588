"""Pure GPU-time quota math: GPU-hours per ISO week, per user and per group.

Usage is counted on *subjects*: ``user:alice`` and ``group:nlp``. Holding devices for an
hour charges ``allocation.weight`` GPU-hours (1 per whole GPU, 1/max_holders per shared
slice) to the user and to every group the user was in at spawn time, in the ISO week(s) the
hours fell in. The store keeps the ledger; this module only computes.

A spawn is refused when any quota that applies to the user has nothing left this week
(admins top up or reset it on the admin page). A server already running is not stopped when
its quota runs out during the week.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from labhub.gpu.scheduler import Allocation


def user_subject(user: str) -> str:
    return f"user:{user}"


def group_subject(group: str) -> str:
    return f"group:{group}"


def iso_week(when: datetime) -> str:
    """``2025-W48`` for any instant in that ISO week."""
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def _week_start(when: datetime) -> datetime:
    midnight = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=when.isoweekday() - 1)


def split_by_week(start: datetime, end: datetime) -> dict[str, float]:
    """Seconds between ``start`` and ``end``, split by ISO week."""
    out: dict[str, float] = {}
    cursor = start
    while cursor < end:
        boundary = min(end, _week_start(cursor) + timedelta(days=7))
        week = iso_week(cursor)
        out[week] = out.get(week, 0.0) + (boundary - cursor).total_seconds()
        cursor = boundary
    return out


def charges(allocation: Allocation, end: datetime) -> dict[tuple[str, str], float]:
    """(week, subject) -> GPU-hours for holding ``allocation`` until ``end``."""
    subjects = [user_subject(allocation.user), *map(group_subject, sorted(allocation.groups))]
    out: dict[tuple[str, str], float] = {}
    if allocation.weight <= 0:
        return out
    for week, seconds in split_by_week(allocation.since, end).items():
        for subject in subjects:
            out[(week, subject)] = seconds / 3600 * allocation.weight
    return out


@dataclass(frozen=True)
class QuotaPolicy:
    """Weekly GPU-hour limits. ``None``/absent means no limit for that subject."""

    user_hours: float | None = None
    group_hours: Mapping[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.user_hours is not None or bool(self.group_hours)


@dataclass(frozen=True)
class QuotaLine:
    """One applicable quota this week: limit (incl. top-ups), used and left, in GPU-hours."""

    subject: str
    limit: float
    used: float

    @property
    def left(self) -> float:
        return max(0.0, self.limit - self.used)


class QuotaExceeded(Exception):
    """A spawn would exceed a GPU-time quota; the message says which and how to get more."""


def usage_this_week(
    ledger: Mapping[str, float], running: Iterable[Allocation], now: datetime
) -> dict[str, float]:
    """Ledger hours of this week plus what running allocations have used so far this week."""
    used = dict(ledger)
    week = iso_week(now)
    for allocation in running:
        for (charge_week, subject), hours in charges(allocation, now).items():
            if charge_week == week:
                used[subject] = used.get(subject, 0.0) + hours
    return used


def limits(
    policy: QuotaPolicy, users: Iterable[str], groups: Iterable[str], topups: Mapping[str, float]
) -> dict[str, float]:
    """Each subject's limit this week, top-ups included: the per-user quota for each of
    ``users``, and the quota of each of ``groups`` that has one (in that order)."""
    out: dict[str, float] = {}
    if policy.user_hours is not None:
        for user in users:
            out[user_subject(user)] = policy.user_hours
    for group in groups:
        if group in policy.group_hours:
            out[group_subject(group)] = policy.group_hours[group]
    return {subject: limit + topups.get(subject, 0.0) for subject, limit in out.items()}


def lines_for(
    policy: QuotaPolicy,
    user: str,
    groups: Iterable[str],
    used: Mapping[str, float],
    topups: Mapping[str, float],
) -> list[QuotaLine]:
    """The quotas that apply to ``user`` this week, given usage and top-ups per subject."""
    return [
        QuotaLine(subject=s, limit=limit, used=used.get(s, 0.0))
        for s, limit in limits(policy, [user], sorted(groups), topups).items()
    ]


def check(lines: Iterable[QuotaLine]) -> None:
    """Refuse (raise :class:`QuotaExceeded`) if any applicable quota has nothing left."""
    spent = [line for line in lines if line.left <= 0]
    if spent:
        detail = "; ".join(
            f"{x.subject} used {x.used:.1f} of {x.limit:.1f} GPU-hours" for x in spent
        )
        raise QuotaExceeded(
            f"GPU-time quota for this week is used up ({detail}). Use the CPU profile, wait "
            "for next week (quotas reset on Monday 00:00 UTC), or ask an admin for a top-up."
        )
