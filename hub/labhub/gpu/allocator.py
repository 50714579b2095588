"""The GPU side of a spawn, as a plain object: no Spawner, no Docker, no tornado inside.

One :class:`GpuAllocator` per process, built at start-up by :func:`load_allocator` from the
validated settings: it is the only reader of ``GPU_INVENTORY`` (none, auto or a path) and
``GPU_PROFILES``, so a broken file stops the hub before anyone logs in. The spawner mixin
(:mod:`labhub.gpu.spawner`) and the admin service get this object, never the raw settings.

What it does: reconcile the record with the containers once, list what a user may choose,
allocate (checking the profile and quota, waiting in the queue when asked to), release.
The rules themselves are pure (:mod:`labhub.gpu.scheduler`, :mod:`labhub.gpu.quota`); the
record is the :class:`~labhub.gpu.store.Store`. Refusals are the pure layer's exceptions
(``UnknownProfile``, ``ProfileNotAllowed``, ``QuotaExceeded``, ``NoCapacity``,
``DoubleBooking``); the spawner turns them into HTTP answers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from labhub.gpu.inventory import Inventory, InventoryError, detect_inventory, load_inventory
from labhub.gpu.profiles import (
    Profile,
    ProfileError,
    default_profiles,
    load_profiles,
    profiles_for,
    resolve,
    with_images,
)
from labhub.gpu.quota import QuotaLine, QuotaPolicy
from labhub.gpu.scheduler import Allocation, Holder, NoCapacity
from labhub.gpu.store import Store
from labhub.settings import Settings, SettingsError


def utcnow() -> datetime:
    """The clock of every GPU record (UTC, aware)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Choice:
    """One profile a user may pick, with how many devices of its kind are free now."""

    profile: Profile
    free: int | None
    """Free slots for a GPU profile; None for a CPU profile."""


@dataclass
class GpuAllocator:
    """Inventory, profiles, quota and queue rules over one store, shared by a process."""

    inventory: Inventory
    profiles: tuple[Profile, ...]
    store: Store
    quota: QuotaPolicy = field(default_factory=QuotaPolicy)
    queue: bool = False
    """Wait for a busy GPU (first come, first served) instead of refusing at once."""
    queue_timeout: float = 600.0
    poll_interval: float = 5.0
    """Seconds between two attempts of a waiting spawn: admin actions come from another
    process, so the queue polls the database."""
    clock: Callable[[], datetime] = utcnow
    _reconciled: bool = field(default=False, init=False, repr=False)
    _reconcile_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __deepcopy__(self, memo: dict[int, object]) -> GpuAllocator:
        """The same object: traitlets deep-copies every config value into each spawner, and
        a copy per spawner would reconcile again (releasing other spawns' fresh records)."""
        return self

    async def reconcile_once(
        self, observe: Callable[[], Awaitable[list[Allocation]]]
    ) -> tuple[list[str], list[str]]:
        """Make the record match the containers ``observe`` finds, once per process.

        Returns (released, adopted) holders, both empty after the first call. Raises
        ``DoubleBooking`` (and tries again next time) if the containers overbook devices.
        """
        async with self._reconcile_lock:
            if self._reconciled:
                return [], []
            observed = await observe()
            result = await asyncio.to_thread(
                self.store.adopt, self.inventory, observed, self.clock()
            )
            self._reconciled = True
            return result

    async def choices(
        self,
        user: str,
        groups: frozenset[str],
        is_admin: bool,
        nodes: frozenset[str] | None = None,
        down: frozenset[str] = frozenset(),
    ) -> tuple[list[Choice], list[QuotaLine]]:
        """The profiles ``user`` may pick with their free slots, and the quotas that apply.

        On a Swarm only the slots of ``nodes`` (the user's home node; None: any) that are
        not ``down`` count."""
        state = await asyncio.to_thread(self.store.state, self.inventory)
        lines = await asyncio.to_thread(
            self.store.quota_lines, self.quota, user, groups, self.clock()
        )
        out = []
        for profile in profiles_for(self.profiles, groups, is_admin):
            free = None
            if profile.gpu.wants_gpu:
                kind = "shared" if profile.gpu.shared else "exclusive"
                free = sum(
                    d.capacity - len(state.holders_of(d.key))
                    for d in self.inventory
                    if d.policy == kind
                    and d.key not in state.drained
                    and d.node not in down
                    and (nodes is None or d.node in nodes)
                )
            out.append(Choice(profile, free))
        return out, lines

    async def allocate(
        self,
        holder: Holder,
        slug: str | None,
        is_admin: bool,
        waiting: Callable[[str], None] = lambda message: None,
        nodes: Callable[[], Awaitable[tuple[frozenset[str] | None, frozenset[str]]]] | None = None,
    ) -> tuple[Profile, Allocation]:
        """Check the profile ``slug`` (None: the first allowed) and the quota, then schedule.

        With ``queue`` on, a request that could be served later waits for up to
        ``queue_timeout`` seconds, telling ``waiting`` its place in line after each try.
        On a Swarm, ``nodes`` answers before each try where the server may run and which
        nodes are down (:func:`labhub.gpu.scheduler.allocate`): a node may leave or come
        back while a spawn waits.
        """
        profile = resolve(self.profiles, slug, holder.groups, is_admin)
        policy = self.quota if self.quota.enabled else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        try:
            while True:
                allowed, down = await nodes() if nodes else (None, frozenset[str]())
                try:
                    allocation = await asyncio.to_thread(
                        self.store.allocate, self.inventory, holder, profile.gpu, self.clock(),
                        policy, self.queue, allowed, down,
                    )  # fmt: skip
                    return profile, allocation
                except NoCapacity as e:
                    if not (self.queue and e.possible) or loop.time() >= deadline:
                        raise
                position = await asyncio.to_thread(
                    self.store.queue_position, self.inventory, holder.key
                )
                waiting(f"Waiting for {profile.gpu.describe()}: number {position} in the queue")
                await asyncio.sleep(self.poll_interval)
        except BaseException:
            await asyncio.to_thread(self.store.leave_queue, holder.key)
            raise

    async def release(self, holder_key: str, reason: str) -> Allocation | None:
        """Free the holder's devices (idempotent) and charge its GPU time."""
        return await asyncio.to_thread(self.store.release, holder_key, self.clock(), "hub", reason)


