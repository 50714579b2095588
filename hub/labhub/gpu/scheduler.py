"""Pure GPU scheduling: which devices a server gets. No Docker, no I/O, no clock.

The state is a value: inventory + allocations + reservations + drained devices. Functions
return new values, so the store (:mod:`labhub.gpu.store`) can load a state inside a database
transaction, decide with :func:`allocate`, and write the result back atomically.

Rules (the invariants the property tests check):

- an ``exclusive`` device has at most one holder, a ``shared`` one at most ``max_holders``;
- whole-GPU requests take ``exclusive`` devices only, slices take ``shared`` devices only;
- a drained device gets no new holder (current holders keep it until they stop);
- a reserved device goes only to its user, or to a member of its group;
- among the devices that fit, a device reserved for the requester comes first, then the
  least-loaded one (holders / capacity), then the lowest id;
- a holder (``user`` or ``user/server``) has at most one allocation;
- on a Swarm, devices are booked by (node, device) (:attr:`Device.key`, ``0@gpu-a``); all
  the devices of one allocation are on one node, one of the nodes the server may run on,
  and never on a node that is down;
- the queue is first come, first served per kind of request: while spawns wait for the same
  request (e.g. one whole GPU), only the oldest of them may be given devices; a holder is
  never both waiting and holding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar

from labhub.gpu.inventory import Device, Inventory


@dataclass(frozen=True)
class GpuRequest:
    """What a profile asks for: nothing, one shared slice, or ``whole`` whole GPUs."""

    whole: int = 0
    shared: bool = False

    def __post_init__(self) -> None:
        if self.whole < 0 or (self.shared and self.whole):
            raise ValueError(
                f"GpuRequest(whole={self.whole}, shared={self.shared}): ask for either a shared "
                "slice or a number >= 0 of whole GPUs"
            )

    @property
    def wants_gpu(self) -> bool:
        return self.shared or self.whole > 0

    def describe(self) -> str:
        if self.shared:
            return "a shared GPU slice"
        return f"{self.whole} whole GPU{'s' if self.whole != 1 else ''}" if self.whole else "no GPU"


@dataclass(frozen=True)
class Holder:
    """Who asks: a user's server (``server`` is '' for the default server) and their groups."""

    user: str
    server: str = ""
    groups: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.user}/{self.server}" if self.server else self.user


@dataclass(frozen=True)
class Allocation:
    """Devices held by one server since ``since``; ``memory_cap_mib`` is set for slices."""

    holder: str
    user: str
    device_ids: tuple[str, ...]
    shared: bool
    since: datetime
    memory_cap_mib: int | None = None
    groups: frozenset[str] = frozenset()
    weight: float = 0.0
    """GPUs charged to the quota per hour held: 1 per whole GPU, 1/max_holders per slice."""


@dataclass(frozen=True)
class Reservation:
    """A device set aside for one user or one group (exactly one of the two)."""

    user: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.user is None) == (self.group is None):
            raise ValueError("a reservation names exactly one of user or group")

    def admits(self, holder: Holder) -> bool:
        return holder.user == self.user or (self.group is not None and self.group in holder.groups)

    def describe(self) -> str:
        return f"user {self.user}" if self.user is not None else f"group {self.group}"


@dataclass(frozen=True)
class Waiting:
    """A spawn waiting in the queue for ``request`` (a :meth:`GpuRequest.describe` text)."""

    holder: str
    request: str
    since: datetime


V = TypeVar("V")


