"""One training run, start to finish: plan it, fit it with a checkpoint per epoch, evaluate it.

`train(options)` reads top to bottom: the run's settings (a resumed run keeps its own), the
data, the devices, a new or resumed model, the fit, then the float32 model, metrics and curves.
On several devices the model is built, loaded and fitted inside their scope; the float32 model
is made and scored outside it, as on one device.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeconv.common.files import atomic_path, remove_partial_files, write_json
from edgeconv.runtime.confidence import class_columns
from edgeconv.runtime.evaluate import accuracy, confusion_matrix, decide
from edgeconv.runtime.text import plural
from edgeconv.train.backend import import_keras
from edgeconv.train.dataset import (
    INPUT_SHAPE,
    DataError,
    dataset_digest,
    find_dataset,
    load_split,
    resolve_data,
)
from edgeconv.train.field import add_field
from edgeconv.train.recipes import RECIPES, with_settings

if TYPE_CHECKING:
    from edgeconv.train.distribute import Devices

RUN_FILE = "run.json"


@dataclass
class Options:
    """What the user asked for; None means the recipe's (or a resumed run's) own value."""

    out: Path
    data: Path | None = None
    recipe: str | None = None
    settings: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    limit: int | None = None
    precision: str = "auto"
    devices: int | None = None  # None: every accelerator, else the CPU (train.distribute)
    processes: int = 1  # training together, JAX only: each one runs train() with its index
    process_id: int = 0
    coordinator: str | None = None  # HOST:PORT of process 0
    resume: bool = False
    verbose: int | None = None
    add: list[Path] = field(default_factory=list)  # field tars (train.field)
    init: Path | None = None  # a model.keras whose weights the network starts from


def train(options: Options) -> int:
    """Train (or resume) the run in options.out; 0 when finished, 130 when interrupted."""
    previous = previous_run(options.out, options.resume)
    config, recipe, dataset = plan(options, previous)
    added = None
    if config["field"]:  # after the checks on --out: the frames are unpacked into it
        dataset, added = add_field(dataset, [Path(p) for p in config["field"]], options.out)
    if previous and (options.out / "metrics.json").exists() \
            and previous["epochs"] == config["epochs"]:
        print(f"{options.out}: run already complete ({plural(config['epochs'], 'epoch')}); "
              "nothing to do")
        return 0
    print(f"data {config['data']}: classes {dataset.classes}, images per class "
          f"{ {split: dataset.counts(split) for split in dataset.splits} }")
    early = bool(previous) and config["epochs"] < previous["epochs"]
    if early and (options.out / "metrics.json").exists():
        raise DataError(f"{options.out}: the run is finished; --epochs cannot shorten it")
    if added:
        print(f"field: {sum(map(len, added.train.values()))} frames added to the training "
              f"split, {sum(map(len, added.heldout.values()))} held out (the field split), "
              f"{added.none} labelled none not used")
    train_set, validation_set = load_split(dataset, "train"), load_split(dataset, "validation")
    devices = start_backend(options, config)  # after the photos: a bad one is a quick error

    def train_at(size: int):  # progressive resizing's smaller copies are cached like it
        full = train_set[0].shape[1]
        return train_set if size == full else load_split(dataset, "train", (size, size))

    options.out.mkdir(parents=True, exist_ok=True)  # only once the photos are known good
    steps = recipe.steps_per_epoch(len(train_set[0]), config["batch_size"])
    with devices.scope():
        model, state = start_or_resume(options.out, config, recipe, steps,
                                       resumed=bool(previous))
    if early:  # epochs already trained stay trained
        config["epochs"] = max(config["epochs"], state["epoch"])
        print(f"ending early: at epoch {config['epochs']} of {previous['epochs']}, with the "
              "weights of its best epoch by validation accuracy")
    write_json(options.out / RUN_FILE, config)

    from edgeconv.train import trainer

    keras = import_keras()
    print(f"recipe {recipe.name}: {plural(config['epochs'], 'epoch')}, batch "
          f"{config['batch_size']}, precision {config['precision']}, backend "
          f"{keras.backend.backend()}, {plural(devices.count, 'device')} "
          f"{', '.join(devices.names)}")
    verbose = options.verbose if options.verbose is not None else (
        1 if sys.stdout.isatty() else 2)
    try:
        with devices.scope():
            trainer.fit(options.out, model, state, train_at, validation_set, recipe,
                        config["epochs"], config["batch_size"], config["seed"],
                        verbose=verbose, devices=devices.count, part=devices.part)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {state['epoch']} of {plural(config['epochs'], 'epoch')} are "
              f"saved in {options.out}; continue with: edgeconv train --out {options.out} --resume",
              file=sys.stderr)
        return 130
    ended_early = None
    if early and state.get("best"):
        best = state["best"]
        with devices.scope():
            model = keras.saving.load_model(options.out / best["checkpoint"])
        ended_early = {"planned_epochs": previous["epochs"], "weights_of_epoch": best["epoch"]}
    metrics = finish(options.out, model, state, config, recipe, dataset, validation_set, steps,
                     devices.count, ended_early)
    if added:
        metrics = compare_on_field(options.out, metrics, config, dataset, added)
    print(f"test accuracy {metrics['test_accuracy']:.4f}, validation "
          f"{metrics['val_accuracy']:.4f} | {plural(config['epochs'], 'epoch')} in "
          f"{metrics['train_seconds']:.0f} s, {metrics['images_per_second']:.0f} images/s | "
          f"{options.out / 'model.keras'}")
    return 0


def previous_run(out: Path, resume: bool) -> dict | None:
    """The run.json already in `out`, or None for a fresh run; errors for a folder in use."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    run_file = out / RUN_FILE
    if run_file.exists():
        if not resume:
            finished = (out / "metrics.json").exists()
            raise DataError(f"{out}: already holds a {'finished' if finished else 'started'} "
                            "run; pass --resume to continue it, or choose another --out")
        return json.loads(run_file.read_text())
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty and holds no edgeconv run; "
                        "choose another --out")
    return None


