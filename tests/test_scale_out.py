"""`make z2jh-values` on a real stack's settings: run in the hub image as an admin runs it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from stacks import Stack, run_make

pytestmark = pytest.mark.integration


def test_make_z2jh_values_writes_the_stacks_lab_privately(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "values.yaml"
    result = run_make("z2jh-values", f"Z2JH_VALUES={out}", env_file=stack.env_file)
    assert result.returncode == 0, result.stderr
    # It carries the login's secrets: nobody but its owner may read it.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    written = yaml.safe_load(out.read_text())
    image = written["singleuser"]["image"]
    assert f"{image['name']}:{image['tag']}" == f"labhub/workspace:{stack.value('LABHUB_VERSION')}"
    assert written["proxy"]["https"]["hosts"] == [stack.value("DOMAIN")]
    assert written["hub"]["config"]["NativeAuthenticator"]["admin_users"] == stack.admins


def test_make_z2jh_values_stops_on_a_wrong_setting_and_writes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    env = tmp_path / ".env"
    env.write_text(stack.env_file.read_text() + "USER_MEM_LIMIT=lots\n")
    env.chmod(0o600)
    out = tmp_path / "values.yaml"
    result = run_make("z2jh-values", f"Z2JH_VALUES={out}", env_file=env)
    assert result.returncode != 0
    assert "USER_MEM_LIMIT='lots'" in result.stderr
    assert not out.exists()
