"""Where a plus run's time goes, and what each training choice saves: `benchmarks/train.py
--recipe plus`.

Rows train the plus recipe's model on the real training split, one short epoch per row per
round, rounds interleaved (the machine is shared: drifts fall on every row alike); the first
round (tracing, warm-up) is not counted. A row's figure is its fastest round, as timeit takes
the fastest: a shared host's stalls only ever slow a round (median and slowest are shown too).
It gives the minutes of a whole plus run at that choice, and the schedules' minutes follow
from the rows of their sizes. The "system malloc" row trains in a process of its own (the
CPU allocator is chosen once per process, train/__init__.py), driven round by round so that
it interleaves with the others; where TensorFlow runs oneDNN there is no such row (oneDNN's
allocator pools whatever the process asks for).
`--profile` also times each layer's forward and backward pass at 150x150 (TensorFlow only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from edgeconv.runtime.tables import markdown_table
from edgeconv.train.dataset import Dataset, find_dataset, load_split
from edgeconv.train.recipes import RECIPES, Recipe, parse_settings, size_phases, with_settings
from edgeconv.train.trainer import BatchStream, keras_input, new_training_model

# Schedules whose minutes are worked out from the measured rows: name -> recipe.sizes.
SCHEDULES = {
    "every epoch at 150": None,
    "3/4 at 112, then 150": [[112, 0.75], [150, 0.25]],
    "1/2 at 96, 3/10 at 128, then 150": [[96, 0.5], [128, 0.3], [150, 0.2]],
}
ANSWER = "edgeconv-row: "  # how the system-malloc row's process marks its answers


@dataclasses.dataclass(frozen=True)
class Choice:
    name: str
    size: int = 150
    precision: str = "float32"
    augment: bool = True  # the recipe's augmentation and erasing layers
    fused_norm: bool = True  # BatchNorm's fused kernel in training (train.model)
    teachers: tuple[str, ...] = ()  # distillation's teachers (.keras files)
    malloc: bool = False  # TensorFlow's tensors from the C library's malloc, not its own pool
    settings: str = "{}"  # a JSON object of recipe settings, as train/run.py's --set takes

    @property
    def plain(self) -> bool:
        """The recipe as it trains, at this size and precision (a schedule's row)."""
        return (self.augment and self.fused_norm and not self.teachers and not self.malloc
                and self.settings == "{}")

    def recipe(self) -> Recipe:
        plus = with_settings(RECIPES["plus"], json.loads(self.settings))
        plus = dataclasses.replace(plus, teachers=list(self.teachers) or None)
        return plus if self.augment else dataclasses.replace(plus, augment=None, erasing=0.0)


def choices(sizes: list[int], precisions: list[str], teachers: list[str] | None = None,
            settings: list[str] | None = None, malloc: bool = True) -> list[Choice]:
    """The rows: each size and precision, then beside the first of them the system malloc
    (where `malloc`), Keras's BatchNorm, no augmentation, the teachers and each KEY=VALUE of
    `settings` (one row each; ValueError for a setting the recipe refuses)."""
    rows = [Choice(f"{precision} at {size}", size, precision)
            for precision in precisions for size in sizes]
    first = sizes[0], precisions[0]
    named = f"{first[1]} at {first[0]}, "
    beside = [Choice(named + "system malloc", *first, malloc=True)] if malloc else []
    beside += [Choice(named + "Keras's BatchNorm", *first, fused_norm=False),
              Choice(named + "no augmentation", *first, augment=False)]
    if teachers:
        beside.append(Choice(named + f"distilled from {len(teachers)} " + (
            "teacher" if len(teachers) == 1 else "teachers"), *first, teachers=tuple(teachers)))
    for setting in settings or []:
        parsed = parse_settings([setting])
        with_settings(RECIPES["plus"], parsed)  # refused here, before any row is built
        beside.append(Choice(named + f"--set {setting}", *first, settings=json.dumps(parsed)))
    rows[1:1] = beside
    return rows


def one_epoch(dataset: Dataset, row: Choice, steps: int, batch: int) -> Callable[[], float]:
    """Build `row`'s training model here; returns a function that trains one epoch of `steps`
    batches and gives its seconds."""
    x, y = load_split(dataset, "train", (row.size, row.size))
    x = np.array(x)  # in memory: rows time the training, not the page cache of a busy host
    model = new_training_model(row.recipe(), len(dataset.classes), row.precision, seed=0,
                               input_shape=(row.size, row.size, 3), steps_per_epoch=steps,
                               epochs=1, fused_norm=row.fused_norm)
    stream = keras_input(BatchStream(x, y, batch, steps, seed=0))

    def epoch() -> float:
        started = time.perf_counter()
        model.fit(stream, steps_per_epoch=steps, epochs=1, verbose=0)
        return time.perf_counter() - started

    return epoch


class ChildRow:
    """A row trained in a child process with the system allocator, one epoch per request."""

    def __init__(self, dataset: Dataset, row: Choice, steps: int, batch: int):
        request = {"data": str(dataset.root), "row": dataclasses.asdict(row), "steps": steps,
                   "batch": batch}
        env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeconv.benchmarks.train_plus", json.dumps(request)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.answer()  # built

    def answer(self) -> str:
        """The child's next answer (lines of its own start with ANSWER; others are skipped)."""
        for line in self.process.stdout:
            if line.startswith(ANSWER):
                return line[len(ANSWER):]
        raise RuntimeError(f"the system-malloc row's process ended (exit status "
                           f"{self.process.wait()})")

    def __call__(self) -> float:
        self.process.stdin.write("epoch\n")
        self.process.stdin.flush()
        return float(self.answer())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def measure(dataset: Dataset, rows: list[Choice], steps: int, repeats: int,
            batch: int) -> list[dict]:
    """Images/s of each row (its fastest round), one epoch of `steps` batches per row per
    round."""
    epochs_of = [ChildRow(dataset, row, steps, batch) if row.malloc
                 else one_epoch(dataset, row, steps, batch) for row in rows]
    rates: list[list[float]] = [[] for _ in rows]
    for round_number in range(repeats + 1):
        for index, epoch in enumerate(epochs_of):
            seconds = epoch()
            if round_number:
                rates[index].append(steps * batch / seconds)
        print(f"round {round_number}/{repeats} done", file=sys.stderr, flush=True)
    for epoch in epochs_of:
        if isinstance(epoch, ChildRow):
            epoch.close()
    images = sum(dataset.counts("train"))
    epochs = RECIPES["plus"].epochs
    return [{"choice": row.name, "size": row.size, "precision": row.precision,
             "augment": row.augment, "fused_norm": row.fused_norm, "malloc": row.malloc,
             "teachers": len(row.teachers), "settings": json.loads(row.settings),
             "plain": row.plain,
             "images_per_second": max(values), "median": statistics.median(values),
             "min": min(values), "samples": values,
             "minutes_per_run": epochs * images / max(values) / 60}
            for row, values in zip(rows, rates)]


def schedule_minutes(rows: list[dict], images: int, epochs: int) -> list[dict]:
    """Minutes of a run of `epochs` for each schedule whose sizes were all measured (float32,
    plain rows: the recipe as it trains), validation left out."""
    rate = {row["size"]: row["images_per_second"] for row in rows
            if row["precision"] == "float32" and row["plain"]}
    result = []
    for name, sizes in SCHEDULES.items():
        phases = size_phases(sizes, epochs, 150)
        if all(size in rate for _, size in phases):
            starts = [0] + [end for end, _ in phases]
            seconds = sum((end - start) * images / rate[size]
                          for start, (end, size) in zip(starts, phases))
            result.append({"schedule": name, "sizes": sizes, "epochs": epochs,
                           "minutes": seconds / 60})
    return result


def profile(classes: int, batch: int, repeats: int) -> list[dict]:
    """Forward + backward milliseconds of each layer of the plus network as it trains, at
    150x150, on the inputs it really gets; grouped by kind and resolution."""
    import tensorflow as tf

    from edgeconv.train.model import FusedBatchNormalization, build_plus_model

    network = build_plus_model(classes, 0.3, (150, 150, 3),
                               norm_layer=FusedBatchNormalization)
    images = np.random.default_rng(0).integers(0, 256, (batch, 150, 150, 3)).astype("float32")
    every = keras.Model(network.inputs, [layer.output for layer in network.layers[1:]])
    values = {id(network.layers[0].output): tf.constant(images)}
    for layer, value in zip(network.layers[1:], every(images, training=True)):
        values[id(layer.output)] = value
    groups: dict[tuple[str, int], float] = {}
    for layer in network.layers[1:]:
        given = layer.input if isinstance(layer.input, list) else [layer.input]
        inputs = [values[id(tensor)] for tensor in given]

        @tf.function
        def step(inputs, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                output = layer(inputs if len(inputs) > 1 else inputs[0], training=True)
                loss = tf.reduce_sum(tf.cast(output, "float32"))
            return tape.gradient(loss, [*inputs, *layer.trainable_weights])

        step(inputs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step(inputs)
            times.append(time.perf_counter() - started)
        kind = type(layer).__name__
        if kind == "Conv2D":
            kind += " 1x1 shortcut" if layer.kernel_size == (1, 1) else " stem"
        key = (kind, int(inputs[0].shape[1]) if len(inputs[0].shape) == 4 else 0)
        groups[key] = groups.get(key, 0.0) + 1000 * statistics.median(times)
    total = sum(groups.values())
    return [{"layer": kind, "input": size, "ms": ms, "share": ms / total}
            for (kind, size), ms in sorted(groups.items(), key=lambda item: -item[1])]


def report(rows: list[dict], schedules: list[dict], layers: list[dict] | None,
           heading: str) -> str:
    base = rows[0]["images_per_second"]
    lines = [heading, "", markdown_table(
        ["choice", "images/s (fastest round)", "median", "slowest", "vs first row",
         "minutes per plus run"],
        [[row["choice"], f"{row['images_per_second']:.1f}", f"{row['median']:.1f}",
          f"{row['min']:.1f}", f"{row['images_per_second'] / base:.2f}x",
          f"{row['minutes_per_run']:.0f}"] for row in rows])]
    if schedules:
        lines += ["", markdown_table(
            ["progressive resizing (float32)", "epochs", "minutes of training"],
            [[s["schedule"], s["epochs"], f"{s['minutes']:.0f}"] for s in schedules])]
    if layers:
        lines += ["", "forward + backward of each layer at 150x150, batch of the recipe:", "",
                  markdown_table(["layer", "input", "ms per batch", "share"],
                                 [[row["layer"], f"{row['input']}x{row['input']}"
                                   if row["input"] else "vector",
                                   f"{row['ms']:.1f}", f"{100 * row['share']:.0f}%"]
                                  for row in layers], left=2)]
    return "\n".join(lines)


def child(request: dict) -> None:
    """The system-malloc row's process: build the row, then one epoch per line on stdin."""
    dataset = find_dataset(Path(request["data"]), splits=("train",))
    row = Choice(**{**request["row"], "teachers": tuple(request["row"]["teachers"])})
    epoch = one_epoch(dataset, row, request["steps"], request["batch"])
    print(ANSWER + "built", flush=True)
    for _ in sys.stdin:
        print(ANSWER + str(epoch()), flush=True)


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