def load_inventory_setting(setting: str) -> Inventory:
    """``GPU_INVENTORY``: ``none`` (no GPU), ``auto`` (nvidia-smi) or a declared file."""
    if setting == "none":
        return ()
    return detect_inventory() if setting == "auto" else load_inventory(setting)


def _load_files(settings: Settings, problems: list[str]) -> tuple[Inventory, tuple[Profile, ...]]:
    inventory: Inventory = ()
    try:
        inventory = load_inventory_setting(settings.gpu_inventory)
    except (InventoryError, OSError) as e:
        problems.append(f"GPU_INVENTORY={settings.gpu_inventory}: {e}")
    _check_nodes(settings, inventory, problems)
    profiles: tuple[Profile, ...] = ()
    try:
        if settings.gpu_profiles:
            profiles = load_profiles(settings.gpu_profiles)
        else:
            profiles = default_profiles(inventory)
        profiles = with_images(profiles, settings.allowed_images, settings.pinned_image)
    except (ProfileError, InventoryError, OSError) as e:
        problems.append(f"GPU_PROFILES={settings.gpu_profiles}: {e}")
    return inventory, profiles


def _check_nodes(settings: Settings, inventory: Inventory, problems: list[str]) -> None:
    """On a Swarm every device names its node (labhub.swarmgpu); on one host none does."""
    swarm = settings.engine == "swarm"
    if swarm and settings.gpu_inventory == "auto":
        problems.append(
            "GPU_INVENTORY=auto detects the hub's own host only; with ENGINE=swarm declare "
            "every node's devices in a file, each with its node: `make gpu-inventory` prints "
            "them (docs/scale-out.md)"
        )
    elif swarm and any(not d.node for d in inventory):
        problems.append(
            f"GPU_INVENTORY={settings.gpu_inventory}: with ENGINE=swarm every device needs its "
            '"node" (the node\'s hostname or ID in `docker node ls`)'
        )
    elif not swarm and any(d.node for d in inventory):
        problems.append(
            f"GPU_INVENTORY={settings.gpu_inventory}: devices name a node, but ENGINE is "
            f"{settings.engine!r}: remove the nodes, or set ENGINE=swarm"
        )


def load_gpu_files(settings: Settings) -> tuple[Inventory, tuple[Profile, ...]]:
    """The inventory and the profiles the settings name, checked; no database opened
    (for `labhub z2jh-values`). Raises one :class:`SettingsError`."""
    problems: list[str] = []
    files = _load_files(settings, problems)
    if problems:
        raise SettingsError(problems)
    return files


def load_allocator(settings: Settings) -> GpuAllocator:
    """Load and check the inventory, the profiles and the database named by the settings.

    Blocking (nvidia-smi, files, SQLite): call it once at start-up. Raises one
    :class:`SettingsError` naming each variable, its file and what is wrong with it.
    """
    problems: list[str] = []
    inventory, profiles = _load_files(settings, problems)
    store = None
    try:
        store = Store(settings.gpu_db)
    except (OSError, sqlite3.Error) as e:
        problems.append(
            f"GPU_DB={settings.gpu_db}: cannot open it ({e}); point it at a writable file on "
            "the hub's data volume"
        )
    if problems or store is None:
        raise SettingsError(problems)
    if settings.engine == "swarm" and inventory:
        # The Docker proxy reads the record through a read-only mount (labhub.dockerproxy).
        store.hold_open()
    return GpuAllocator(
        inventory=inventory,
        profiles=profiles,
        store=store,
        quota=QuotaPolicy(
            user_hours=settings.gpu_quota_user_hours,
            group_hours=dict(settings.gpu_quota_group_hours),
        ),
        queue=settings.gpu_queue,
        queue_timeout=settings.gpu_queue_timeout,
    )
