"""SQLite persistence for GPU allocation, shared by the hub and the admin service.

One file on the hub's data volume (setting ``GPU_DB``), WAL mode. Every change runs in its
own ``BEGIN IMMEDIATE`` transaction on a fresh connection, so two processes (hub and admin
service) and many threads serialise on SQLite's write lock: the scheduler decision and its
record are atomic and nothing is double-booked.

Methods block (a few ms): call them from async code with ``asyncio.to_thread``.

Tables: ``allocations`` (one row per holder), ``reservations``, ``drained``, ``queue``
(waiting spawns, oldest first), ``usage`` (GPU-hours per ISO week and subject), ``topups``,
``extensions`` (session extensions taken, per holder and allocation start) and the
append-only ``audit`` log (every allocation, release, admin action, warning and cull).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from labhub.gpu import quota, scheduler
from labhub.gpu.inventory import Inventory
from labhub.gpu.scheduler import Allocation, GpuRequest, Holder, Reservation, State, Waiting

BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS allocations (
    holder TEXT PRIMARY KEY, user TEXT NOT NULL, groups TEXT NOT NULL,
    device_ids TEXT NOT NULL, shared INTEGER NOT NULL, memory_cap_mib INTEGER,
    weight REAL NOT NULL, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    device_id TEXT PRIMARY KEY, user TEXT, grp TEXT, since TEXT NOT NULL, actor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drained (
    device_id TEXT PRIMARY KEY, since TEXT NOT NULL, actor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes_down (
    node TEXT PRIMARY KEY, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    holder TEXT PRIMARY KEY, request TEXT NOT NULL, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    week TEXT NOT NULL, subject TEXT NOT NULL, hours REAL NOT NULL, PRIMARY KEY (week, subject));
CREATE TABLE IF NOT EXISTS topups (
    week TEXT NOT NULL, subject TEXT NOT NULL, hours REAL NOT NULL, PRIMARY KEY (week, subject));
CREATE TABLE IF NOT EXISTS extensions (
    holder TEXT NOT NULL, since TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (holder, since));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    detail: dict[str, Any]


def _row_to_allocation(row: sqlite3.Row) -> Allocation:
    return Allocation(
        holder=row["holder"],
        user=row["user"],
        groups=frozenset(json.loads(row["groups"])),
        device_ids=tuple(json.loads(row["device_ids"])),
        shared=bool(row["shared"]),
        memory_cap_mib=row["memory_cap_mib"],
        weight=row["weight"],
        since=datetime.fromisoformat(row["since"]),
    )


def allocation_to_json(a: Allocation) -> dict[str, Any]:
    """A JSON-friendly view of an allocation (admin API, audit log)."""
    return {
        "holder": a.holder,
        "user": a.user,
        "groups": sorted(a.groups),
        "device_ids": list(a.device_ids),
        "shared": a.shared,
        "memory_cap_mib": a.memory_cap_mib,
        "weight": a.weight,
        "since": a.since.isoformat(),
    }


def allocation_from_json(data: Mapping[str, Any]) -> Allocation:
    """The inverse of :func:`allocation_to_json` (spawner state)."""
    return Allocation(
        holder=data["holder"],
        user=data["user"],
        groups=frozenset(data["groups"]),
        device_ids=tuple(data["device_ids"]),
        shared=data["shared"],
        memory_cap_mib=data["memory_cap_mib"],
        weight=data["weight"],
        since=datetime.fromisoformat(data["since"]),
    )


class ExtensionRefused(Exception):
    """No extension for this holder; the message is for the student."""


def booked_devices(path: str | Path, holder: str) -> tuple[str, ...] | None:
    """The devices the record at ``path`` books for ``holder`` (None: no booking), read
    only: for the Swarm Docker proxy, which must never write the hub's record."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        row = conn.execute("SELECT device_ids FROM allocations WHERE holder = ?", (holder,))
        found = row.fetchone()
    finally:
        conn.close()
    return tuple(json.loads(found[0])) if found else None


