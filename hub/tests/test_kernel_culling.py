"""KERNEL_IDLE_TIMEOUT / KERNEL_CULL_CONNECTED: checked at start-up, and turned into
jupyter-server's own culling options on the user's server command line."""

from pathlib import Path

import pytest
from labhub.gpu.allocator import load_allocator
from labhub.settings import Settings, SettingsError
from labhub.spawner import kernel_culling_args, spawner_config

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit


def settings(**overrides: str) -> Settings:
    return Settings.from_env({**MINIMAL_ENV, **overrides})


def test_by_default_idle_kernels_go_after_30_minutes_even_with_a_tab_open(
    tmp_path: Path,
) -> None:
    lab = settings(GPU_DB=str(tmp_path / "gpu.sqlite"))
    assert spawner_config(lab, load_allocator(lab))["args"] == [
        "--MappingKernelManager.cull_idle_timeout=1800",
        "--MappingKernelManager.cull_interval=300",
        "--MappingKernelManager.cull_connected=True",
        "--MappingKernelManager.cull_busy=False",
    ]


def test_a_short_timeout_is_checked_every_quarter_of_it() -> None:
    args = kernel_culling_args(settings(KERNEL_IDLE_TIMEOUT="20", KERNEL_CULL_CONNECTED="FALSE"))
    assert "--MappingKernelManager.cull_idle_timeout=20" in args
    assert "--MappingKernelManager.cull_interval=5" in args
    assert "--MappingKernelManager.cull_connected=False" in args


def test_zero_keeps_idle_kernels() -> None:
    assert kernel_culling_args(settings(KERNEL_IDLE_TIMEOUT="0")) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"KERNEL_IDLE_TIMEOUT": "30m"}, "KERNEL_IDLE_TIMEOUT='30m' is not valid"),
        ({"KERNEL_IDLE_TIMEOUT": "-5"}, "KERNEL_IDLE_TIMEOUT='-5' is not valid"),
        ({"KERNEL_IDLE_TIMEOUT": "5"}, "at least 10"),
        ({"KERNEL_CULL_CONNECTED": "yes"}, "KERNEL_CULL_CONNECTED='yes' is not valid"),
    ],
    ids=["unit", "negative", "too-short", "not-a-boolean"],
)
def test_a_wrong_value_names_its_variable_and_the_fix(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings(**overrides)
    assert message in str(info.value)
