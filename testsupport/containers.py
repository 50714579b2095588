"""Users' containers on the real engine, found the way the spawner names and labels them.

The name prefix and the owner label come from `labhub.contract`, so a test finds exactly
what LabSpawner made in one stack, never another stack's container with a similar name.
"""

from __future__ import annotations

import docker
from docker.models.containers import Container
from labhub.contract import OWNER_LABEL, container_name_prefix


def user_containers(network: str, username: str | None = None) -> list[Container]:
    """Every user container of the stack on `network` (running or not), or `username`'s."""
    label = OWNER_LABEL if username is None else f"{OWNER_LABEL}={username}"
    filters = {"name": f"^{container_name_prefix(network)}", "label": label}
    found: list[Container] = docker.from_env().containers.list(all=True, filters=filters)
    return found


def user_container(network: str, username: str) -> Container:
    """`username`'s one container in the stack on `network`."""
    found = user_containers(network, username)
    assert len(found) == 1, f"{username} has {len(found)} containers in {network}: {found}"
    return found[0]