class Store:
    """The GPU allocation database at ``path`` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def hold_open(self) -> None:
        """Keep one connection open for this store's life. While one is open SQLite keeps the
        record's -wal and -shm files, without which a reader on a read-only mount of its
        folder (the Swarm Docker proxy's GPU_DB) cannot open it at all."""
        self._held = self._connect()
        self._held.execute("SELECT 1 FROM allocations LIMIT 1").fetchall()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- reading ------------------------------------------------------------------------

    def _state(self, conn: sqlite3.Connection, inventory: Inventory) -> State:
        allocations = [_row_to_allocation(r) for r in conn.execute("SELECT * FROM allocations")]
        reservations = {
            r["device_id"]: Reservation(user=r["user"], group=r["grp"])
            for r in conn.execute("SELECT * FROM reservations")
        }
        drained = [r["device_id"] for r in conn.execute("SELECT device_id FROM drained")]
        queue = [
            Waiting(r["holder"], r["request"], datetime.fromisoformat(r["since"]))
            for r in conn.execute("SELECT * FROM queue")
        ]
        return scheduler.rebuild(inventory, allocations, reservations, drained, queue)

    def state(self, inventory: Inventory) -> State:
        """The current scheduler state (raises DoubleBooking if the file was tampered with)."""
        with self._tx() as conn:
            return self._state(conn, inventory)

    def allocations(self) -> list[Allocation]:
        with self._tx() as conn:
            return [_row_to_allocation(r) for r in conn.execute("SELECT * FROM allocations")]

    def queue_position(self, inventory: Inventory, holder: str) -> int | None:
        """1 for the oldest waiter of its kind of request; None if ``holder`` is not waiting."""
        return self.state(inventory).position(holder)

    def queue(self) -> list[tuple[str, str, str]]:
        """Waiting spawns, oldest first: (holder, request description, since)."""
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM queue ORDER BY since, holder").fetchall()
        return [(r["holder"], r["request"], r["since"]) for r in rows]

    def _ledger(self, conn: sqlite3.Connection, table: str, week: str) -> dict[str, float]:
        rows = conn.execute(f"SELECT subject, hours FROM {table} WHERE week = ?", (week,))
        return {r["subject"]: r["hours"] for r in rows}

    def usage(self, now: datetime) -> dict[str, float]:
        """GPU-hours per subject this ISO week, running allocations included."""
        with self._tx() as conn:
            return self._usage(conn, now)

    def _usage(self, conn: sqlite3.Connection, now: datetime) -> dict[str, float]:
        running = [_row_to_allocation(r) for r in conn.execute("SELECT * FROM allocations")]
        ledger = self._ledger(conn, "usage", quota.iso_week(now))
        return quota.usage_this_week(ledger, running, now)

    def week_ledgers(self, now: datetime) -> tuple[dict[str, float], dict[str, float]]:
        """(GPU-hours used, hours topped up) per subject this ISO week."""
        with self._tx() as conn:
            return self._usage(conn, now), self._ledger(conn, "topups", quota.iso_week(now))

    def event_counts(self) -> dict[tuple[str, str], int]:
        """Audit entries counted by (action, reason); reason "" where there is none."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT action, COALESCE(json_extract(detail, '$.reason'), '') AS reason, "
                "COUNT(*) AS n FROM audit GROUP BY action, reason"
            ).fetchall()
        return {(r["action"], str(r["reason"])): r["n"] for r in rows}

    def quota_lines(
        self, policy: quota.QuotaPolicy, user: str, groups: frozenset[str], now: datetime
    ) -> list[quota.QuotaLine]:
        with self._tx() as conn:
            return self._quota_lines(conn, policy, user, groups, now)

    def _quota_lines(
        self,
        conn: sqlite3.Connection,
        policy: quota.QuotaPolicy,
        user: str,
        groups: frozenset[str],
        now: datetime,
    ) -> list[quota.QuotaLine]:
        used = self._usage(conn, now)
        topups = self._ledger(conn, "topups", quota.iso_week(now))
        return quota.lines_for(policy, user, groups, used, topups)

    def audit(self, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        with self._tx() as conn:
            rows = conn.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
            return [
                AuditEntry(r["id"], r["at"], r["actor"], r["action"], json.loads(r["detail"]))
                for r in rows
            ]

    def extensions_used(self) -> dict[str, int]:
        """Holder -> session extensions taken since its current allocation started."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT e.holder, e.used FROM extensions e JOIN allocations a "
                "ON a.holder = e.holder AND a.since = e.since"
            ).fetchall()
        return {r["holder"]: r["used"] for r in rows}

    # -- writing ------------------------------------------------------------------------

    def extend(self, holder: str, allowed: int, actor: str, now: datetime) -> int:
        """Take one more session extension for ``holder``'s GPU allocation; return how many
        it has taken. Raises ``LookupError`` when the holder holds no GPU and
        :class:`ExtensionRefused` when all ``allowed`` are taken. Audited as ``extend``."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT since, device_ids FROM allocations WHERE holder = ?", (holder,)
            ).fetchone()
            if row is None or not json.loads(row["device_ids"]):
                raise LookupError(holder)
            used_row = conn.execute(
                "SELECT used FROM extensions WHERE holder = ? AND since = ?",
                (holder, row["since"]),
            ).fetchone()
            used = used_row["used"] if used_row else 0
            if used >= allowed:
                raise ExtensionRefused(
                    f"no extension left: this GPU session had its {allowed} extension(s)"
                    if allowed
                    else "GPU sessions cannot be extended here (GPU_SESSION_EXTENSIONS is 0)"
                )
            # Rows of earlier allocations of this holder are spent: keep the table small.
            conn.execute("DELETE FROM extensions WHERE holder = ?", (holder,))
            conn.execute(
                "INSERT INTO extensions VALUES (?, ?, ?)", (holder, row["since"], used + 1)
            )
            self._log(conn, now, actor, "extend", holder=holder, extensions_used=used + 1)
            return used + 1

    def _log(
        self, conn: sqlite3.Connection, now: datetime, actor: str, action: str, **detail: Any
    ) -> None:
        conn.execute(
            "INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
            (now.isoformat(), actor, action, json.dumps(detail, sort_keys=True)),
        )

    def _insert(self, conn: sqlite3.Connection, a: Allocation) -> None:
        conn.execute(
            "INSERT INTO allocations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a.holder,
                a.user,
                json.dumps(sorted(a.groups)),
                json.dumps(list(a.device_ids)),
                int(a.shared),
                a.memory_cap_mib,
                a.weight,
                a.since.isoformat(),
            ),
        )

    def _release(
        self, conn: sqlite3.Connection, holder: str, now: datetime, actor: str, reason: str
    ) -> Allocation | None:
        row = conn.execute("SELECT * FROM allocations WHERE holder = ?", (holder,)).fetchone()
        if row is None:
            return None
        allocation = _row_to_allocation(row)
        conn.execute("DELETE FROM allocations WHERE holder = ?", (holder,))
        for (week, subject), hours in quota.charges(allocation, now).items():
            conn.execute(
                "INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (week, subject) "
                "DO UPDATE SET hours = hours + excluded.hours",
                (week, subject, hours),
            )
        if allocation.device_ids:
            self._log(conn, now, actor, "release", holder=holder, reason=reason,
                      devices=list(allocation.device_ids))  # fmt: skip
        return allocation

    def allocate(
        self,
        inventory: Inventory,
        holder: Holder,
        request: GpuRequest,
        now: datetime,
        policy: quota.QuotaPolicy | None = None,
        queue: bool = False,
        nodes: frozenset[str] | None = None,
        down: frozenset[str] = frozenset(),
    ) -> Allocation:
        """Release what ``holder`` held, then schedule ``request`` and record it, atomically.

        ``nodes`` and ``down``: on a Swarm, where the server may run and which nodes take no
        task now (:func:`labhub.gpu.scheduler.allocate`).

        Raises ``QuotaExceeded`` or ``NoCapacity``. With ``queue=True`` the holder joins
        the queue on ``NoCapacity`` (call again to retry); while spawns wait for the same
        kind of request, only the oldest of them may be served (first come, first served).
        """
        with self._tx() as conn:
            self._release(conn, holder.key, now, holder.user, "respawn")
            if policy is not None and request.wants_gpu:
                quota.check(self._quota_lines(conn, policy, holder.user, holder.groups, now))
            state = self._state(conn, inventory)
            refused: scheduler.NoCapacity | None = None
            try:
                allocation = scheduler.allocate(state, holder, request, now, nodes, down)
            except scheduler.NoCapacity as e:
                if queue and e.possible:  # committed: the refusal below is not a rollback
                    waiting = scheduler.enqueue(state, holder, request, now, nodes)
                    self._write_queue(conn, state, waiting)
                refused = e
            else:
                self._write_queue(conn, state, scheduler.with_allocation(state, allocation))
                self._insert(conn, allocation)
                if allocation.device_ids:
                    self._log(conn, now, holder.user, "allocate", **allocation_to_json(allocation))
        if refused is not None:
            raise refused
        return allocation

    def _write_queue(self, conn: sqlite3.Connection, before: State, after: State) -> None:
        """Record the queue changes of one scheduler decision (most change nothing)."""
        gone, new = set(before.queue) - set(after.queue), set(after.queue) - set(before.queue)
        conn.executemany("DELETE FROM queue WHERE holder = ?", [(w.holder,) for w in gone])
        conn.executemany(
            "INSERT INTO queue VALUES (?, ?, ?)",
            [(w.holder, w.request, w.since.isoformat()) for w in new],
        )

    def release(
        self, holder: str, now: datetime, actor: str = "hub", reason: str = "stopped"
    ) -> Allocation | None:
        """Free ``holder``'s devices (and leave the queue) and charge its GPU time."""
        with self._tx() as conn:
            conn.execute("DELETE FROM queue WHERE holder = ?", (holder,))
            return self._release(conn, holder, now, actor, reason)

    def leave_queue(self, holder: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM queue WHERE holder = ?", (holder,))

    def adopt(
        self, inventory: Inventory, observed: list[Allocation], now: datetime
    ) -> tuple[list[str], list[str]]:
        """Make the record match the running containers after a hub restart.

        Records without a container are released (their GPU time charged); containers
        without a record are adopted. Raises ``DoubleBooking`` (nothing changed) if the
        result would overbook. Returns (released holders, adopted holders).
        """
        with self._tx() as conn:
            recorded = {a.holder: a for a in map(_row_to_allocation, conn.execute(
                "SELECT * FROM allocations"))}  # fmt: skip
            seen = {a.holder: a for a in observed}
            scheduler.rebuild(inventory, seen.values())
            released = sorted(set(recorded) - set(seen))
            adopted = sorted(set(seen) - set(recorded))
            for holder in released:
                self._release(conn, holder, now, "hub", "no container after restart")
            for holder in adopted:
                self._insert(conn, seen[holder])
                self._log(conn, now, "hub", "adopt", **allocation_to_json(seen[holder]))
            return released, adopted

    def set_reservation(
        self, inventory: Inventory, device_id: str, reservation: Reservation | None,
        actor: str, now: datetime,
    ) -> None:  # fmt: skip
        """Reserve a device for a user or group, or clear its reservation with ``None``."""
        with self._tx() as conn:
            scheduler.reserve(self._state(conn, inventory), device_id, reservation)
            conn.execute("DELETE FROM reservations WHERE device_id = ?", (device_id,))
            if reservation is not None:
                conn.execute(
                    "INSERT INTO reservations VALUES (?, ?, ?, ?, ?)",
                    (device_id, reservation.user, reservation.group, now.isoformat(), actor),
                )
            self._log(conn, now, actor, "reserve" if reservation else "unreserve",
                      device=device_id, user=reservation and reservation.user,
                      group=reservation and reservation.group)  # fmt: skip

    def set_drained(
        self, inventory: Inventory, device_id: str, drained: bool, actor: str, now: datetime
    ) -> None:
        """Drain a device (no new holders) or put it back in service."""
        with self._tx() as conn:
            scheduler.drain(self._state(conn, inventory), device_id, drained)
            conn.execute("DELETE FROM drained WHERE device_id = ?", (device_id,))
            if drained:
                conn.execute(
                    "INSERT INTO drained VALUES (?, ?, ?)", (device_id, now.isoformat(), actor)
                )
            self._log(conn, now, actor, "drain" if drained else "undrain", device=device_id)

    def record_nodes_down(self, down: Iterable[str], now: datetime) -> None:
        """On a Swarm: the inventory nodes that are down or gone now, as the hub last saw
        them (each GPU spawn and poll); a node still down keeps its first ``since``."""
        now_down = set(down)
        with self._tx() as conn:
            known = {r["node"] for r in conn.execute("SELECT node FROM nodes_down")}
            for node in sorted(known - now_down):
                conn.execute("DELETE FROM nodes_down WHERE node = ?", (node,))
                self._log(conn, now, "hub", "node-up", node=node)
            for node in sorted(now_down - known):
                conn.execute("INSERT INTO nodes_down VALUES (?, ?)", (node, now.isoformat()))
                self._log(conn, now, "hub", "node-down", node=node)

    def nodes_down_since(self) -> Mapping[str, str]:
        with self._tx() as conn:
            return {r["node"]: r["since"] for r in conn.execute("SELECT * FROM nodes_down")}

    def drained_since(self) -> Mapping[str, str]:
        with self._tx() as conn:
            return {r["device_id"]: r["since"] for r in conn.execute("SELECT * FROM drained")}

    def topup(self, subject: str, hours: float, actor: str, now: datetime) -> None:
        """Add ``hours`` GPU-hours to ``subject``'s quota for the current week."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO topups VALUES (?, ?, ?) ON CONFLICT (week, subject) "
                "DO UPDATE SET hours = hours + excluded.hours",
                (quota.iso_week(now), subject, hours),
            )
            self._log(conn, now, actor, "topup", subject=subject, hours=hours)

    def reset(self, subject: str, actor: str, now: datetime) -> None:
        """Forget ``subject``'s recorded usage and top-ups for the current week."""
        week = quota.iso_week(now)
        with self._tx() as conn:
            for table in ("usage", "topups"):
                conn.execute(f"DELETE FROM {table} WHERE week = ? AND subject = ?", (week, subject))
            self._log(conn, now, actor, "reset", subject=subject, week=week)

    def record(self, actor: str, action: str, now: datetime, **detail: Any) -> None:
        """Append an admin action that changes nothing here (e.g. revoke) to the audit log."""
        with self._tx() as conn:
            self._log(conn, now, actor, action, **detail)