def plan(options: Options, previous: dict | None):
    """(config, recipe, dataset): the options, filled from the previous run, then defaults;
    Keras is not started yet (a fresh run's automatic precision is left None for
    start_backend)."""
    previous = previous or {}

    def chosen(name: str, default=None):
        value = getattr(options, name)
        return value if value is not None else previous.get(name, default)

    recipe_name = options.recipe or previous.get("recipe") or "baseline"
    settings = options.settings or previous.get("settings") or {}
    try:  # a resumed run's settings are checked again: its teachers may have gone
        recipe = with_settings(RECIPES[recipe_name], settings)
    except ValueError as error:
        raise DataError(f"{options.out}: {error}") from None
    data = resolve_data(options.data or (Path(previous["data"]) if previous else None))
    dataset = find_dataset(data, limit=chosen("limit"))
    precision = options.precision
    if precision == "auto":
        precision = previous.get("precision")
    config = {
        "recipe": recipe.name,
        "settings": settings or None,
        "epochs": chosen("epochs") or recipe.epochs,
        "batch_size": chosen("batch_size") or recipe.batch_size,
        "seed": chosen("seed", 0),
        "limit": chosen("limit"),
        "precision": precision,
        "data": str(data.resolve()),
        "field": [str(p.resolve()) for p in options.add] or previous.get("field") or None,
        "init": str(options.init.resolve()) if options.init else previous.get("init"),
        "classes": dataset.classes,
        "input_shape": list(INPUT_SHAPE),
    }
    for key, value in config.items():
        if previous and key != "epochs" and previous.get(key) != value:
            raise DataError(f"{options.out}: holds a different run ({key} "
                            f"{previous.get(key)!r}, not {value!r}); choose another --out")
    return config, recipe, dataset


def start_backend(options: Options, config: dict) -> Devices:
    """Start Keras's backend and choose the devices (not part of the run: it may resume on
    others); fills a fresh run's automatic precision."""
    import_keras()  # quietly, before train.model imports it
    from edgeconv.train.distribute import choose_devices, join_processes

    if options.processes > 1:
        join_processes(options.coordinator, options.processes, options.process_id)
    devices = choose_devices(options.devices)  # before anything starts the backend
    if config["precision"] is None:
        from edgeconv.train.environment import auto_precision

        config["precision"] = auto_precision()
    if config["batch_size"] % devices.count:
        raise DataError(f"batch {config['batch_size']} does not split evenly over "
                        f"{devices.count} devices; pass a --batch-size that is a multiple of "
                        f"{devices.count}")
    return devices


def start_or_resume(out: Path, config: dict, recipe, steps: int, resumed: bool):
    """(model, state): the last checkpoint of a resumed run, else a new compiled model."""
    from edgeconv.train import trainer
    from edgeconv.train.augment import RandomAffine  # noqa: F401  (registers the layer for loading)

    keras = import_keras()
    state_file = out / trainer.STATE_FILE
    if resumed:
        for partial in remove_partial_files(out):
            print(f"removed {partial.name}, a file the interrupted run had not finished")
    state = json.loads(state_file.read_text()) if resumed and state_file.exists() else None
    if state and state.get("checkpoint"):
        model = keras.saving.load_model(out / state["checkpoint"])
        print(f"resuming {out} after epoch {state['epoch']} of {config['epochs']}")
    else:
        state = {"epoch": 0, "checkpoint": None, "history": {}, "train_seconds": 0.0}
        keras.utils.set_random_seed(config["seed"])  # the initial weights too follow --seed
        model = trainer.new_training_model(
            recipe, len(config["classes"]), config["precision"], config["seed"],
            tuple(config["input_shape"]), steps, config["epochs"])
        if config["init"]:
            start_from(trainer.network_of(model), Path(config["init"]))
    keras.utils.set_random_seed(config["seed"] + state["epoch"])
    return model, state


