"""`labhub check-settings`: what `make up` runs before it starts anything."""

import pytest
from labhub.cli import main
from labhub.settings import Settings
from labhub.spawner import spawner_config

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

GOOD = MINIMAL_ENV


def test_good_settings_pass_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    assert main(["check-settings"]) == 0
    assert capsys.readouterr().out.startswith("settings OK")


def test_every_wrong_setting_is_listed_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**GOOD, "USER_MEM_LIMIT": "lots", "IDLE_TIMEOUT": "-1"}.items():
        monkeypatch.setenv(name, value)
    assert main(["check-settings"]) == 2
    err = capsys.readouterr().err
    assert "USER_MEM_LIMIT='lots' is not valid: a size such as 2G or 512M" in err
    assert "IDLE_TIMEOUT='-1' is not valid" in err


def test_container_prefix_is_what_the_spawner_names_containers_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`make down` removes what starts with this: it must be the spawner's own prefix."""
    settings = Settings.from_env({**MINIMAL_ENV, "DOCKER_NETWORK": "course2"})
    assert main(["container-prefix", "course2"]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith("\n")
    assert printed.rstrip("\n") == spawner_config(settings)["prefix"] + "-"
