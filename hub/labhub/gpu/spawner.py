"""GPU profiles, scheduling and quotas for a DockerSpawner, as a mixin.

Wiring (the whole of it)::

    from dockerspawner import DockerSpawner
    from labhub.gpu.spawner import GpuSpawnerMixin

    class LabSpawner(GpuSpawnerMixin, DockerSpawner):  # the mixin must come first
        pass

    c.JupyterHub.spawner_class = LabSpawner
    c.DockerSpawner.remove = True          # required: a kept container keeps its old GPUs
    c.LabSpawner.gpu_inventory = settings.gpu_inventory      # GPU_INVENTORY
    c.LabSpawner.gpu_profiles = settings.gpu_profiles        # GPU_PROFILES
    c.LabSpawner.gpu_db = settings.gpu_db                    # GPU_DB
    c.LabSpawner.gpu_queue = settings.gpu_queue              # GPU_QUEUE
    c.LabSpawner.gpu_queue_timeout = settings.gpu_queue_timeout
    c.Spawner.start_timeout = settings.gpu_queue_timeout + 120   # queueing happens in start()

What the mixin does through DockerSpawner's own hooks (no rewritten ``start``):

- ``options_form`` / ``options_from_form``: the profiles the user's groups allow, with free
  GPUs and quota left; the choice arrives as ``user_options["profile"]`` (REST API too).
- ``start``: ``await self.gpu_assign()`` first (profile check, quota, scheduling or queueing,
  then ``extra_host_config``/``environment``/labels/``cpu_limit``/``mem_limit``), and
  ``gpu_release`` if the start fails.
- ``stop`` (stop, cull, crash detected by poll, admin revoke): ``gpu_release`` afterwards.
- ``get_state``/``load_state``/``clear_state``: the allocation travels with the spawner state.
- On the first assignment in a process the record is reconciled with the containers that
  exist (hub restart): records without container are released, GPU containers without
  record adopted, and a double-booking refuses to spawn until an admin fixes it.
- ``progress``: queue position messages while waiting.

User mistakes become ``web.HTTPError``: 400 unknown profile, 403 profile not allowed or quota
used up, 503 no GPU free (admins see who holds which device, students that all are busy).
"""

from __future__ import annotations

import asyncio
import functools
import html
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from labhub.gpu import docker as gpu_docker
from labhub.gpu.inventory import Inventory, detect_inventory, load_inventory
from labhub.gpu.profiles import (
    Profile,
    ProfileNotAllowed,
    UnknownProfile,
    default_profiles,
    load_profiles,
    profiles_for,
    resolve,
)
from labhub.gpu.quota import QuotaExceeded, QuotaPolicy
from labhub.gpu.scheduler import Allocation, DoubleBooking, Holder, NoCapacity
from labhub.gpu.store import Store, allocation_from_json, allocation_to_json
from tornado import web
from traitlets import Bool, Dict, Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

GPU_ENV_KEYS = ("NVIDIA_VISIBLE_DEVICES", "GPU_MEMORY_LIMIT_MB")
STATE_KEY = "gpu_allocation"


@dataclass(frozen=True)
class GpuContext:
    """What every spawner of a process shares: inventory, profiles and the store."""

    inventory: Inventory
    profiles: tuple[Profile, ...]
    store: Store


@functools.lru_cache(maxsize=4)
def load_context(inventory: str, profiles: str, db: str) -> GpuContext:
    """Build the shared context once per settings (blocking: runs nvidia-smi, opens the db)."""
    if inventory == "none":
        devices: Inventory = ()
    else:
        devices = detect_inventory() if inventory == "auto" else load_inventory(inventory)
    choices = load_profiles(profiles) if profiles else default_profiles(devices)
    return GpuContext(inventory=devices, profiles=choices, store=Store(db))


def _now() -> datetime:
    return datetime.now(UTC)


