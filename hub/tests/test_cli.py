"""`labhub check-settings`: what `make up` runs before it starts anything."""

import pytest
from labhub.cli import main

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