def _frozen(mapping: Mapping[str, V] | None = None) -> Mapping[str, V]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class State:
    """Everything the scheduler decides on. Build it with :func:`rebuild`."""

    inventory: Inventory
    allocations: Mapping[str, Allocation] = field(default_factory=dict)
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()
    queue: tuple[Waiting, ...] = ()
    """Waiting spawns, oldest first."""

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.inventory if d.key == device_id), None)

    def holders_of(self, device_id: str) -> tuple[str, ...]:
        return tuple(
            sorted(a.holder for a in self.allocations.values() if device_id in a.device_ids)
        )

    def first_in_line(self, request: GpuRequest, nodes: frozenset[str] | None = None) -> str | None:
        """The oldest holder waiting for the same kind of request, if any."""
        kind = queue_kind(request, nodes)
        return next((w.holder for w in self.queue if w.request == kind), None)

    def position(self, holder_key: str) -> int | None:
        """1 for the oldest waiter of its kind of request; None if not waiting."""
        mine = next((w for w in self.queue if w.holder == holder_key), None)
        if mine is None:
            return None
        same = [w.holder for w in self.queue if w.request == mine.request]
        return same.index(holder_key) + 1


@dataclass(frozen=True)
class DeviceBusy:
    """Why one device could not be given: its holders, drain and reservation."""

    device_id: str
    model: str
    holders: tuple[str, ...]
    capacity: int
    drained: bool
    reserved_for: str | None


class SchedulingError(Exception):
    """Base class for scheduler refusals."""


class NoCapacity(SchedulingError):
    """Nothing fits right now. ``possible`` is False when it never could on this inventory."""

    def __init__(
        self,
        request: GpuRequest,
        busy: tuple[DeviceBusy, ...],
        possible: bool,
        nodes: frozenset[str] | None = None,
    ):
        self.request = request
        self.busy = busy
        self.possible = possible
        self.nodes = nodes
        """The Swarm nodes the server was limited to (its home node), if any."""
        super().__init__(self.admin_message())

    def _where(self) -> str:
        if not self.nodes:
            return "this host"
        return f"node {', '.join(sorted(self.nodes))}"

    def student_message(self) -> str:
        if not self.possible and self.nodes:
            return (
                f"This server asks for {self.request.describe()}, which {self._where()} (where "
                "your files are) cannot provide. Choose another profile, or ask an admin to "
                "move your home to a node with such GPUs."
            )
        if not self.possible:
            return (
                f"This server asks for {self.request.describe()}, which this host cannot provide. "
                "Choose another profile."
            )
        return (
            f"All GPUs for {self.request.describe()} are busy right now. "
            "Try again later or choose the CPU profile."
        )

    def admin_message(self) -> str:
        if not self.possible:
            return (
                f"No {self.request.describe()} on {self._where()} in the inventory; add devices "
                "with that policy there, move the user's home, or remove the profile."
            )
        parts = []
        for b in self.busy:
            state = ", ".join(b.holders) if b.holders else "free"
            extras = [f"{len(b.holders)}/{b.capacity} holders: {state}"]
            if b.drained:
                extras.append("drained")
            if b.reserved_for:
                extras.append(f"reserved for {b.reserved_for}")
            parts.append(f"GPU {b.device_id} ({b.model}): {'; '.join(extras)}")
        return f"No GPU free for {self.request.describe()}. " + " | ".join(parts)


class AlreadyHolding(SchedulingError):
    """The holder already has devices; release them first."""


class DoubleBooking(SchedulingError):
    """Rebuilt allocations overbook devices or name unknown ones."""

    def __init__(self, conflicts: Mapping[str, tuple[str, ...]]):
        self.conflicts = dict(conflicts)
        detail = "; ".join(f"{dev}: {', '.join(h)}" for dev, h in sorted(self.conflicts.items()))
        super().__init__(
            f"allocations overbook devices ({detail}); stop all but one holder of each "
            "device, or fix the inventory if a device is missing from it"
        )


def _fits(device: Device, request: GpuRequest) -> bool:
    return device.policy == ("shared" if request.shared else "exclusive")


def busy(state: State, request: GpuRequest) -> tuple[DeviceBusy, ...]:
    """Holders, drain and reservation of every device of the kind ``request`` needs."""
    return tuple(
        DeviceBusy(
            device_id=d.key,
            model=d.model,
            holders=state.holders_of(d.key),
            capacity=d.capacity,
            drained=d.key in state.drained,
            reserved_for=r.describe() if (r := state.reservations.get(d.key)) else None,
        )
        for d in state.inventory
        if _fits(d, request)
    )


