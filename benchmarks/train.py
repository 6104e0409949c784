#!/usr/bin/env python
"""Training throughput: edgeconv's pipeline against the book's ImageDataGenerator, or what
each choice costs a plus run.

  python benchmarks/train.py [--data DIR] [--steps 30] [--repeats 5] [--json FILE]
  python benchmarks/train.py --recipe plus [--sizes 150,128,112,96] [--precisions float32]
                             [--teachers models/plus.keras] [--set color=0.3] [--profile]
                             [--steps 10] [--repeats 3]

The first trains the augmented recipe's model (same layers, same batch of 32) for a few short
epochs per pipeline, side by side in one process, and prints the median images per second of
each and its ratio to the generator:
  generator  the book: ImageDataGenerator + flow_from_directory, decoding JPEGs every epoch
  edgeconv   uint8 arrays decoded once, augmentation as one Keras layer in the model
in float32 and in mixed bfloat16. Rounds run one epoch of each pipeline in turn; the first
round (tracing, warm-up) is not counted.

--recipe plus times the plus recipe's model instead: at each input size and precision, and
without augmentation (what it costs), distilled from --teachers (what their forward passes
cost), with each --set KEY=VALUE of train/run.py (one row each), with the minutes of a whole
plus run at each and of the progressive-resizing schedules; --profile adds each layer's
forward and backward time.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from edgeconv.train.backend import import_keras, tensorflow_runs_onednn  # noqa: E402

keras = import_keras()

from edgeconv.common.files import write_json  # noqa: E402
from edgeconv.runtime.tables import markdown_table  # noqa: E402
from edgeconv.runtime.text import command_name  # noqa: E402
from edgeconv.train.dataset import DataError, find_dataset, load_split, resolve_data  # noqa: E402
from edgeconv.train.environment import environment  # noqa: E402
from edgeconv.train.model import INPUT_SHAPE  # noqa: E402
from edgeconv.train.recipes import RECIPES, teacher_files  # noqa: E402
from edgeconv.train.trainer import BatchStream, keras_input, new_training_model  # noqa: E402

BATCH = 32


class BatchTimer(keras.callbacks.Callback):
    """Images per second of one fit() call, from the batches it really ran."""

    def on_train_begin(self, logs=None):
        self.batches, self.started = 0, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_train_end(self, logs=None):
        self.rate = self.batches * BATCH / (time.perf_counter() - self.started)


def book_generator(data: Path):
    """The seed's pipeline, still shipped in Keras 3 under keras.src.legacy."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
                                   height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
                                   horizontal_flip=True, fill_mode="nearest")
    # No rescale here: the model's own Rescaling layer scales, in both pipelines.
    return generator.flow_from_directory(data / "train", target_size=INPUT_SHAPE[:2],
                                         batch_size=BATCH, class_mode="binary", seed=0)


def pipelines(data: Path, arrays, steps: int) -> dict[tuple[str, str], tuple]:
    """(pipeline, precision) -> (compiled model, its data source)."""
    built = {}
    for pipeline, precision in (("generator", "float32"), ("generator", "bfloat16"),
                                ("edgeconv", "float32"), ("edgeconv", "bfloat16")):
        recipe = RECIPES["augmented"]
        if pipeline == "generator":  # it augments on the CPU: no augmentation layer
            recipe = dataclasses.replace(recipe, augment=None)
            source = book_generator(data)
        else:
            source = keras_input(BatchStream(*arrays, batch_size=BATCH, steps=steps, seed=0))
        model = new_training_model(recipe, 2, precision, seed=0, input_shape=INPUT_SHAPE,
                                   steps_per_epoch=steps, epochs=1)
        built[pipeline, precision] = (model, source)
    return built


