"""ENGINE=swarm in `labhub check-settings` (what `make up` runs first): the Swarm mode is
accepted, and monitoring works there."""

from __future__ import annotations

import pytest
from labhub.settings import Settings, SettingsError

from testsupport.minimal_env import MINIMAL_ENV
from testsupport.pushed import swarm_registry_env

pytestmark = pytest.mark.unit


# The default settings (named servers included: every server of a user on their home node).
SWARM_ENV = MINIMAL_ENV


@pytest.mark.parametrize("engine", ["docker", "swarm"])
def test_both_engines_are_accepted_with_the_default_settings(engine: str) -> None:
    assert Settings.from_env({**SWARM_ENV, "ENGINE": engine}).engine == engine


def test_an_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(SettingsError, match="ENGINE='kubernetes' is unknown: choose one of docker"):
        Settings.from_env({**MINIMAL_ENV, "ENGINE": "kubernetes"})


def test_monitoring_is_accepted_in_swarm_mode() -> None:
    """Each node's read-only metrics proxy serves the exporter (docs/monitoring.md)."""
    env = {**SWARM_ENV, "ENGINE": "swarm", "MONITORING": "true", "PROMETHEUS_API_TOKEN": "p" * 64}
    assert Settings.from_env(env).engine == "swarm"  # no problem raised


def test_a_pull_login_for_the_registry_is_accepted_in_swarm_mode() -> None:
    login = {"REGISTRY_USERNAME": "robot$lab", "REGISTRY_PASSWORD": "t0k3n"}
    assert Settings.from_env(swarm_registry_env(**login)).registry  # no problem raised


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"REGISTRY_USERNAME": "robot"}, "REGISTRY_USERNAME and REGISTRY_PASSWORD go together"),
        ({"REGISTRY_PASSWORD": "t0k3n"}, "REGISTRY_USERNAME and REGISTRY_PASSWORD go together"),
        (
            {
                "REGISTRY": "",
                "IMAGE_DIGESTS": "",
                "REGISTRY_USERNAME": "r",
                "REGISTRY_PASSWORD": "t",
            },
            "are only for ENGINE=swarm with REGISTRY",
        ),
    ],
    ids=["no-password", "no-username", "no-registry"],
)
def test_a_pull_login_without_its_half_or_its_registry_is_refused(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(SettingsError, match=problem) as refused:
        Settings.from_env(swarm_registry_env(**env))
    assert "t0k3n" not in str(refused.value)  # a secret is never printed back