def start_from(network, path: Path) -> None:
    """Copy the weights of the model at `path` into `network` (the recipe's convnet), layer
    by layer; a none head it carries (train/confidence.py) is left out."""
    keras = import_keras()
    try:
        source = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise DataError(f"--init {path}: cannot load it ({error})") from None
    theirs = [layer for layer in source.layers if layer.weights and layer.name != "none_head"]
    ours = [layer for layer in network.layers if layer.weights]

    def shapes(layers) -> list[tuple]:
        return [tuple(weight.shape) for layer in layers for weight in layer.weights]

    if shapes(theirs) != shapes(ours):
        raise DataError(f"--init {path}: its network is not this recipe's (train it with the "
                        "--recipe and classes it was trained with)")
    for target, layer in zip(ours, theirs):
        target.set_weights(layer.get_weights())
    import numpy as np

    probe = np.random.default_rng(0).integers(0, 256, (2, *network.input_shape[1:]), np.uint8)
    columns = network.output_shape[-1]  # a none head's column, if any, follows the classes'
    given = np.asarray(source(probe, training=False), np.float64)[:, :columns]
    copied = np.asarray(network(probe, training=False), np.float64)
    if not np.allclose(given, copied, atol=0.05):  # bfloat16 training rounds a little
        raise DataError(f"--init {path}: its layers do not line up with this recipe's "
                        f"network (outputs {given.ravel()} against {copied.ravel()})")
    print(f"starting from the weights of {path}")


def compare_on_field(out: Path, metrics: dict, config: dict, dataset, added) -> dict:
    """Score the new model, and the --init one, on the test split and the held-out field
    frames; the figures go into metrics.json under "field" and are printed."""
    from edgeconv.train.trainer import predictions

    keras = import_keras()
    new = keras.saving.load_model(out / "model.keras", compile=False)
    models = {"new": new}
    if config["init"]:
        models["old"] = keras.saving.load_model(config["init"], compile=False)
    columns = class_columns(len(dataset.classes))
    splits = ["test"] + (["field"] if "field" in dataset.splits else [])
    scores: dict[str, dict[str, float]] = {name: {} for name in models}
    scores["new"]["test"] = round(metrics["test_accuracy"], 4)  # finish() scored it
    for split in splits:
        images, truth = load_split(dataset, split)
        for name, model in models.items():
            if split in scores[name]:
                continue
            outputs = predictions(model, images)
            scores[name][split] = round(accuracy(truth, decide(outputs[:, :columns])), 4)
    report = {**added.summary(), "accuracy": scores,
              "photos": {split: len(dataset.splits[split]) for split in splits}}
    metrics = {**metrics, "field": report}
    write_json(out / "metrics.json", metrics)
    for split in splits:
        line = "  ".join(f"{name} {figures[split]:.4f}" for name, figures in scores.items())
        print(f"{split} accuracy ({report['photos'][split]} photos, class guesses): {line}")
    return metrics


def predict_labels(model, images):
    """Class indices the Keras model gives uint8 images (argmax; a sigmoid at 0.5, as exports
    record)."""
    from edgeconv.train.trainer import predictions

    return decide(predictions(model, images))


def finish(out: Path, model, state: dict, config: dict, recipe, dataset, validation_set,
           steps: int, devices: int = 1, ended_early: dict | None = None) -> dict:
    """Save the float32 model, score it on validation and test, write metrics and curves."""
    from edgeconv.train import trainer
    from edgeconv.train.environment import environment
    from edgeconv.train.model import count_macs
    from edgeconv.train.plots import plot_curves

    started = time.monotonic()
    final = trainer.inference_model(model, recipe, len(dataset.classes),
                                    tuple(config["input_shape"]))
    with atomic_path(out / "model.keras") as tmp:
        final.save(tmp)
    test_images, test_truth = load_split(dataset, "test")
    test_labels = predict_labels(final, test_images)
    samples = steps * config["batch_size"] * config["epochs"]
    metrics = {
        **config,
        "recipe_definition": recipe.as_dict(),
        "params": final.count_params(),
        "macs_per_image": count_macs(final),
        "train_images": sum(dataset.counts("train")),
        "counts": {split: dataset.counts(split) for split in dataset.splits},
        "data_sha256": dataset_digest(dataset),
        "ended_early": ended_early,
        "devices": devices,
        "steps_per_epoch": steps,
        "val_accuracy": accuracy(validation_set[1], predict_labels(final, validation_set[0])),
        "best_val_accuracy": max(state["history"].get("val_accuracy", [0.0])),
        "test_accuracy": accuracy(test_truth, test_labels),
        "confusion_matrix": confusion_matrix(test_truth, test_labels, len(dataset.classes)),
        "train_seconds": round(state["train_seconds"], 2),
        "images_per_second": round(samples / max(state["train_seconds"], 1e-9), 1),
        "evaluate_seconds": round(time.monotonic() - started, 2),
        **environment(),
    }
    write_json(out / "history.json", state["history"])
    plot_curves(state["history"], out / "curves.png",
                f"{recipe.name}: test accuracy {metrics['test_accuracy']:.3f}")
    write_json(out / "metrics.json", metrics)
    kept = trainer.kept_checkpoints(state)
    if kept:  # the finished model replaces the resumable checkpoints
        state["checkpoint"] = state["best"] = None
        write_json(out / trainer.STATE_FILE, state)
        for name in kept:
            (out / name).unlink(missing_ok=True)
    return metrics
