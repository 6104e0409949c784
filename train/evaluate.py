#!/usr/bin/env python
"""Score trained models on a dataset's splits: each alone, their ensemble, at other input sizes.

  python train/evaluate.py RUN_OR_MODEL [RUN_OR_MODEL ...] [--data DIR] [--sizes 150,172] [--flip]

An ensemble averages its members' probabilities (a sigmoid's P(class 1), or softmax rows):
the figure distillation from those members has to reach. --sizes runs a fully convolutional
model (plus) at input sizes other than its own, the same weights (FixRes: the best test size
can differ from the training one). Photos are decoded at each size as training decodes them,
and cached the same way. --flip adds, for each row, the same model with each photo's answer
averaged with its mirror image's (test-time flip: twice the inference for a steadier answer).
Choose by validation; the test column is for reporting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeconv.runtime.confidence import class_columns
from edgeconv.runtime.evaluate import accuracy, decide
from edgeconv.runtime.tables import markdown_table, percent
from edgeconv.runtime.text import command_name
from edgeconv.train.dataset import DataError, find_dataset, load_split, resolve_data

SPLITS = ("validation", "test")


@dataclass
class Member:
    """One model to score: its name in the table, its file, and the run it came from."""

    name: str
    path: Path
    run: dict | None  # the run's run.json, when the model is a run's


def find_member(given: Path) -> Member:
    """A run folder (its model.keras and run.json) or a .keras file."""
    if given.is_dir():
        path = given / "model.keras"
        if not path.is_file():
            raise DataError(f"{given}: holds no model.keras (an unfinished run? finish it "
                            "with: edgeconv train --out RUN --resume)")
        run_file = given / "run.json"
        run = json.loads(run_file.read_text()) if run_file.is_file() else None
        return Member(given.name or str(given), path, run)
    if given.suffix != ".keras" or not given.is_file():
        raise DataError(f"{given}: not a run folder or a .keras model file")
    return Member(given.stem, given, None)


def resized(model, size: int):
    """`model` taking size x size photos, the same weights; `model` itself at its own size."""
    if tuple(model.input_shape[1:3]) == (size, size):
        return model
    from edgeconv.train.model import any_size

    try:
        return any_size(model)
    except ValueError as error:
        raise DataError(str(error)) from None


def recalibrate(model, images: np.ndarray, batch_size: int = 64) -> int:
    """Re-estimate every BatchNormalization's moving mean and variance on `images` (uint8,
    no augmentation), as FixRes does at a new test size: the average of the batches'
    statistics, nothing else changed. Returns the number of layers re-estimated."""
    import keras

    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    kept = [layer.momentum for layer in norms]
    try:
        for index, start in enumerate(range(0, len(images), batch_size)):
            for layer in norms:  # momentum k/(k+1) at batch k: the running mean of batches
                layer.momentum = index / (index + 1)
            model(np.asarray(images[start:start + batch_size]), training=True)
    finally:
        for layer, momentum in zip(norms, kept):
            layer.momentum = momentum
    return len(norms)


def probabilities(model, images: np.ndarray, columns: int) -> np.ndarray:
    """The model's class columns for uint8 images, float64 [N, columns] (a none column, if
    the model has one, left out)."""
    from edgeconv.train.trainer import predictions

    outputs = predictions(model, images)
    return outputs.reshape(len(images), -1)[:, :columns]


def mirrored(images: np.ndarray) -> np.ndarray:
    """The photos flipped left to right, as training's random flip does."""
    return np.ascontiguousarray(images[:, :, ::-1])


def ensemble(outputs: list[np.ndarray]) -> np.ndarray:
    """The members' probabilities averaged: sigmoid P(class 1) columns or softmax rows."""
    return np.mean(np.stack(outputs), axis=0)


