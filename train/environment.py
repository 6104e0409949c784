"""The backend, versions and hardware a run used, and the training precision that suits them."""

from __future__ import annotations

import os
import platform

from edgeconv.common.system import cpu_flags, cpu_name, cpuinfo


def environment() -> dict:
    """Backend, versions and hardware, for metrics.json."""
    import keras

    backend = keras.backend.backend()
    info = {"backend": backend, "keras_version": keras.__version__,
            "python": platform.python_version(), "cpu": cpu_name(), "cores": os.cpu_count()}
    if backend == "tensorflow":
        import tensorflow as tf

        info["backend_version"] = tf.__version__
        info["device"] = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    elif backend == "jax":
        import jax

        info["backend_version"] = jax.__version__
        info["device"] = jax.devices()[0].device_kind
    elif backend == "torch":
        import torch

        info["backend_version"] = torch.__version__
        info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return info


def auto_precision() -> str:
    """bfloat16 where the hardware computes it faster (GPUs, some CPUs), else float32."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else cpu_precision()
    if backend == "tensorflow":
        import tensorflow as tf

        return "bfloat16" if tf.config.list_physical_devices("GPU") else cpu_precision()
    return "float32"


def cpu_precision(info: str | None = None) -> str:
    """bfloat16 on CPUs where it was measured to train faster (`benchmarks/train.py`), else float32.

    An AMD EPYC with AVX512-BF16 trained 1.6-1.8x faster in bfloat16; an Intel Xeon with
    AVX512-BF16 but no AMX trained 28% slower. On Intel, bfloat16 is taken only with AMX, the
    units built for it. `info` defaults to /proc/cpuinfo.
    """
    info = cpuinfo() if info is None else info
    flags = cpu_flags(info)
    amd_bf16 = "avx512_bf16" in flags and "AuthenticAMD" in info
    return "bfloat16" if "amx_bf16" in flags or amd_bf16 else "float32"
