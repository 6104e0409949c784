#!/usr/bin/env python
"""Teach a finished run to know when it does not know: a temperature and a "none" head.

  python train/confidence.py RUN_DIR --negatives DIR [--check NAME...] --out NEW_RUN_DIR

1. Temperature: one number T fitted on the run's validation photos (least log loss of
   sigmoid(logit / T)); the runtime applies it, so scores become calibrated probabilities.
2. None head: a logistic regression on the trained network's pooled features (the global
   average of each residual stage, frozen), trained on the run's training photos against the
   negatives' fit folders. It joins the model as one more output column, so every export and
   engine (int8 included) computes it. Its cut is set on the validation photos: at most
   TARGET_VALIDATION_NONE of them answered none; the bias is shifted so the cut is P(none) 0.5,
   where int8 resolves it best.
3. Negatives are split by source folder: the --check folders (default: every second folder,
   sorted by name) never train or set anything; the figures on them are the honest ones.

NEW_RUN_DIR gets model.keras (outputs [P(class 1), P(none)]), the run's run.json and
metrics.json, confidence.json (temperature, ECE before and after on the test split, none
rates per folder) and reliability.png; export/ship.py then ships it like any run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from edgeconv.common.files import write_json
from edgeconv.runtime.confidence import (
    calibrated,
    expected_calibration_error,
    reliability_bins,
    top_scores,
)
from edgeconv.runtime.preprocess import list_images, load_image
from edgeconv.runtime.tables import markdown_table, percent
from edgeconv.train.backend import import_keras

TARGET_VALIDATION_NONE = 0.01  # the share of validation cats and dogs the cut may call none
HEAD_WIDTH = 128
HEAD_EPOCHS = 12
BATCH = 64


def stage_model(model):
    """The run's model with two outputs: its own, and the output of its second-to-last
    residual stage (where the none head branches off)."""
    keras = import_keras()
    stages = [layer.output for layer in model.layers if isinstance(layer, keras.layers.Add)]
    if len(stages) < 2:
        raise SystemExit(f"error: {model.name}: needs residual stages to branch a none head from")
    return keras.Model(model.inputs, [model.outputs[0], stages[-2]])


def none_head(shape: tuple[int, ...]):
    """A small convolutional head: a stage's feature map -> P(none of the classes)."""
    keras = import_keras()
    L = keras.layers
    head = keras.Sequential([
        keras.Input(shape=shape),
        L.SeparableConv2D(HEAD_WIDTH, 3, padding="same", use_bias=False, name="none_conv_1"),
        L.BatchNormalization(name="none_norm_1"), L.Activation("relu", name="none_relu_1"),
        L.SeparableConv2D(HEAD_WIDTH, 3, padding="same", use_bias=False, name="none_conv_2"),
        L.BatchNormalization(name="none_norm_2"), L.Activation("relu", name="none_relu_2"),
        L.GlobalAveragePooling2D(name="none_pool"), L.Dropout(0.3, name="none_dropout"),
        L.Dense(1, activation="sigmoid", dtype="float32", name="none")], name="none_head")
    return head


def train_head(head, maps: np.ndarray, is_none: np.ndarray, seed: int = 0) -> None:
    """Fit the head on stage maps (flipped left-right at random), classes balanced."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    weights = {0: 0.5 / (1 - is_none.mean()), 1: 0.5 / is_none.mean()}
    flipped = np.concatenate([maps, maps[:, :, ::-1]])
    labels = np.concatenate([is_none, is_none]).astype(np.float32)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    head.fit(flipped, labels, batch_size=64, epochs=HEAD_EPOCHS, class_weight=weights,
             verbose=0, shuffle=True)


def with_none_head(stages, head, shift: float):
    """The model with one more output column, P(none), from the head on its stage output;
    the head's bias moved by -`shift` (its cut, as a logit, then sits at P(none) 0.5)."""
    keras = import_keras()
    dense = head.get_layer("none")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias - shift])
    joined = keras.layers.Concatenate(name="with_none", dtype="float32")(
        [stages.outputs[0], head(stages.outputs[1])])
    return keras.Model(stages.inputs, joined, name=f"{stages.name}_with_none")