def queue_kind(request: GpuRequest, nodes: frozenset[str] | None = None) -> str:
    """The line a request waits in: its kind, and on a Swarm the nodes it may run on (a
    spawn waiting for its home node's GPU holds up no one who could use another node)."""
    where = f" on {', '.join(sorted(nodes))}" if nodes else ""
    return request.describe() + where


def allocate(
    state: State,
    holder: Holder,
    request: GpuRequest,
    now: datetime,
    nodes: frozenset[str] | None = None,
    down: frozenset[str] = frozenset(),
) -> Allocation:
    """Choose devices for ``holder``; raise :class:`NoCapacity` when nothing fits.

    On a Swarm, ``nodes`` are the nodes the server may run on (its home node once it has
    one; None: any) and ``down`` the nodes that take no task now: their devices are not
    given, but count as possible later (the spawn may wait for them). Every device of one
    allocation is on one node.

    Nothing fits either when another spawn waits for the same kind of request ahead of
    ``holder`` (first come, first served). The result is not recorded: pass it to
    :func:`with_allocation` (the store does both in one transaction). A request for no GPU
    returns an allocation with no devices.
    """
    if holder.key in state.allocations:
        raise AlreadyHolding(f"{holder.key} already holds GPUs; release them before allocating")
    base = Allocation(
        holder=holder.key, user=holder.user, device_ids=(), shared=False, since=now,
        groups=holder.groups,
    )  # fmt: skip
    if not request.wants_gpu:
        return base
    kind = [d for d in state.inventory if _fits(d, request) and (nodes is None or d.node in nodes)]
    need = 1 if request.shared else request.whole

    def usable(d: Device) -> bool:
        reservation = state.reservations.get(d.key)
        return (
            d.key not in state.drained
            and d.node not in down
            and (reservation is None or reservation.admits(holder))
            and len(state.holders_of(d.key)) < d.capacity
        )

    def order(d: Device) -> tuple[bool, float, str, tuple[int, ...]]:
        reserved_for_me = d.key in state.reservations
        load = len(state.holders_of(d.key)) / d.capacity
        return (not reserved_for_me, load, d.node, tuple(int(p) for p in d.id.split(":")))

    free = sorted((d for d in kind if usable(d)), key=order)
    # One node per allocation: the node of the best device among those with enough free.
    per_node = {node: [d for d in free if d.node == node] for node in {d.node for d in free}}
    enough = [devices for devices in per_node.values() if len(devices) >= need]
    most_of_kind = max(Counter(d.node for d in kind).values(), default=0)
    ahead = state.first_in_line(request, nodes)
    if not enough or ahead not in (None, holder.key):
        shown = busy(replace(state, inventory=tuple(kind)), request)
        raise NoCapacity(request, shown, possible=most_of_kind >= need, nodes=nodes)
    chosen = min(enough, key=lambda devices: order(devices[0]))[:need]
    if request.shared:
        device = chosen[0]
        return replace(
            base, device_ids=(device.key,), shared=True, memory_cap_mib=device.memory_cap_mib,
            weight=1 / device.capacity,
        )  # fmt: skip
    return replace(base, device_ids=tuple(d.key for d in chosen), weight=float(need))


def with_allocation(state: State, allocation: Allocation) -> State:
    """Record an allocation (its holder leaves the queue); refuses (via :func:`rebuild`)
    anything that would overbook."""
    if allocation.holder in state.allocations:
        raise AlreadyHolding(f"{allocation.holder} already holds GPUs")
    return rebuild(
        state.inventory, [*state.allocations.values(), allocation], state.reservations,
        state.drained, leave_queue(state, allocation.holder).queue,
    )  # fmt: skip


