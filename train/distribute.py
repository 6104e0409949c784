"""Data-parallel training: one model replicated on several devices, each batch split among them.

The backends ship the engines; this file only picks the devices and hands them over:
`keras.distribution.DataParallel` on JAX, `tf.distribute.MirroredStrategy` on TensorFlow.
`--devices all` takes every visible accelerator (GPU, TPU), or the CPU alone when there is
none: CPUs are not accelerators, and one CPU split in two trains no faster. `--devices N`
takes N accelerators; on a machine without any it splits the CPU into N logical devices, which
runs the multi-device path (and its tests) anywhere. The split must be made before the
backend starts, so `choose_devices` runs before anything asks the backend for a device.

Several processes (JAX only; one a host, or several on one host) train one model together:
each calls `join_processes` with the same coordinator address first, chooses its devices as
above (the same number in each), and feeds its own slice of every batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from edgeconv.train.backend import import_keras


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
    part: tuple[int, int] = (0, 1)  # this process's index, and the number of processes

    @property
    def count(self) -> int:
        return len(self.names)

    def scope(self):
        """The context in which models are built, loaded and fitted on these devices."""
        return self.engine.scope() if self.engine is not None else contextlib.nullcontext()


def join_processes(coordinator: str, count: int, index: int) -> None:
    """Join `count` processes at `coordinator` (HOST:PORT) as process `index` (JAX only)."""
    backend = import_keras().backend.backend()
    if backend != "jax":
        raise DeviceError(f"--processes needs KERAS_BACKEND=jax, not {backend}")
    import jax

    # Collectives between processes on CPUs go through Gloo over TCP (GPUs use NCCL).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=count, process_id=index)


def choose_devices(requested: int | None) -> Devices:
    """The devices to train on: `requested` of them, or all accelerators (None)."""
    backend = import_keras().backend.backend()
    if backend == "tensorflow":
        return _tensorflow_devices(requested)
    if backend == "jax":
        return _jax_devices(requested)
    if requested not in (None, 1):
        raise DeviceError(f"--devices {requested} needs KERAS_BACKEND=jax or tensorflow, "
                          f"not {backend}")
    return Devices(["default"], None)


def _tensorflow_devices(requested: int | None) -> Devices:
    import tensorflow as tf

    accelerators = tf.config.list_physical_devices("GPU")
    if not accelerators and requested and requested > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        with _before_start(requested):
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * requested)
    kind = "GPU" if accelerators else "CPU"
    names = _enough([device.name for device in tf.config.list_logical_devices(kind)],
                    requested)
    return Devices(names, tf.distribute.MirroredStrategy(names) if len(names) > 1 else None)


def _jax_devices(requested: int | None) -> Devices:
    import jax

    if requested and requested > 1:  # affects the CPU platform only, and only before it starts
        with _before_start(requested):
            jax.config.update("jax_num_cpu_devices", requested)
    local = jax.local_devices()
    if local[0].platform == "cpu" and not requested:
        local = local[:1]
    per_process = len(_enough([f"{d.platform}:{d.id}" for d in local], requested))
    # Every process's first `per_process` devices: its own, and the others' as they choose.
    chosen = [device for device in jax.devices()
              if jax.local_devices(device.process_index).index(device) < per_process]
    names = [f"{device.platform}:{device.id}" for device in chosen]
    part = (jax.process_index(), jax.process_count())
    if len(chosen) == 1:
        return Devices(names, None)
    keras = import_keras()
    # With several processes each feeds its own slice of a batch: Keras must not shard it.
    engine = keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=part[1] == 1)
    return Devices(names, engine, part)


def _enough(names: list[str], requested: int | None) -> list[str]:
    if requested is not None and len(names) < requested:
        raise DeviceError(f"--devices {requested}: only {len(names)} accelerator(s) visible "
                          f"({', '.join(names)})")
    return names[:requested] if requested else names


@contextlib.contextmanager
def _before_start(requested: int):
    """Both backends refuse to split the CPU once they have started: say so in one line."""
    try:
        yield
    except RuntimeError as error:
        raise DeviceError(f"--devices {requested}: cannot split the CPU now ({error})") from None
