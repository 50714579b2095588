"""Spawn profiles: CPU/memory limits, a GPU request and an image, visible per JupyterHub group.

Seams: ``GPU_PROFILES=/path/profiles.json`` -> :func:`load_profiles` (validated against
``profiles.schema.json``); unset -> :func:`default_profiles` for the inventory. Then
:func:`with_images` gives each profile its image from the admin's allow-list.
:func:`profiles_for` lists what a user may pick (spawn page), :func:`resolve` checks a request
(spawn page *and* REST API ``user_options``) and raises :class:`ProfileNotAllowed`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, cast

from labhub.gpu.inventory import Inventory, InventoryError, validate_json
from labhub.gpu.scheduler import GpuRequest
from labhub.settings import parse_memory


@dataclass(frozen=True)
class Profile:
    """One choice on the spawn page."""

    slug: str
    display_name: str
    gpu: GpuRequest = field(default_factory=GpuRequest)
    cpu_limit: float | None = None
    # Bytes: profiles.json's sizes are read by settings.parse_memory, like .env's.
    mem_limit: int | None = None
    description: str = ""
    groups: frozenset[str] = frozenset()
    # The server's image; None until with_images() fills in the workspace image.
    image: str | None = None

    def allows(self, groups: Iterable[str], is_admin: bool) -> bool:
        return is_admin or not self.groups or bool(self.groups.intersection(groups))


class ProfileError(ValueError):
    """A profile request is refused; the message says why and what to pick instead."""


class UnknownProfile(ProfileError):
    pass


class ProfileNotAllowed(ProfileError):
    pass


def _gpu(value: object) -> GpuRequest:
    if value == "shared":
        return GpuRequest(shared=True)
    if isinstance(value, int):
        return GpuRequest(whole=value)
    return GpuRequest()


def load_profiles(path: str | Path) -> tuple[Profile, ...]:
    """Read and validate a profiles file (see ``profiles.schema.json``)."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ProfileError(f"{source}: no such file; create it or unset GPU_PROFILES") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"{source}: not valid JSON ({e}); fix the syntax") from None
    schema = json.loads(resources.files("labhub.gpu").joinpath("profiles.schema.json").read_text())
    try:
        validate_json(data, cast(dict[str, Any], schema), source)
    except InventoryError as e:
        raise ProfileError(str(e)) from None

    def size(profile: dict[str, Any]) -> int | None:
        if "mem_limit" not in profile:
            return None
        try:
            return parse_memory(profile["mem_limit"])
        except ValueError as e:
            raise ProfileError(
                f"{source}: profile {profile['slug']!r}: mem_limit={profile['mem_limit']!r} {e}"
            ) from None

    profiles = tuple(
        Profile(
            slug=p["slug"],
            display_name=p["display_name"],
            description=p.get("description", ""),
            cpu_limit=p.get("cpu_limit"),
            mem_limit=size(p),
            gpu=_gpu(p.get("gpu", "none")),
            groups=frozenset(p.get("groups", [])),
            image=p.get("image"),
        )
        for p in data["profiles"]
    )
    slugs = [p.slug for p in profiles]
    for slug in slugs:
        if slugs.count(slug) > 1:
            raise ProfileError(f"{source}: profile slug {slug!r} appears twice; rename one")
    return profiles


def with_images(
    profiles: Iterable[Profile],
    allowed: Sequence[str],
    pinned: Callable[[str], str] = lambda image: image,
) -> tuple[Profile, ...]:
    """Each profile with its image: the one it names, which must be in ``allowed`` (the
    workspace image first, then WORKSPACE_IMAGES), else the workspace image; then as
    ``pinned`` gives it (its digest reference from `make push`, in Swarm mode)."""
    out = []
    for profile in profiles:
        if profile.image is not None and profile.image not in allowed:
            raise ProfileError(
                f"profile {profile.slug!r} names the image {profile.image!r}, which "
                f"is not on the allow-list ({', '.join(allowed)}): add it to WORKSPACE_IMAGES "
                "in .env, or name one of those"
            )
        out.append(replace(profile, image=pinned(profile.image or allowed[0])))
    return tuple(out)


def default_profiles(inventory: Inventory) -> tuple[Profile, ...]:
    """cpu, gpu-shared and gpu-1, each GPU profile only if the inventory can ever serve it."""
    profiles = [
        # No limits of its own: the spawner's USER_CPU_LIMIT and USER_MEM_LIMIT apply.
        Profile("cpu", "CPU only", description="the lab's standard CPU and memory limits"),
    ]
    shared = [d for d in inventory if d.policy == "shared"]
    if shared:
        cap = min(d.memory_cap_mib or d.memory_mib for d in shared)
        profiles.append(
            Profile(
                "gpu-shared", "Shared GPU slice", gpu=GpuRequest(shared=True), cpu_limit=4,
                mem_limit=parse_memory("16G"),
                description=f"4 CPUs, 16 GiB, {cap} MiB of GPU memory",
            )
        )  # fmt: skip
    if any(d.policy == "exclusive" for d in inventory):
        profiles.append(
            Profile(
                "gpu-1", "One whole GPU", gpu=GpuRequest(whole=1), cpu_limit=8,
                mem_limit=parse_memory("32G"),
                description="8 CPUs, 32 GiB, one GPU to yourself",
            )
        )  # fmt: skip
    return tuple(profiles)


def profiles_for(
    profiles: Sequence[Profile], groups: Iterable[str], is_admin: bool
) -> list[Profile]:
    """The profiles this user may pick, in file order."""
    groups = frozenset(groups)
    return [p for p in profiles if p.allows(groups, is_admin)]


def resolve(
    profiles: Sequence[Profile], slug: str | None, groups: Iterable[str], is_admin: bool
) -> Profile:
    """The profile ``slug`` names (the first allowed one when ``slug`` is None), if allowed."""
    allowed = profiles_for(profiles, groups, is_admin)
    choices = ", ".join(p.slug for p in allowed) or "none"
    if slug is None:
        if not allowed:
            raise ProfileNotAllowed("no profile is open to your groups; ask an admin")
        return allowed[0]
    profile = next((p for p in profiles if p.slug == slug), None)
    if profile is None:
        raise UnknownProfile(f"there is no profile {slug!r}; choose one of: {choices}")
    if profile not in allowed:
        raise ProfileNotAllowed(
            f"profile {slug!r} is only for members of the group(s) "
            f"{', '.join(sorted(profile.groups))}; choose one of: {choices}, or ask an admin "
            "to add you to one of those groups"
        )
    return profile
