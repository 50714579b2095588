"""A Swarm lab's registry in unit tests, and what `make push` records of it.

One place for "ENGINE=swarm with REGISTRY and every image recorded", which the settings,
the spawner, the Docker proxy and `make z2jh-values` tests all start from."""

from __future__ import annotations

from collections.abc import Mapping

from testsupport.minimal_env import MINIMAL_ENV

REGISTRY = "registry.lab.example.edu:5000/labhub"
# The users' images (the default one and a second of WORKSPACE_IMAGES) and the hub image
# (the nodes' Docker proxies run it), by tag, at the default LABHUB_VERSION.
WORKSPACE = "labhub/workspace:0.1.0"
TORCH = "labhub/workspace-torch:0.1.0"
HUB = "labhub/hub:0.1.0"
# Each tag's reference in the registry, by digest, as `make push` records it.
PUSHED = {
    WORKSPACE: f"{REGISTRY}/workspace@sha256:{'a' * 64}",
    TORCH: f"{REGISTRY}/workspace-torch@sha256:{'b' * 64}",
    HUB: f"{REGISTRY}/hub@sha256:{'c' * 64}",
}


def recorded(pushed: Mapping[str, str] = PUSHED) -> str:
    """IMAGE_DIGESTS as `make push` writes it (tag=reference, comma-separated)."""
    return ",".join(f"{tag}={reference}" for tag, reference in pushed.items())


def swarm_registry_env(**env: str) -> dict[str, str]:
    """MINIMAL_ENV in Swarm mode with REGISTRY, WORKSPACE_IMAGES naming TORCH, and every
    image recorded (IMAGE_DIGESTS); `env` adds or overrides variables."""
    return {
        **MINIMAL_ENV,
        "ENGINE": "swarm",
        "REGISTRY": REGISTRY,
        "WORKSPACE_IMAGES": TORCH,
        "IMAGE_DIGESTS": recorded(),
        **env,
    }
