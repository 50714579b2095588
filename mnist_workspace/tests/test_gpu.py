"""GPU manners: the cap variable is validated, and the CPU path changes nothing."""

from __future__ import annotations

import pytest

from mnist_workspace import env, gpu

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", ["lots", "0", "-512", "1.5"])
def test_bad_memory_cap_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GPU_MEMORY_LIMIT_MB", value)
    with pytest.raises(env.EnvError, match="GPU_MEMORY_LIMIT_MB"):
        env.gpu_memory_limit_mb()


def test_memory_cap_is_read_in_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_MEMORY_LIMIT_MB", " 4096 ")
    assert env.gpu_memory_limit_mb() == 4096
    monkeypatch.setenv("GPU_MEMORY_LIMIT_MB", "")
    assert env.gpu_memory_limit_mb() is None


def test_cpu_only_machine_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_MEMORY_LIMIT_MB", "1024")
    tf = pytest.importorskip("tensorflow")
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    assert gpu.configure() == "no GPU visible: running on the CPU"
