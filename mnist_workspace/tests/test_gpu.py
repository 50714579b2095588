"""GPU manners: the cap variable is validated, and the CPU path changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import pytest

from mnist_workspace import env, gpu, models

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


@pytest.fixture
def cpu_only() -> None:
    """These tests are about the CPU path: TensorFlow installed, no GPU visible."""
    tf = pytest.importorskip("tensorflow")
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")


def test_cpu_only_machine_is_left_alone(monkeypatch: pytest.MonkeyPatch, cpu_only: None) -> None:
    monkeypatch.setenv("GPU_MEMORY_LIMIT_MB", "1024")
    assert gpu.configure() == "no GPU visible: running on the CPU"


@pytest.fixture
def restore_policy() -> Iterator[None]:
    """The mixed-precision policy is global: put float32 back for the other tests."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_on_the_cpu_is_bfloat16(
    monkeypatch: pytest.MonkeyPatch, cpu_only: None, restore_policy: None
) -> None:
    """float16 is emulated on a CPU (slow); bfloat16 runs natively there."""
    monkeypatch.delenv("GPU_MEMORY_LIMIT_MB", raising=False)
    assert gpu.configure(mixed_precision=True).endswith("; mixed_bfloat16")
    assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
    model = models.build("lenet")
    assert model.layers[0].compute_dtype == "bfloat16"
    assert model.layers[-1].compute_dtype == "float32"  # softmax and loss stay float32


def test_a_later_run_without_mixed_precision_is_float32_again(restore_policy: None) -> None:
    """One notebook kernel, two runs: the first run's policy must not leak."""
    gpu.configure(mixed_precision=True)
    gpu.configure(mixed_precision=False)
    assert keras.mixed_precision.global_policy().name == "float32"