def run_on(model, files: list[Path], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(P(class 1) [N], stage maps [N, h, w, c] as float16) for the files."""
    probabilities, maps = [], []
    for start in range(0, len(files), BATCH):
        images = np.stack([load_image(path, size) for path in files[start:start + BATCH]])
        p, m = model.predict(images, verbose=0)
        probabilities.append(p[:, 0])
        maps.append(m.astype(np.float16))
    return np.concatenate(probabilities), np.concatenate(maps)


def fit_temperature(p: np.ndarray, truth: np.ndarray) -> float:
    """T of least log loss for sigmoid(logit(p) / T), by a golden-section search on log T."""
    def loss(log_t: float) -> float:
        q = np.clip(calibrated(p, float(np.exp(log_t))), 1e-7, 1 - 1e-7)
        return float(-np.mean(truth * np.log(q) + (1 - truth) * np.log(1 - q)))

    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        low, high = (low, b) if loss(a) < loss(b) else (a, high)
    return float(np.exp((low + high) / 2))


def fit_none_head(maps: dict[str, np.ndarray], fit: list[str]) -> tuple[object, dict]:
    """A none head trained on maps["train"] (cats and dogs) against the `fit` negatives;
    and its logit for every photo of every set in `maps`."""
    x = np.concatenate([maps["train"], *(maps[name] for name in fit)])
    y = np.concatenate([np.zeros(len(maps["train"])),
                        np.ones(sum(len(maps[name]) for name in fit))])
    head = none_head(x.shape[1:])
    train_head(head, x, y)
    logits = {}
    for name, values in maps.items():
        p = np.clip(head.predict(values, batch_size=256, verbose=0)[:, 0].astype(np.float64),
                    1e-7, 1 - 1e-7)
        logits[name] = np.log(p) - np.log1p(-p)
    return head, logits


def none_cut(validation_logits: np.ndarray) -> float:
    """The none head's logit cut: at most TARGET_VALIDATION_NONE of the validation photos
    (all of them cats or dogs) reach it."""
    return float(np.quantile(validation_logits, 1 - TARGET_VALIDATION_NONE))


def split_negatives(folder: Path, check: list[str] | None) -> tuple[list[str], list[str]]:
    """(fit folders, check folders) of a negatives folder, by source folder."""
    names = sorted(path.name for path in folder.iterdir() if path.is_dir())
    if len(names) < 2:
        raise SystemExit(f"error: {folder}: needs two or more source folders (some fit, "
                         "some only check)")
    check = check or names[1::2]
    unknown = sorted(set(check) - set(names))
    if unknown:
        raise SystemExit(f"error: {folder}: no source folder {', '.join(unknown)}")
    return [name for name in names if name not in check], check


def truth_of(files: list[Path], classes: list[str]) -> np.ndarray:
    return np.array([classes.index(path.parent.name) for path in files])


def plot_reliability(before: list, after: list, path: Path, title: str) -> None:
    from edgeconv.train.plots import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(4.6, 4.6))
    axes.plot([0.5, 1], [0.5, 1], color="grey", linewidth=1, label="calibrated")
    for points, name in ((before, "raw"), (after, "with temperature")):
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axes.set(xlabel="top score (mean per bin)", ylabel="accuracy in the bin", title=title,
             xlim=(0.5, 1), ylim=(0.3, 1))
    axes.legend()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/confidence.py",
                                     description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished binary run")
    parser.add_argument("--negatives", type=Path, required=True,
                        help="a folder of source folders of photos of neither class")
    parser.add_argument("--check", nargs="+", metavar="NAME", help="source folders that only "
                        "check (default: every second one, sorted by name)")
    parser.add_argument("--out", type=Path, required=True, help="the new run folder")
    args = parser.parse_args(argv)
    run = json.loads((args.run_dir / "run.json").read_text())
    classes, data = run["classes"], Path(run["data"])
    if len(classes) != 2:
        raise SystemExit("error: the none head and temperature are made for binary runs")
    fit, check = split_negatives(args.negatives, args.check)
    keras = import_keras()
    model = keras.saving.load_model(args.run_dir / "model.keras")
    stages = stage_model(model)
    size = tuple(model.input_shape[1:3])
    files = {split: list_images(data / split) for split in ("train", "validation", "test")}
    files |= {name: list_images(args.negatives / name) for name in fit + check}
    found = {}
    for name, paths in files.items():
        print(f"features: {name} ({len(paths)} photos)", file=sys.stderr, flush=True)
        found[name] = run_on(stages, paths, size)
    truth = {split: truth_of(files[split], classes) for split in ("train", "validation", "test")}

    temperature = fit_temperature(found["validation"][0], truth["validation"])
    p_test = found["test"][0]
    right = (p_test >= 0.5) == truth["test"]
    raw_ece = expected_calibration_error(top_scores(p_test), right)
    ece = expected_calibration_error(top_scores(calibrated(p_test, temperature)), right)

    head, logits = fit_none_head({name: maps for name, (_, maps) in found.items()}, fit)
    cut = none_cut(logits["validation"])
    rates = {name: float(np.mean(values >= cut)) for name, values in logits.items()}
    answered = logits["test"] < cut

    def pooled(names: list[str]) -> float:
        return round(sum(rates[name] * len(files[name]) for name in names)
                     / sum(len(files[name]) for name in names), 4)

    report = {
        "from_run": str(args.run_dir), "temperature": round(temperature, 4),
        "ece_bins": 15, "test_ece_before": round(raw_ece, 4), "test_ece_after": round(ece, 4),
        "none": {
            "method": f"a convolutional head ({HEAD_WIDTH} wide, {HEAD_EPOCHS} epochs) on the "
                      "frozen network's second-to-last stage, trained on the training photos "
                      "against the fit negatives",
            "negatives": args.negatives.name, "negatives_path": str(args.negatives),
            "fit_folders": fit, "check_folders": check,
            "threshold": 0.5, "target_validation_none": TARGET_VALIDATION_NONE,
            "rates": {name: round(rate, 4) for name, rate in rates.items()},
            "check_negatives_none": pooled(check),
            "check_negatives": sum(len(files[name]) for name in check),
            "fit_negatives_none": pooled(fit),
            "test_none": round(rates["test"], 4),
            "test_accuracy_answered": round(float(right[answered].mean()), 4),
            "test_answered": int(answered.sum()),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("run.json", "metrics.json"):
        shutil.copyfile(args.run_dir / name, args.out / name)
    with_none_head(stages, head, cut).save(args.out / "model.keras")
    write_json(args.out / "confidence.json", report)
    plot_reliability(reliability_bins(top_scores(p_test), right),
                     reliability_bins(top_scores(calibrated(p_test, temperature)), right),
                     args.out / "reliability.png", f"{args.run_dir.name}: test photos")
    print(summary(report))
    return 0


def summary(report: dict) -> str:
    """The figures of a confidence.json as a Markdown table."""
    none = report["none"]
    rows = [["temperature (fitted on validation)", f"{report['temperature']:.3f}"],
            ["test ECE before calibration", f"{report['test_ece_before']:.4f}"],
            ["test ECE after calibration", f"{report['test_ece_after']:.4f}"],
            ["test cats and dogs answered none", percent(none["test_none"])],
            [f"check negatives answered none ({none['check_negatives']} photos of "
             f"{', '.join(none['check_folders'])})", percent(none["check_negatives_none"])],
            *([f"  {name}", percent(none["rates"][name])] for name in none["check_folders"]),
            ["fit negatives answered none (trained on)", percent(none["fit_negatives_none"])],
            ["test accuracy on the photos answered with a class",
             percent(none["test_accuracy_answered"])]]
    return markdown_table(["figure", "value"], rows)


if __name__ == "__main__":
    sys.exit(main())
