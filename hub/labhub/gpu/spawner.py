"""GPU profiles, scheduling and quotas for a DockerSpawner, as a thin mixin.

Wiring (the whole of it)::

    from dockerspawner import DockerSpawner
    from labhub.gpu.allocator import load_allocator
    from labhub.gpu.spawner import GpuSpawnerMixin

    class LabSpawner(GpuSpawnerMixin, DockerSpawner):  # the mixin must come first
        pass

    c.JupyterHub.spawner_class = LabSpawner
    c.DockerSpawner.remove = True          # required: a kept container keeps its old GPUs
    c.LabSpawner.gpu_allocator = load_allocator(settings)     # checks the files at start-up
    c.Spawner.start_timeout = settings.gpu_queue_timeout + 120   # queueing happens in start()

Every decision is the :class:`~labhub.gpu.allocator.GpuAllocator`'s; the mixin only carries
the result to Docker through DockerSpawner's own hooks, and rewrites one trait, ``image``
(the profile's):

- ``options_form`` / ``options_from_form``: the profiles the user's groups allow, with free
  GPUs and quota left; the choice arrives as ``user_options["profile"]`` (REST API too).
- ``start``: :meth:`gpu_assign` first (profile, quota, scheduling or queueing; the server's
  image is the profile's), and a release if the start fails. The allocation then reaches
  the container through the callables ``extra_host_config`` (:meth:`gpu_host_config`:
  device requests and the profile's limits) and ``extra_create_kwargs``
  (:meth:`gpu_labels`), and ``get_env``.
  A subclass that sets its own ``extra_host_config`` or ``extra_create_kwargs`` adds these
  (as ``labhub.spawner.LabSpawner`` does).
- ``stop``, ``run_post_stop_hook`` (stop, cull, crash detected by poll, admin revoke):
  release afterwards.
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
import inspect
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from jupyterhub.traitlets import ByteSpecification
from labhub.contract import GPU_MEMORY_LIMIT_ENV
from labhub.gpu import devicerequests
from labhub.gpu.allocator import GpuAllocator
from labhub.gpu.page import TEMPLATES
from labhub.gpu.profiles import Profile, ProfileNotAllowed, UnknownProfile
from labhub.gpu.quota import QuotaExceeded
from labhub.gpu.scheduler import Allocation, DoubleBooking, Holder, NoCapacity
from labhub.gpu.store import allocation_from_json, allocation_to_json
from tornado import web
from traitlets import Instance, default
from traitlets.config import LoggingConfigurable

STATE_KEY = "gpu_allocation"
# Docker's default CPU period (µs): a limit of N CPUs is a quota of N periods.
CPU_PERIOD_US = 100_000


class GpuSpawnerMixin(LoggingConfigurable):
    """Adds GPU profiles, scheduling, queueing and quotas to DockerSpawner."""

    if TYPE_CHECKING:  # provided by jupyterhub.spawner.Spawner / DockerSpawner
        user: Any
        name: str
        user_options: dict[str, Any]
        remove: bool
        prefix: str
        client: Any
        executor: Any

        async def remove_object(self) -> None: ...

    gpu_allocator = Instance(
        GpuAllocator,
        allow_none=True,
        config=True,
        help="""The process's GpuAllocator (inventory, profiles, quota, queue and the GPU
        database), built once at start-up by labhub.gpu.allocator.load_allocator(settings)
        from GPU_INVENTORY, GPU_PROFILES, GPU_DB, GPU_QUEUE, GPU_QUEUE_TIMEOUT and the
        GPU_QUOTA_* settings. Required.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gpu_profile: Profile | None = None
        self._gpu_allocation: Allocation | None = None
        self._gpu_events: list[dict[str, Any]] = []
        self._gpu_waiting = False
        self._gpu_event = asyncio.Event()

    @property
    def _allocator(self) -> GpuAllocator:
        if self.gpu_allocator is None:
            raise web.HTTPError(
                500, "GpuSpawnerMixin needs c.LabSpawner.gpu_allocator = "
                "labhub.gpu.allocator.load_allocator(settings) in jupyterhub_config.py",
            )  # fmt: skip
        return self.gpu_allocator

    def _gpu_holder(self) -> Holder:
        groups = frozenset(g.name for g in self.user.groups)
        return Holder(user=self.user.name, server=self.name, groups=groups)

    # -- spawn page ------------------------------------------------------------------------

    @default("options_form")
    def _gpu_options_form_default(self) -> Any:
        return GpuSpawnerMixin.gpu_options_form

    async def gpu_options_form(self) -> str:
        """Radio buttons for the allowed profiles, free devices and quota left."""
        holder = self._gpu_holder()
        nodes, down = await self.gpu_placement()
        choices, quota = await self._allocator.choices(
            holder.user, holder.groups, bool(self.user.admin), nodes, down
        )
        if not quota and len(choices) == 1 and choices[0].free is None:
            return ""  # nothing to choose: JupyterHub spawns without showing a form
        return TEMPLATES.get_template("spawn_options.html").render(choices=choices, quota=quota)

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
        """Check the profile and quota, schedule (or queue); the result goes into the container
        through :meth:`gpu_host_config`, :meth:`gpu_labels` and :meth:`get_env`."""
        if not self.remove:
            raise web.HTTPError(
                500, "GpuSpawnerMixin needs c.DockerSpawner.remove = True (a kept container "
                "would restart with the GPUs of its previous allocation)",
            )  # fmt: skip
        allocator = self._allocator
        await self._gpu_reconcile(allocator)
        holder, is_admin = self._gpu_holder(), bool(self.user.admin)
        self._gpu_events.clear()
        self._gpu_waiting = True
        try:
            profile, allocation = await allocator.allocate(
                holder, self.user_options.get("profile"), is_admin, self._gpu_emit,
                self.gpu_placement,
            )  # fmt: skip
        except UnknownProfile as e:
            raise web.HTTPError(400, str(e)) from e
        except (ProfileNotAllowed, QuotaExceeded) as e:
            raise web.HTTPError(403, str(e)) from e
        except NoCapacity as e:
            raise web.HTTPError(503, e.admin_message() if is_admin else e.student_message()) from e
        finally:
            self._gpu_waiting = False
            self._gpu_event.set()
        self._gpu_profile, self._gpu_allocation = profile, allocation
        if profile.image is not None:
            # The profile decides the environment; a user_options "image" is refused by
            # DockerSpawner itself, as LabSpawner allows none (allowed_images empty).
            self.image = profile.image
        self.log.info("GPU allocation for %s: %s", holder.key, allocation.device_ids or "none")
        return allocation

    async def gpu_placement(self) -> tuple[frozenset[str] | None, frozenset[str]]:
        """Where this server may get devices: (inventory nodes it may run on, nodes down).
        One host: anywhere, nothing down; the Swarm spawner (labhub.swarmgpu) narrows it."""
        return None, frozenset()

    async def gpu_observed(self) -> list[Allocation]:
        """The allocations the engine's objects hold (reconciled once after a restart):
        here every GPU container's device requests and labels."""
        return await asyncio.wrap_future(
            self.executor.submit(
                devicerequests.observed_allocations, self.client, self._allocator.clock(),
                f"{self.prefix}-",
            )
        )  # fmt: skip

    async def _gpu_reconcile(self, allocator: GpuAllocator) -> None:
        try:
            released, adopted = await allocator.reconcile_once(self.gpu_observed)
        except DoubleBooking as e:
            self.log.error("GPU record not reconciled: %s", e)
            raise web.HTTPError(
                503, "GPU allocation needs an admin (double-booked devices); see the hub log"
            ) from e
        if released or adopted:
            self.log.warning("GPU reconcile: released %s, adopted %s", released, adopted)

    def gpu_host_config(self) -> dict[str, Any]:
        """``extra_host_config`` part of this server: its devices, and its profile's limits
        where the profile has any (otherwise the spawner's own limits stay)."""
        allocation = self._gpu_allocation
        out = devicerequests.host_config(allocation) if allocation else {"device_requests": []}
        profile = self._gpu_profile
        if profile is not None and profile.cpu_limit is not None:
            out["cpu_period"] = CPU_PERIOD_US
            out["cpu_quota"] = int(profile.cpu_limit * CPU_PERIOD_US)
        if profile is not None and profile.mem_limit is not None:
            out["mem_limit"] = ByteSpecification().validate(self, profile.mem_limit)
        return out

    def gpu_labels(self) -> dict[str, str]:
        """Container labels that let a restarted hub rebuild this server's allocation."""
        return devicerequests.labels(self._gpu_allocation) if self._gpu_allocation else {}

    def get_env(self) -> dict[str, str]:
        """The spawner's environment, with this server's devices and its profile's limits."""
        env: dict[str, str] = super().get_env()  # type: ignore[misc]
        if self._gpu_allocation is not None:
            env.pop(GPU_MEMORY_LIMIT_ENV, None)
            env.update(devicerequests.environment(self._gpu_allocation))
        profile = self._gpu_profile
        if profile is not None and profile.cpu_limit is not None:
            env["CPU_LIMIT"] = str(profile.cpu_limit)
        if profile is not None and profile.mem_limit is not None:
            env["MEM_LIMIT"] = str(ByteSpecification().validate(self, profile.mem_limit))
        return env

    @default("extra_host_config")
    def _gpu_extra_host_config_default(self) -> Any:
        return GpuSpawnerMixin.gpu_host_config

    @default("extra_create_kwargs")
    def _gpu_extra_create_kwargs_default(self) -> Any:
        return lambda spawner: {"labels": spawner.gpu_labels()}

    async def gpu_release(self, reason: str) -> None:
        """Free this server's devices (idempotent) and charge its GPU time."""
        holder = Holder(user=self.user.name, server=self.name).key
        released = await self._allocator.release(holder, reason)
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