def evaluate(members: list[Member], dataset, sizes: list[int], splits: list[str],
             log=print, recalibrated: bool = False, flip: bool = False) -> list[dict]:
    """Rows {model, size, <split>: accuracy}: each member at each size, then the ensemble's;
    `recalibrated`: BatchNorm's statistics re-estimated at each size on the training photos;
    `flip`: after each of those rows, the same with each photo's probabilities averaged with
    its mirror image's (the row's "flip" is true)."""
    import keras

    from edgeconv.train.augment import RandomAffine  # noqa: F401  (registers the layer)

    columns = class_columns(len(dataset.classes))
    models = []
    for member in members:
        try:
            models.append(keras.saving.load_model(member.path, compile=False))
        except (OSError, ValueError) as error:
            raise DataError(f"{member.path}: cannot load it ({error})") from None
        if models[-1].output_shape[-1] not in (columns, columns + 1):  # + a none column
            raise DataError(f"{member.path}: answers {models[-1].output_shape[-1]} columns, "
                            f"not the {columns} of this dataset's {len(dataset.classes)} "
                            "classes")
    views = (False, True) if flip else (False,)
    rows = []
    for size in sizes:
        # outputs[view][split]: one probability array per member
        outputs = {view: {split: [] for split in splits} for view in views}
        truth = {}
        for member, model in zip(members, models):
            started = time.monotonic()
            sized = resized(model, size)  # cheap beside predicting
            if recalibrated:  # replaces every statistic: one size's leave the next's alone
                recalibrate(sized, load_split(dataset, "train", (size, size))[0])
            for split in splits:
                images, truth[split] = load_split(dataset, split, (size, size))
                plain = probabilities(sized, images, columns)
                outputs[False][split].append(plain)
                if flip:
                    outputs[True][split].append(
                        ensemble([plain, probabilities(sized, mirrored(images), columns)]))
            rows += [scored_row(member.name, size, {split: outputs[view][split][-1]
                                                    for split in splits},
                                truth, recalibrated, view) for view in views]
            log(f"{member.name} at {size}: {time.monotonic() - started:.0f} s")
        if len(members) > 1:
            rows += [scored_row(f"ensemble of {len(members)}", size,
                                {split: ensemble(outputs[view][split]) for split in splits},
                                truth, recalibrated, view) for view in views]
    return rows


def scored_row(name: str, size: int, answers: dict[str, np.ndarray], truth: dict,
               recalibrated: bool, flip: bool) -> dict:
    """One row: the accuracy of each split's answers."""
    return {"model": name, "size": size, **({"recalibrated": True} if recalibrated else {}),
            **({"flip": True} if flip else {}),
            **{split: accuracy(truth[split], decide(answer)) for split, answer in answers.items()}}


def check_classes(members: list[Member], classes: list[str]) -> None:
    for member in members:
        if member.run and member.run.get("classes") != classes:
            raise DataError(f"{member.path}: learnt the classes {member.run.get('classes')}, "
                            f"not this dataset's {classes}")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are pixels, e.g. 150,172") from None
    if any(not 32 <= size <= 1024 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: each size must be 32 to 1024 pixels")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("python train/evaluate.py"),
        description="Score trained models on a dataset's validation and test photos: each "
        "alone, the ensemble of them all (their probabilities averaged), at one or more input "
        "sizes. Choose by validation; test is for reporting.",
        epilog=f"Example: {command_name('python train/evaluate.py')} runs/plus-seed0 "
        "runs/plus-seed1 runs/plus-seed2 --sizes 150,172")
    parser.add_argument("models", nargs="+", type=Path, metavar="RUN_OR_MODEL",
                        help="a run folder (its model.keras) or a .keras file")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="dataset folder: DIR/{validation,test}/<class>/ (default: the "
                        "first run's data, else $EDGECONV_DATA)")
    parser.add_argument("--sizes", type=parse_sizes, metavar="N[,N...]",
                        help="input sizes in pixels (square) to run the models at (default: "
                        "the first model's own, 150)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="first re-estimate BatchNorm's statistics at each size on the "
                        "training photos (FixRes's fix for a new test size; needs DIR/train)")
    parser.add_argument("--flip", action="store_true",
                        help="also score each model with each photo's answer averaged with its "
                        "mirror image's (test-time flip; twice the inference)")
    parser.add_argument("--limit", type=int, help="at most N photos per class per split "
                        "(quick looks)")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as JSON (progress goes to stderr)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        members = [find_member(path) for path in args.models]
        runs = [member.run for member in members if member.run]
        data = resolve_data(args.data or (Path(runs[0]["data"]) if runs else None))
        splits = [split for split in SPLITS if (data / split).is_dir()]
        if not splits:
            raise DataError(f"{data}: has no validation or test split folder")
        needed = ("train", *splits) if args.recalibrate else tuple(splits)
        dataset = find_dataset(data, needed, limit=args.limit)
        check_classes(members, dataset.classes)
        sizes = args.sizes or [int((runs[0] if runs else {}).get("input_shape", [150])[0])]
        from edgeconv.train.backend import import_keras

        import_keras()
        rows = evaluate(members, dataset, sizes, splits,
                        log=lambda line: print(line, file=sys.stderr),
                        recalibrated=args.recalibrate, flip=args.flip)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"data": str(data), "classes": dataset.classes, "rows": rows},
                         indent=1))
    else:
        print(f"{data} ({', '.join(f'{split} {sum(dataset.counts(split))}' for split in splits)}"
              " photos)")
        if args.recalibrate:
            print("BatchNorm statistics re-estimated at each size on the training photos")
        print(markdown_table(["model", "input", *splits],
                             [[row["model"] + (" + flip" if row.get("flip") else ""),
                               row["size"], *(percent(row[split]) for split in splits)]
                              for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
