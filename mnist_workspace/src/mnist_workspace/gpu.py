"""GPU manners for a shared lab GPU: grow memory on demand, honour the per-user cap.

TensorFlow grabs all GPU memory by default, which locks every other user out of a
shared card; PyTorch allocates on demand, but nothing bounds it. This runs before any
model is built; on the CPU, or on the JAX backend, it changes nothing but the
mixed-precision policy, when asked for.
"""

from __future__ import annotations

import keras

from mnist_workspace import env


def configure(mixed_precision: bool = False) -> str:
    """Apply memory growth or the `GPU_MEMORY_LIMIT_MB` cap, and the mixed-precision
    policy when asked for; returns what was done.

    The cap is validated even without a GPU, so a bad platform setting shows up anywhere.
    """
    limit = env.gpu_memory_limit_mb()
    done = _share_gpus(limit)
    # The policy is global: set it every run, so an earlier mixed run in the same
    # notebook kernel does not leak into this one.
    policy = "float32"
    if mixed_precision:
        # float16 is what a GPU's tensor cores run; a CPU only emulates it, slowly, but
        # runs bfloat16 natively (oneDNN on AVX512-BF16/AMX), without loss scaling.
        policy = "mixed_float16" if _gpu_visible() else "mixed_bfloat16"
        done += f"; {policy}"
    keras.mixed_precision.set_global_policy(policy)
    return done


def _share_gpus(limit: int | None) -> str:
    """Memory growth, or one capped logical device per GPU, on TensorFlow; the cap as a
    memory fraction of each GPU on PyTorch."""
    if keras.backend.backend() == "torch":
        return _share_torch_gpus(limit)
    if keras.backend.backend() != "tensorflow":
        return f"backend {keras.backend.backend()}: no GPU settings applied"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU visible: running on the CPU"
    try:
        for gpu in gpus:
            if limit is None:
                tf.config.experimental.set_memory_growth(gpu, True)
            else:
                config = tf.config.LogicalDeviceConfiguration(memory_limit=limit)
                tf.config.set_logical_device_configuration(gpu, [config])
    except RuntimeError:  # TensorFlow already touched the GPU in this process
        return f"{len(gpus)} GPU(s): already initialised, settings unchanged"
    how = "memory growth" if limit is None else f"memory cap {limit} MiB"
    return f"{len(gpus)} GPU(s): {how}"


def _share_torch_gpus(limit: int | None) -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return "no GPU visible: running on the CPU"
    if limit is None:
        return f"{count} GPU(s): memory on demand"
    for index in range(count):
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit * 2**20 / total), index)
    return f"{count} GPU(s): memory cap {limit} MiB"


def _gpu_visible() -> bool:
    """Whether the current Keras backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False
