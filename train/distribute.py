"""Data-parallel training: one model replicated on several devices, each batch split among them.

The backends ship the engines; this file only picks the devices and hands them over:
`keras.distribution.DataParallel` on JAX, `tf.distribute.MirroredStrategy` on TensorFlow.
`--devices all` takes every visible accelerator (GPU, TPU), or the CPU alone when there is
none: CPUs are not accelerators, and one CPU split in two trains no faster. `--devices N`
takes N accelerators; on a machine without any it splits the CPU into N logical devices, which
runs the multi-device path (and its tests) anywhere. The split must be made before the
backend starts, so `choose_devices` runs before anything asks the backend for a device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from train.backend import import_keras


class DeviceError(Exception):
    """Devices that cannot be had, reported as one line."""


def parse_devices(text: str) -> int | None:
    """--devices: "all" is None, else a count of at least 1."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--devices {text}: expected all or a number of at least 1")
    return int(text)


@dataclass
class Devices:
    names: list[str]  # as the backend names them, e.g. ["/gpu:0", "/gpu:1"] or ["cpu:0"]
    engine: object | None  # MirroredStrategy or DataParallel; None for one device

    @property
    def count(self) -> int:
        return len(self.names)

    def scope(self):
        """The context in which models are built, loaded and fitted on these devices."""
        return self.engine.scope() if self.engine is not None else contextlib.nullcontext()


def choose_devices(requested: int | None) -> Devices:
    """The devices to train on: `requested` of them, or all accelerators (None)."""
    backend = import_keras().backend.backend()
    if backend == "tensorflow":
        names = _tensorflow_devices(requested)
    elif backend == "jax":
        names = _jax_devices(requested)
    elif requested not in (None, 1):
        raise DeviceError(f"--devices {requested} needs KERAS_BACKEND=jax or tensorflow, "
                          f"not {backend}")
    else:
        names = ["default"]
    if requested is not None and len(names) < requested:
        raise DeviceError(f"--devices {requested}: only {len(names)} accelerator(s) visible "
                          f"({', '.join(names)})")
    names = names[:requested] if requested else names
    return Devices(names, _engine(backend, names) if len(names) > 1 else None)


def _tensorflow_devices(requested: int | None) -> list[str]:
    import tensorflow as tf

    accelerators = tf.config.list_physical_devices("GPU")
    if not accelerators and requested and requested > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        with _before_start(requested):
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * requested)
    kind = "GPU" if accelerators else "CPU"
    return [device.name for device in tf.config.list_logical_devices(kind)]


def _jax_devices(requested: int | None) -> list[str]:
    import jax

    if requested and requested > 1:  # affects the CPU platform only, and only before it starts
        with _before_start(requested):
            jax.config.update("jax_num_cpu_devices", requested)
    devices = jax.devices()
    if devices[0].platform == "cpu" and not (requested and requested > 1):
        devices = devices[:1]
    return [f"{device.platform}:{device.id}" for device in devices]


@contextlib.contextmanager
def _before_start(requested: int):
    """Both backends refuse to split the CPU once they have started: say so in one line."""
    try:
        yield
    except RuntimeError as error:
        raise DeviceError(f"--devices {requested}: cannot split the CPU now ({error})") from None


def _engine(backend: str, names: list[str]):
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(names)
    import jax

    keras = import_keras()
    chosen = [device for device in jax.devices()
              if f"{device.platform}:{device.id}" in names]
    return keras.distribution.DataParallel(devices=chosen)