def enqueue(
    state: State,
    holder: Holder,
    request: GpuRequest,
    now: datetime,
    nodes: frozenset[str] | None = None,
) -> State:
    """Put ``holder`` at the end of the queue (a no-op if it already waits).

    Only a request that could ever be served waits, and a holder never waits while holding.
    """
    if holder.key in state.allocations:
        raise AlreadyHolding(f"{holder.key} already holds GPUs; it cannot also wait for some")
    if not request.wants_gpu or state.position(holder.key) is not None:
        return state
    waiting = Waiting(holder=holder.key, request=queue_kind(request, nodes), since=now)
    return replace(state, queue=_in_line([*state.queue, waiting]))


def leave_queue(state: State, holder_key: str) -> State:
    """Take ``holder_key`` out of the queue (a no-op if it does not wait)."""
    return replace(state, queue=tuple(w for w in state.queue if w.holder != holder_key))


def release(state: State, holder_key: str) -> State:
    """Forget ``holder_key``'s allocation and queue place (no-ops if it has neither)."""
    allocations = {k: a for k, a in state.allocations.items() if k != holder_key}
    return replace(leave_queue(state, holder_key), allocations=_frozen(allocations))


def reserve(state: State, device_id: str, reservation: Reservation | None) -> State:
    """Set (or with ``None`` clear) the reservation of a device."""
    _known(state, device_id)
    reservations = dict(state.reservations)
    if reservation is None:
        reservations.pop(device_id, None)
    else:
        reservations[device_id] = reservation
    return replace(state, reservations=_frozen(reservations))


def drain(state: State, device_id: str, drained: bool = True) -> State:
    """Mark a device drained (no new holders) or, with ``drained=False``, back in service."""
    _known(state, device_id)
    ids = state.drained | {device_id} if drained else state.drained - {device_id}
    return replace(state, drained=frozenset(ids))


def _known(state: State, device_id: str) -> None:
    if state.device(device_id) is None:
        known = ", ".join(d.key for d in state.inventory) or "none"
        raise KeyError(f"no device {device_id!r} in the inventory (known: {known})")


def rebuild(
    inventory: Inventory,
    allocations: Iterable[Allocation],
    reservations: Mapping[str, Reservation] | None = None,
    drained: Iterable[str] = (),
    queue: Sequence[Waiting] = (),
) -> State:
    """Build a state from recorded or observed allocations, e.g. after a hub restart.

    ``queue`` is ordered oldest first (by ``since``, then holder).

    Raises :class:`DoubleBooking` naming every device that would have too many holders, a
    holder of the wrong kind (a slice on an exclusive device or the reverse), or is not in
    the inventory, and :class:`AlreadyHolding` for a holder listed twice.
    """
    by_holder: dict[str, Allocation] = {}
    holders: dict[str, list[str]] = {}
    for a in allocations:
        if a.holder in by_holder:
            raise AlreadyHolding(f"{a.holder} appears twice in the allocations; keep one")
        by_holder[a.holder] = a
        for device_id in a.device_ids:
            holders.setdefault(device_id, []).append(a.holder)
    devices = {d.key: d for d in inventory}
    conflicts: dict[str, tuple[str, ...]] = {}
    for device_id, names in holders.items():
        device = devices.get(device_id)
        kinds_ok = device is not None and all(
            by_holder[n].shared == (device.policy == "shared") for n in names
        )
        if device is None or not kinds_ok or len(names) > device.capacity:
            conflicts[device_id] = tuple(sorted(names))
    if conflicts:
        raise DoubleBooking(conflicts)
    return State(
        inventory=tuple(inventory),
        allocations=_frozen(by_holder),
        reservations=_frozen(reservations),
        drained=frozenset(drained),
        queue=_in_line(queue),
    )


def _in_line(queue: Iterable[Waiting]) -> tuple[Waiting, ...]:
    return tuple(sorted(queue, key=lambda w: (w.since, w.holder)))
