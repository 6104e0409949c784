#!/usr/bin/env python
"""Training throughput: edgeconv's pipeline against the book's ImageDataGenerator.

  python train/benchmark.py [--data DIR] [--steps 30] [--repeats 3] [--json FILE]

Trains the augmented recipe's model (same layers, same batch of 32) for a few short epochs
per pipeline, side by side in one process, and prints the median images per second of each
and its ratio to the generator:
  generator  the book: ImageDataGenerator + flow_from_directory, decoding JPEGs every epoch
  edgeconv   uint8 arrays decoded once, augmentation as one Keras layer in the model
in float32 and in mixed bfloat16. The first epoch of each (tracing, warm-up) is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain clone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from runtime.files import write_json  # noqa: E402
from train.dataset import find_dataset, load_split  # noqa: E402
from train.model import INPUT_SHAPE  # noqa: E402
from train.recipes import RECIPES  # noqa: E402
from train.report import environment  # noqa: E402
from train.run import resolve_data  # noqa: E402
from train.trainer import BatchStream, new_training_model  # noqa: E402

BATCH = 32


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def book_generator(data: Path):
    """The seed's pipeline, still shipped in Keras 3 under keras.src.legacy."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
                                   height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
                                   horizontal_flip=True, fill_mode="nearest")
    # No rescale here: the model's own Rescaling layer scales, in both pipelines.
    return generator.flow_from_directory(data / "train", target_size=INPUT_SHAPE[:2],
                                         batch_size=BATCH, class_mode="binary", seed=0)


def measure(pipeline: str, precision: str, data: Path, arrays, steps: int,
            repeats: int) -> dict:
    recipe = RECIPES["augmented"]
    # The generator augments on the CPU, so its model gets no augmentation layer.
    if pipeline == "generator":
        recipe = dataclasses.replace(recipe, augment=False)
    model = new_training_model(recipe, 2, precision, seed=0, input_shape=INPUT_SHAPE)
    if pipeline == "generator":
        source = book_generator(data)
    else:
        source = BatchStream(*arrays, batch_size=BATCH, steps=steps, seed=0)
    timer = EpochTimer()
    model.fit(source, steps_per_epoch=steps, epochs=repeats + 1, callbacks=[timer], verbose=0)
    rates = [steps * BATCH / seconds for seconds in timer.seconds[1:]]
    return {"pipeline": pipeline, "precision": precision, "steps": steps,
            "images_per_second": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/benchmark.py", description=__doc__.split(
        "\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: as train/run.py)")
    parser.add_argument("--steps", type=int, default=30, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    data = resolve_data(args.data)
    arrays = load_split(find_dataset(data, splits=("train",)), "train")
    rows = []
    for pipeline, precision in (("generator", "float32"), ("generator", "bfloat16"),
                                ("edgeconv", "float32"), ("edgeconv", "bfloat16")):
        rows.append(measure(pipeline, precision, data, arrays, args.steps, args.repeats))
        print(f"measured {pipeline} {precision}", file=sys.stderr)
    base = rows[0]["images_per_second"]
    env = environment()
    print(f"\ntraining throughput, augmented recipe, batch {BATCH}, {env['backend']} "
          f"{env.get('backend_version', '')} on {env['cpu']} ({env['cores']} cores), "
          f"median of {args.repeats} epochs of {args.steps} steps\n")
    print("| pipeline | precision | images/s (median) | min | max | vs generator float32 |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        row["ratio"] = row["images_per_second"] / base
        print(f"| {row['pipeline']} | {row['precision']} | {row['images_per_second']:.1f} | "
              f"{row['min']:.1f} | {row['max']:.1f} | {row['ratio']:.2f}x |")
    if args.json:
        write_json(args.json, {"rows": rows, **env})
    return 0


if __name__ == "__main__":
    sys.exit(main())
