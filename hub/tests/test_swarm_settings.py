"""ENGINE=swarm in `labhub check-settings` (what `make up` runs first): the Swarm mode is
accepted, and monitoring works there."""

from __future__ import annotations

import pytest
from labhub.settings import Settings, SettingsError

from testsupport.minimal_env import MINIMAL_ENV

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
