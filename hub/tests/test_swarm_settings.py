"""ENGINE=swarm in `labhub check-settings` (what `make up` runs first): the Swarm mode is
accepted, and each feature it does not have yet is refused by name, not silently dropped."""

from __future__ import annotations

import re

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


SWARM_GAPS = [
    ("MONITORING", "true", "metrics"),
]


@pytest.mark.parametrize(("name", "value", "what"), SWARM_GAPS, ids=[g[0] for g in SWARM_GAPS])
def test_a_feature_swarm_mode_lacks_is_refused_by_name(name: str, value: str, what: str) -> None:
    env = {**SWARM_ENV, name: value, "PROMETHEUS_API_TOKEN": "p" * 64}
    # On one host the same settings are fine: the refusal is Swarm mode's.
    Settings.from_env({**env, "ENGINE": "docker"})
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**env, "ENGINE": "swarm"})
    [problem] = [p for p in refused.value.problems if p.startswith(name)]
    assert re.match(rf"{name} is not available with ENGINE=swarm yet: .*{what}", problem)