class GpuSpawnerMixin(LoggingConfigurable):
    """Adds GPU profiles, scheduling, queueing and quotas to DockerSpawner."""

    if TYPE_CHECKING:  # provided by jupyterhub.spawner.Spawner / DockerSpawner
        user: Any
        name: str
        user_options: dict[str, Any]
        extra_host_config: dict[str, Any]
        extra_create_kwargs: dict[str, Any]
        environment: dict[str, Any]
        cpu_limit: float | None
        mem_limit: int | str | None
        remove: bool
        prefix: str
        client: Any
        executor: Any

        async def remove_object(self) -> None: ...

    gpu_inventory = Unicode(
        "auto",
        config=True,
        help="""GPU inventory: "none" means no GPU (CPU profiles only); "auto" detects GPUs
        (and MIG instances) with nvidia-smi, all exclusive; a path reads a JSON file
        validated by labhub/gpu/inventory.schema.json (policies exclusive/shared). No GPU
        found means CPU-only profiles. Env: GPU_INVENTORY. Example: "/srv/labhub/gpus.json".""",
    )
    gpu_profiles = Unicode(
        "",
        config=True,
        help="""Spawn profiles JSON file (labhub/gpu/profiles.schema.json). Empty: the default
        profiles cpu, gpu-shared and gpu-1, GPU ones only if the inventory has such devices.
        Env: GPU_PROFILES.""",
    )
    gpu_db = Unicode(
        "/srv/jupyterhub/gpu.sqlite",
        config=True,
        help="""SQLite file for allocations, reservations, quotas and the audit log; put it on
        the hub's data volume. The admin service opens the same file. Env: GPU_DB.""",
    )
    gpu_queue = Bool(
        False,
        config=True,
        help="""When no GPU is free: False refuses the spawn at once; True waits in a
        first-come-first-served queue (progress shows the position) for up to
        gpu_queue_timeout seconds. Env: GPU_QUEUE.""",
    )
    gpu_queue_timeout = Integer(
        600,
        config=True,
        help="""Seconds a queued spawn waits for a GPU before it is refused. Keep
        Spawner.start_timeout above it. Env: GPU_QUEUE_TIMEOUT.""",
    )
    gpu_queue_poll_interval = Float(
        5.0,
        config=True,
        help="Seconds between two attempts of a queued spawn (admin actions come from "
        "another process, so the queue polls the database).",
    )
    gpu_quota_user_hours = Float(
        None,
        allow_none=True,
        config=True,
        help="""GPU-hours per ISO week per user (a whole GPU for an hour = 1, a slice of a
        device shared by N = 1/N). None: no per-user quota. Env: GPU_QUOTA_USER_HOURS.""",
    )
    gpu_quota_group_hours = Dict(
        value_trait=Float(),
        config=True,
        help="""GPU-hours per ISO week per JupyterHub group, e.g. {"students": 100}. Usage of
        every member counts against the group. Env: GPU_QUOTA_GROUP_HOURS (JSON).""",
    )

    _gpu_reconciled = False
    _gpu_reconcile_lock: asyncio.Lock | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gpu_allocation: Allocation | None = None
        self._gpu_events: list[dict[str, Any]] = []
        self._gpu_waiting = False
        self._gpu_event = asyncio.Event()

    # -- shared pieces --------------------------------------------------------------------

    async def gpu_context(self) -> GpuContext:
        return await asyncio.to_thread(
            load_context, self.gpu_inventory, self.gpu_profiles, self.gpu_db
        )

    @property
    def gpu_quota_policy(self) -> QuotaPolicy:
        return QuotaPolicy(
            user_hours=self.gpu_quota_user_hours, group_hours=self.gpu_quota_group_hours
        )

    def _gpu_identity(self) -> tuple[frozenset[str], bool]:
        return frozenset(g.name for g in self.user.groups), bool(self.user.admin)

    async def _gpu_reconcile_once(self, ctx: GpuContext) -> None:
        cls = GpuSpawnerMixin
        if cls._gpu_reconcile_lock is None:
            cls._gpu_reconcile_lock = asyncio.Lock()
        async with cls._gpu_reconcile_lock:
            if cls._gpu_reconciled:
                return
            now = _now()
            observed = await asyncio.wrap_future(
                self.executor.submit(
                    gpu_docker.observed_allocations, self.client, now, f"{self.prefix}-"
                )
            )
            try:
                released, adopted = await asyncio.to_thread(
                    ctx.store.adopt, ctx.inventory, observed, now
                )
            except DoubleBooking as e:
                self.log.error("GPU record not reconciled: %s", e)
                raise web.HTTPError(
                    503, "GPU allocation needs an admin (double-booked devices); see the hub log"
                ) from e
            if released or adopted:
                self.log.warning("GPU reconcile: released %s, adopted %s", released, adopted)
            cls._gpu_reconciled = True

    # -- spawn page ------------------------------------------------------------------------

    @default("options_form")
    def _gpu_options_form_default(self) -> Any:
        return GpuSpawnerMixin.gpu_options_form

    async def gpu_options_form(self) -> str:
        """HTML radio list of the allowed profiles, free devices and quota left."""
        ctx = await self.gpu_context()
        groups, is_admin = self._gpu_identity()
        allowed = profiles_for(ctx.profiles, groups, is_admin)
        now = _now()
        state = await asyncio.to_thread(ctx.store.state, ctx.inventory)
        lines = await asyncio.to_thread(
            ctx.store.quota_lines, self.gpu_quota_policy, self.user.name, groups, now
        )
        items = []
        for i, profile in enumerate(allowed):
            free = ""
            if profile.gpu.wants_gpu:
                kind = "shared" if profile.gpu.shared else "exclusive"
                slots = sum(
                    d.capacity - len(state.holders_of(d.id))
                    for d in ctx.inventory
                    if d.policy == kind and d.id not in state.drained
                )
                free = f" <em>({slots} free now)</em>"
            items.append(
                f'<label class="gpu-profile"><input type="radio" name="profile" '
                f'value="{html.escape(profile.slug)}"{" checked" if i == 0 else ""}> '
                f"<strong>{html.escape(profile.display_name)}</strong>{free}<br>"
                f"<small>{html.escape(profile.description)}</small></label><br>"
            )
        quota = "".join(
            f"<li>{html.escape(line.subject)}: {line.left:.1f} of {line.limit:.1f} "
            "GPU-hours left this week</li>"
            for line in lines
        )
        if quota:
            items.append(f"<p>GPU-time quota:</p><ul>{quota}</ul>")
        elif len(allowed) == 1 and not allowed[0].gpu.wants_gpu:
            return ""  # nothing to choose: JupyterHub spawns without showing a form
        return "\n".join(items)

    @default("apply_user_options")
    def _gpu_apply_user_options_default(self) -> Any:
        def apply_user_options(spawner: Any, user_options: dict[str, Any]) -> None:
            """Nothing to set here: ``profile`` is checked and applied in gpu_assign()."""

        return apply_user_options

    @default("options_from_form")
    def _gpu_options_from_form_default(self) -> Any:
        def options_from_form(formdata: dict[str, list[str]]) -> dict[str, Any]:
            return {"profile": formdata.get("profile", [""])[0] or None}

        return options_from_form

    # -- assignment --------------------------------------------------------------------------

    async def gpu_assign(self) -> Allocation:
        """Check the profile and quota, schedule (or queue), and configure the container."""
        if not self.remove:
            raise web.HTTPError(
                500, "GpuSpawnerMixin needs c.DockerSpawner.remove = True (a kept container "
                "would restart with the GPUs of its previous allocation)",
            )  # fmt: skip
        ctx = await self.gpu_context()
        await self._gpu_reconcile_once(ctx)
        groups, is_admin = self._gpu_identity()
        try:
            profile = resolve(ctx.profiles, self.user_options.get("profile"), groups, is_admin)
        except UnknownProfile as e:
            raise web.HTTPError(400, str(e)) from e
        except ProfileNotAllowed as e:
            raise web.HTTPError(403, str(e)) from e
        holder = Holder(user=self.user.name, server=self.name, groups=groups)
        allocation = await self._gpu_allocate(ctx, holder, profile, is_admin)
        self._gpu_allocation = allocation
        self._gpu_apply(profile, allocation)
        self.log.info("GPU allocation for %s: %s", holder.key, allocation.device_ids or "none")
        return allocation

    async def _gpu_allocate(
        self, ctx: GpuContext, holder: Holder, profile: Profile, is_admin: bool
    ) -> Allocation:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gpu_queue_timeout
        policy = self.gpu_quota_policy if self.gpu_quota_policy.enabled else None
        self._gpu_events.clear()
        self._gpu_waiting = True
        try:
            while True:
                try:
                    return await asyncio.to_thread(
                        ctx.store.allocate, ctx.inventory, holder, profile.gpu, _now(),
                        policy, self.gpu_queue,
                    )  # fmt: skip
                except QuotaExceeded as e:
                    raise web.HTTPError(403, str(e)) from e
                except NoCapacity as e:
                    message = e.admin_message() if is_admin else e.student_message()
                    if not (self.gpu_queue and e.possible) or loop.time() >= deadline:
                        raise web.HTTPError(503, message) from e
                position = await asyncio.to_thread(ctx.store.queue_position, holder.key)
                self._gpu_emit(
                    f"Waiting for {profile.gpu.describe()}: number {position} in the queue"
                )
                await asyncio.sleep(self.gpu_queue_poll_interval)
        except BaseException:
            await asyncio.to_thread(ctx.store.leave_queue, holder.key)
            raise
        finally:
            self._gpu_waiting = False
            self._gpu_event.set()

    def _gpu_apply(self, profile: Profile, allocation: Allocation) -> None:
        self.extra_host_config = {**self.extra_host_config, **gpu_docker.host_config(allocation)}
        env = {k: v for k, v in self.environment.items() if k not in GPU_ENV_KEYS}
        self.environment = {**env, **gpu_docker.environment(allocation)}
        create = dict(self.extra_create_kwargs)
        old_labels = create.get("labels", {})
        create["labels"] = {
            **{k: v for k, v in old_labels.items() if not k.startswith(gpu_docker.LABEL_PREFIX)},
            **gpu_docker.labels(allocation),
        }
        self.extra_create_kwargs = create
        # A profile without limits keeps the spawner's (USER_CPU_LIMIT / USER_MEM_LIMIT).
        if profile.cpu_limit is not None:
            self.cpu_limit = profile.cpu_limit
        if profile.mem_limit is not None:
            self.mem_limit = profile.mem_limit

    async def gpu_release(self, reason: str) -> None:
        """Free this server's devices (idempotent) and charge its GPU time."""
        ctx = await self.gpu_context()
        holder = Holder(user=self.user.name, server=self.name).key
        released = await asyncio.to_thread(ctx.store.release, holder, _now(), "hub", reason)
        if released is not None and released.device_ids:
            self.log.info("GPU release for %s (%s): %s", holder, reason, released.device_ids)
        self._gpu_allocation = None

    # -- Spawner hooks ----------------------------------------------------------------------

    async def start(self) -> Any:
        await self.gpu_assign()
        try:
            return await super().start()  # type: ignore[misc]
        except BaseException:
            await self.gpu_release("start failed")
            raise

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)  # type: ignore[misc]
        finally:
            await self.gpu_release("stopped")

    async def run_post_stop_hook(self) -> None:
        """After every stop, also one JupyterHub does not route through ``stop()``.

        When the hub's poll finds the container dead (crashed, ``docker kill``, removed
        behind its back) it skips ``stop()`` and goes straight to this hook: release the
        devices here, and remove what is left of the container, so that a dead container
        never holds (or, after a hub restart, is re-adopted with) a GPU.
        """
        try:
            if self.remove and getattr(self, "object_id", None):
                await self.remove_object()
        finally:
            await self.gpu_release("server gone")
        result = super().run_post_stop_hook()  # type: ignore[misc]
        if inspect.isawaitable(result):
            await result

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        sent = 0
        while True:
            while sent < len(self._gpu_events):
                yield self._gpu_events[sent]
                sent += 1
            if not self._gpu_waiting:
                return
            self._gpu_event.clear()
            await self._gpu_event.wait()

    def _gpu_emit(self, message: str) -> None:
        self._gpu_events.append({"progress": 10, "message": message})
        self._gpu_event.set()

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()  # type: ignore[misc]
        if self._gpu_allocation is not None and self._gpu_allocation.device_ids:
            state[STATE_KEY] = allocation_to_json(self._gpu_allocation)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)  # type: ignore[misc]
        if STATE_KEY in state:
            self._gpu_allocation = allocation_from_json(state[STATE_KEY])

    def clear_state(self) -> None:
        super().clear_state()  # type: ignore[misc]
        self._gpu_allocation = None