def measure(built: dict, steps: int, repeats: int) -> list[dict]:
    """One epoch per pipeline per round, rounds interleaved, so that drifts in the machine's
    speed (it is shared) fall on every pipeline alike; the first round is warm-up."""
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in built}
    for round_number in range(repeats + 1):
        for key, (model, source) in built.items():
            timer = BatchTimer()
            model.fit(source, steps_per_epoch=steps, epochs=1, callbacks=[timer], verbose=0)
            if round_number:
                rates[key].append(timer.rate)
        print(f"round {round_number}/{repeats} done", file=sys.stderr)
    return [{"pipeline": pipeline, "precision": precision, "steps": steps,
             "images_per_second": statistics.median(values), "min": min(values),
             "max": max(values), "samples": values}
            for (pipeline, precision), values in rates.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("benchmarks/train.py"), description=__doc__.split(
        "\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: as train/run.py)")
    parser.add_argument("--steps", type=int, default=30, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one epoch of "
                        "each pipeline per round)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    plus = parser.add_argument_group("the plus recipe (--recipe plus)")
    plus.add_argument("--recipe", choices=["augmented", "plus"], default="augmented",
                      help="augmented (default): the pipelines against the book's generator; "
                      "plus: the plus recipe's choices")
    plus.add_argument("--sizes", default="150,128,112,96", type=sizes_list,
                      help="input sizes to time, largest first (default: 150,128,112,96)")
    plus.add_argument("--precisions", default="float32", type=precisions_list,
                      help="float32, bfloat16 or both, comma-separated (default: float32)")
    plus.add_argument("--teachers", type=teachers_list, metavar="MODEL[,MODEL...]",
                      help="also time distillation from these .keras files or run folders "
                      "(--set teachers=...), e.g. models/plus.keras")
    plus.add_argument("--set", action="append", dest="settings", metavar="KEY=VALUE",
                      help="also time the recipe with this setting of train/run.py's --set, "
                      "one row each (repeatable), e.g. --set color=0.3")
    plus.add_argument("--profile", action="store_true",
                      help="also time each layer's forward and backward pass (TensorFlow)")
    args = parser.parse_args(argv)
    try:
        data = resolve_data(args.data)
        arrays = None if args.recipe == "plus" else load_split(
            find_dataset(data, splits=("train",)), "train")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.recipe == "plus":
        return plus_main(args, data)
    rows = measure(pipelines(data, arrays, args.steps), args.steps, args.repeats)
    base = rows[0]["images_per_second"]
    env = environment()
    print(f"\ntraining throughput, augmented recipe, batch {BATCH}, {env['backend']} "
          f"{env.get('backend_version', '')} on {env['cpu']} ({env['cores']} cores), "
          f"median of {args.repeats} interleaved rounds of {args.steps} steps\n")
    for row in rows:
        row["ratio"] = row["images_per_second"] / base
    print(markdown_table(
        ["pipeline", "precision", "images/s (median)", "min", "max", "vs generator float32"],
        [[row["pipeline"], row["precision"], f"{row['images_per_second']:.1f}",
          f"{row['min']:.1f}", f"{row['max']:.1f}", f"{row['ratio']:.2f}x"] for row in rows],
        left=2))
    if args.json:
        write_json(args.json, {"rows": rows, **env})
    return 0


def sizes_list(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected sizes such as 150,112") from None
    if not sizes or min(sizes) < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are at least 32 pixels")
    return sizes


def teachers_list(text: str) -> list[str]:
    try:
        return teacher_files(text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).split(": ", 1)[-1]) from None


def precisions_list(text: str) -> list[str]:
    precisions = text.split(",")
    if not set(precisions) <= {"float32", "bfloat16"}:
        raise argparse.ArgumentTypeError(f"{text!r}: expected float32, bfloat16 or both")
    return precisions


def plus_main(args: argparse.Namespace, data: Path) -> int:
    from edgeconv.benchmarks import train_plus

    dataset = find_dataset(data, splits=("train",))
    recipe = RECIPES["plus"]
    # The system malloc is TensorFlow's to take, and only without oneDNN's own pool.
    on_tensorflow = keras.backend.backend() == "tensorflow"
    malloc = on_tensorflow and not tensorflow_runs_onednn()
    try:
        rows = train_plus.choices(args.sizes, args.precisions, args.teachers, args.settings,
                                  malloc)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = train_plus.measure(dataset, rows, args.steps, args.repeats, recipe.batch_size)
    images = sum(dataset.counts("train"))
    schedules = train_plus.schedule_minutes(rows, images, recipe.epochs)
    layers = None
    if args.profile and on_tensorflow:
        layers = train_plus.profile(len(dataset.classes), recipe.batch_size, args.repeats)
    elif args.profile:
        print("--profile needs the tensorflow backend; left out", file=sys.stderr)
    if not malloc:
        print("no system-malloc row: " + ("TensorFlow runs oneDNN here, whose allocator pools "
              "whatever TF_CPU_ALLOCATOR_USE_BFC says" if on_tensorflow
              else "the allocator setting is TensorFlow's"))
    env = environment()
    print("\n" + train_plus.report(rows, schedules, layers, (
        f"plus recipe training throughput, batch {recipe.batch_size}, {images} training "
        f"images, {recipe.epochs} epochs a run, {env['backend']} "
        f"{env.get('backend_version', '')} on {env['cpu']} ({env['cores']} cores), fastest of "
        f"{args.repeats} interleaved rounds of {args.steps} steps")))
    if args.json:
        write_json(args.json, {"rows": rows, "schedules": schedules, "layers": layers, **env})
    return 0


if __name__ == "__main__":
    sys.exit(main())
