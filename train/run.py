#!/usr/bin/env python
"""Train a convnet on a folder-of-classes dataset.

  python train/run.py --data DIR --recipe {baseline,augmented,plus} --out RUN_DIR [--resume]

RUN_DIR receives model.keras (float32, inputs 0..255), history.json, metrics.json and
curves.png. A checkpoint is written after every epoch: --resume continues a run that was
interrupted (Ctrl-C, SIGTERM, even SIGKILL) from its last completed epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain clone

from runtime.files import atomic_path, write_json  # noqa: E402
from train.backend import import_keras  # noqa: E402
from train.dataset import DataError, find_dataset, load_split  # noqa: E402
from train.recipes import RECIPES, parse_settings, with_settings  # noqa: E402

DEFAULT_DATA = Path("data/cats_and_dogs_small")
PREPARE_COMMAND = "python train/prepare_data.py --download --out data/cats_and_dogs_small"
RUN_FILE = "run.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train/run.py",
        description="Train a convnet (the seed's Conv 32-64-128-128 + Dense 512, or the plus "
        "recipe's residual separable one) on DIR/{train,validation,test}/<class>/<images> and "
        "write model, metrics and curves to RUN_DIR.",
        epilog="Example: python train/run.py --data data/cats_and_dogs_small "
        "--recipe augmented --out runs/augmented",
    )
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help=f"dataset folder (default: $EDGECONV_DATA, else {DEFAULT_DATA})")
    parser.add_argument("--recipe", choices=list(RECIPES),
                        help="; ".join(f"{name}: {recipe.summary}".replace("%", "%%")
                                       for name, recipe in RECIPES.items())
                        + " (default: baseline; with --resume: the run's own)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                        help="run folder to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="settings", help="change one recipe setting, e.g. --set "
                        "label_smoothing=0 --set augment=null (values are JSON; for ablations)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--limit", type=int, help="at most N images per class per split "
                        "(quick runs)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="training arithmetic; auto picks bfloat16 where the hardware runs "
                        "it natively (AVX512-BF16/AMX CPUs, GPUs), else float32. The saved "
                        "model is float32 either way.")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last completed epoch, with "
                        "the data, recipe, settings, seed and epochs it was started with")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2],
                        help="Keras output: 1 progress bar, 2 a line per epoch "
                        "(default: 1 on a terminal, else 2)")
    args = parser.parse_args(argv)
    try:  # checked here for a one-line usage error; a resumed run applies its own
        args.settings = parse_settings(args.settings)
        with_settings(RECIPES[args.recipe or "baseline"], args.settings)
    except ValueError as error:
        parser.error(str(error))
    for name in ("epochs", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def resolve_data(data: Path | None) -> Path:
    if data is not None:
        return data
    if os.environ.get("EDGECONV_DATA"):
        return Path(os.environ["EDGECONV_DATA"])
    if not DEFAULT_DATA.is_dir():
        raise DataError(f"no dataset at {DEFAULT_DATA}; pass --data DIR, set EDGECONV_DATA, or "
                        f"download and prepare it with: {PREPARE_COMMAND}")
    return DEFAULT_DATA


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


def check_same_run(out: Path, previous: dict, config: dict) -> None:
    for key, value in config.items():
        if key != "epochs" and previous.get(key) != value:
            raise DataError(f"{out}: holds a different run ({key} {previous.get(key)!r}, "
                            f"not {value!r}); choose another --out")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (systemd, CI timeouts) stops like Ctrl-C: the last whole epoch stays saved.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return train(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    previous = previous_run(args.out, args.resume)
    if previous:  # --resume alone continues the run as it was started
        args.recipe = args.recipe or previous["recipe"]
        args.settings = args.settings or previous.get("settings") or {}
        for name in ("seed", "limit", "epochs", "batch_size"):
            if getattr(args, name) is None:
                setattr(args, name, previous.get(name))
        args.data = args.data or Path(previous["data"])
    args.recipe = args.recipe or "baseline"
    args.seed = args.seed if args.seed is not None else 0
    recipe = with_settings(RECIPES[args.recipe], args.settings)
    data = resolve_data(args.data)
    dataset = find_dataset(data, limit=args.limit)

    keras = import_keras()

    from train import trainer
    from train.augment import RandomAffine  # noqa: F401  (registers the layer for loading)
    from train.model import INPUT_SHAPE, count_macs
    from train.report import confusion_matrix, environment, plot_curves, predict_labels

    precision = args.precision
    if precision == "auto":
        precision = previous["precision"] if previous else auto_precision()
    config = {
        "recipe": recipe.name,
        "settings": args.settings or None,
        "epochs": args.epochs or recipe.epochs,
        "batch_size": args.batch_size or recipe.batch_size,
        "seed": args.seed,
        "limit": args.limit,
        "precision": precision,
        "data": str(data.resolve()),
        "classes": dataset.classes,
        "input_shape": list(INPUT_SHAPE),
    }
    out = args.out
    if previous:
        check_same_run(out, previous, config)
        if (out / "metrics.json").exists() and previous["epochs"] == config["epochs"]:
            print(f"{out}: run already complete ({config['epochs']} epochs); nothing to do")
            return 0
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_FILE, config)

    counts = {split: dataset.counts(split) for split in dataset.splits}
    print(f"data {data}: classes {dataset.classes}, images per class {counts}")
    train_set = load_split(dataset, "train")
    validation_set = load_split(dataset, "validation")
    steps = recipe.steps_per_epoch(len(train_set[0]), config["batch_size"])

    state_file = out / trainer.STATE_FILE
    state = json.loads(state_file.read_text()) if previous and state_file.exists() else None
    if state and state.get("checkpoint"):
        model = keras.saving.load_model(out / state["checkpoint"])
        print(f"resuming {out} at epoch {state['epoch'] + 1} of {config['epochs']}")
    else:
        state = {"epoch": 0, "checkpoint": None, "history": {}, "train_seconds": 0.0}
        model = trainer.new_training_model(recipe, len(dataset.classes), precision, args.seed,
                                           INPUT_SHAPE, steps, config["epochs"])
    keras.utils.set_random_seed(args.seed + state["epoch"])
    print(f"recipe {recipe.name}: {config['epochs']} epochs, batch {config['batch_size']}, "
          f"precision {precision}, backend {keras.backend.backend()}")
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    try:
        trainer.fit(out, model, state, train_set, validation_set, recipe, config["epochs"],
                    config["batch_size"], args.seed, verbose=verbose)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {state['epoch']} of {config['epochs']} epochs are saved in {out};"
              f" continue with: python train/run.py --out {out} --resume", file=sys.stderr)
        return 130

    started = time.monotonic()
    final = trainer.inference_model(model, recipe, len(dataset.classes), INPUT_SHAPE)
    with atomic_path(out / "model.keras") as tmp:
        final.save(tmp)
    test_set = load_split(dataset, "test")
    validation_labels, _ = predict_labels(final, validation_set[0])
    test_labels, _ = predict_labels(final, test_set[0])
    samples = steps * config["batch_size"] * config["epochs"]
    metrics = {
        **config,
        "recipe_definition": recipe.as_dict(),
        "params": final.count_params(),
        "macs_per_image": count_macs(final),
        "train_images": len(train_set[0]),
        "steps_per_epoch": steps,
        "val_accuracy": float((validation_labels == validation_set[1]).mean()),
        "best_val_accuracy": max(state["history"].get("val_accuracy", [0.0])),
        "test_accuracy": float((test_labels == test_set[1]).mean()),
        "confusion_matrix": confusion_matrix(test_set[1], test_labels, len(dataset.classes)),
        "train_seconds": round(state["train_seconds"], 2),
        "images_per_second": round(samples / max(state["train_seconds"], 1e-9), 1),
        "evaluate_seconds": round(time.monotonic() - started, 2),
        **environment(),
    }
    write_json(out / "history.json", state["history"])
    plot_curves(state["history"], out / "curves.png",
                f"{recipe.name}: test accuracy {metrics['test_accuracy']:.3f}")
    write_json(out / "metrics.json", metrics)
    if state.get("checkpoint"):  # the finished model replaces the resumable checkpoint
        (out / state["checkpoint"]).unlink(missing_ok=True)
        state["checkpoint"] = None
        write_json(state_file, state)
    print(f"test accuracy {metrics['test_accuracy']:.4f}, validation "
          f"{metrics['val_accuracy']:.4f} | {config['epochs']} epochs in "
          f"{metrics['train_seconds']:.0f} s, {metrics['images_per_second']:.0f} images/s | "
          f"{out / 'model.keras'}")
    return 0


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


def cpu_precision(cpuinfo: str | None = None) -> str:
    """bfloat16 on CPUs where it was measured to train faster (`train/benchmark.py`), else float32.

    Measured here: an AMD EPYC with AVX512-BF16 trained 1.6-1.8x faster in bfloat16; an Intel
    Xeon with AVX512-BF16 but no AMX (a VM that does not expose it) trained 28% slower. On
    Intel, bfloat16 is taken only with AMX, the units built for it. `cpuinfo` defaults to
    /proc/cpuinfo.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "float32"
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    amd_bf16 = "avx512_bf16" in flags and "AuthenticAMD" in cpuinfo
    return "bfloat16" if "amx_bf16" in flags or amd_bf16 else "float32"


if __name__ == "__main__":
    sys.exit(main())
