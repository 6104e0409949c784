#!/usr/bin/env python
"""Prove exported models are faithful: each artifact against the Keras model, end to end.

  python export/parity.py --reference MODEL.keras --data DIR ARTIFACT... [--json F] [--report F.md]

Both sides start from the same image files under DIR (class folders): the reference through
the training pipeline in Keras, each artifact through runtime/ exactly as a device runs it,
with the threshold stored in its metadata (a sigmoid's; a softmax's label is its top class).
Per artifact: accuracies, label agreement, max and mean |dp| (dp = p_ref - p_art, the
difference between the two sides' predicted probabilities), the files whose label flips, and
a scatter plot of p_ref against p_art. When an artifact fails and many photos score within
NEAR of the threshold, the failure names the likely cause: the model (a short-trained one sits
near 0.5, where any rounding flips labels), not the export.
Exit 0 only when every artifact passes its gate (1 when one fails, 2 for usage errors).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeconv.common.files import atomic_path, write_json
from edgeconv.common.system import cpu_flags, cpu_name
from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.confidence import expected_calibration_error, top_scores
from edgeconv.runtime.engines import EngineError
from edgeconv.runtime.evaluate import accuracy, decide, labelled_images
from edgeconv.runtime.metadata import ModelFileError
from edgeconv.runtime.preprocess import ImageError, load_image
from edgeconv.runtime.progress import progress
from edgeconv.runtime.tables import markdown_table, percent
from edgeconv.runtime.text import command_name

BATCH = 32
# The CPU features that decide which int8 kernels an engine runs (x86 and Arm).
INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@dataclass(frozen=True)
class Gate:
    min_agreement: float
    max_dp: float | None = None  # largest |p_ref - p_art| allowed
    max_drop: float | None = None  # largest accuracy loss allowed, as a fraction

    def failures(self, agreement: float, max_dp: float, drop: float | None) -> list[str]:
        found = []
        if agreement < self.min_agreement:
            found.append(f"agreement {agreement:.4f} < {self.min_agreement}")
        if self.max_dp is not None and max_dp > self.max_dp:
            found.append(f"max |dp| {max_dp:.2e} > {self.max_dp:.0e}")
        if self.max_drop is not None and drop is not None and drop > self.max_drop + 1e-12:
            found.append(f"accuracy drop {100 * drop:.2f} points > {100 * self.max_drop:.2f}")
        return found


GATES = {"float32": Gate(1.0, max_dp=1e-4), "float16": Gate(0.995), "dynamic": Gate(0.99),
         "int8": Gate(0.98, max_drop=0.01)}
NEAR = 0.03  # a reference score this close to the threshold is a coin toss for any rounding


def near_threshold(reference: np.ndarray, threshold: float) -> np.ndarray:
    """Which rows the reference scores within NEAR of deciding otherwise: a sigmoid's score
    near the threshold, a softmax's top two classes near each other."""
    if reference.shape[1] == 1:
        return np.abs(reference[:, 0] - threshold) < NEAR
    top = np.sort(reference, axis=1)
    return (top[:, -1] - top[:, -2]) < 2 * NEAR


def likely_cause(near: np.ndarray, flipped: np.ndarray, gate: Gate) -> str | None:
    """The model, when the photos near the threshold alone could explain the disagreement
    and most flips are among them."""
    if not flipped.any() or near.mean() <= 1 - gate.min_agreement:
        return None
    if (near & flipped).sum() < 0.5 * flipped.sum():
        return None
    return (f"likely the model, not the export: {percent(near.mean())} of the photos score "
            f"within {NEAR} of the threshold (the reference itself is unsure of them; "
            f"{(near & flipped).sum()} of the {flipped.sum()} flips are among them): train "
            "longer or on more photos, then export again")


@dataclass
class Parity:
    """What `check` found: the photos, Keras's outputs and one row per artifact."""

    files: list[Path]
    truth: np.ndarray
    reference: np.ndarray  # Keras outputs [N, k]; NaN rows for unreadable files
    skipped: list[str]
    rows: list[dict]

    def reference_accuracy(self, threshold: float | None = 0.5) -> float | None:
        known = (self.truth >= 0) & ~np.isnan(self.reference).any(axis=1)
        return accuracy(self.truth[known], decide(self.reference[known], threshold))

    @property
    def passed(self) -> bool:
        return all(row["passed"] for row in self.rows)


def model_outputs(files: list[Path], size: tuple[int, int], run, batch: int,
                  label: str) -> tuple[np.ndarray, list[str]]:
    """`run(uint8 images) -> outputs` over every file, `batch` at a time; unreadable files
    get a NaN row and their error message."""
    rows: list[np.ndarray | None] = []
    errors: list[str] = []
    for start in progress(range(0, len(files), batch), label=label, unit="batch"):
        images = []
        for path in files[start:start + batch]:
            try:
                images.append(load_image(path, size))
            except ImageError as error:
                errors.append(str(error))
                images.append(None)
        good = [image for image in images if image is not None]
        results = iter(np.asarray(run(np.stack(good)), np.float64) if good else [])
        rows += [next(results) if image is not None else None for image in images]
    width = next((len(row) for row in rows if row is not None), 1)
    return np.array([row if row is not None else np.full(width, np.nan) for row in rows]), errors


def compare(name: str, classifier: Classifier, found: Parity, outputs: np.ndarray,
            gate: Gate) -> dict:
    """One artifact's row: accuracies, agreement, |dp|, flips and its gate."""
    truth, threshold, confidence = found.truth, classifier.threshold, classifier.confidence
    readable = ~np.isnan(found.reference).any(axis=1)
    known = readable & (truth >= 0)
    dp = np.abs(found.reference[readable] - outputs[readable]).max(axis=1)
    (reference, reference_none), (outputs, none) = map(confidence.split, (found.reference,
                                                                          outputs))
    ref_labels = decide(reference[readable], threshold)
    art_labels = decide(outputs[readable], threshold)
    ref_accuracy = accuracy(truth[known], decide(reference[known], threshold))
    art_accuracy = accuracy(truth[known], decide(outputs[known], threshold))
    flips = [str(path) for path, a, b in zip(np.array(found.files)[readable], ref_labels,
                                             art_labels) if a != b]
    agreement = float((ref_labels == art_labels).mean())
    drop = None if ref_accuracy is None else ref_accuracy - art_accuracy
    failures = gate.failures(agreement, float(dp.max()), drop)
    extra = {}
    if none is not None:  # the none decisions, and the share of photos answered none
        said_none = confidence.is_none(none[readable])
        extra["none_agreement"] = float((confidence.is_none(reference_none[readable])
                                         == said_none).mean())
        extra["none_share"] = float(said_none.mean())
        if extra["none_agreement"] < gate.min_agreement:
            failures.append(f"none agreement {extra['none_agreement']:.4f} < "
                            f"{gate.min_agreement}")
    if known.any():  # calibration error of the artifact's top scores, with its temperature
        scores = top_scores(confidence.calibrate(outputs[known]))
        extra["ece"] = expected_calibration_error(
            scores, decide(outputs[known], threshold) == truth[known])
    cause = likely_cause(near_threshold(reference[readable], threshold),
                         ref_labels != art_labels, gate) if failures else None
    return {**extra, "artifact": name, "quantization": classifier.metadata["quantization"],
            "images": int(readable.sum()), "threshold": threshold,
            "reference_accuracy": ref_accuracy, "artifact_accuracy": art_accuracy,
            "agreement": agreement, "max_abs_dp": float(dp.max()),
            "mean_abs_dp": float(dp.mean()), "flips": flips, "passed": not failures,
            "failures": failures, "cause": cause}


def first_of_each_class(files: list[Path], truth: np.ndarray,
                        limit: int) -> tuple[list[Path], np.ndarray]:
    """The first `limit` files of each class (in one pass: a folder may be large)."""
    seen: Counter = Counter()
    kept = []
    for index, label in enumerate(truth.tolist()):
        seen[label] += 1
        if seen[label] <= limit:
            kept.append(index)
    return [files[index] for index in kept], truth[kept]


def check(source: Source, artifacts: list[Path], photos: Path,
          gates: dict[str, Gate] = GATES, plots: Path | None = None,
          limit: int | None = None) -> Parity:
    """Score Keras and every artifact on the images under `photos` (the first `limit` of
    each class when given); scatter plots go to `plots` when given. Raises ExportError,
    ModelFileError or EngineError for bad input."""
    if not photos.is_dir():
        raise ExportError(f"{photos}: data folder not found")
    classifiers = {path: Classifier(path) for path in artifacts}  # fail fast
    # A bare model.keras knows no class names; its exports carry them.
    labels = source.run.get("classes") or next(
        (classifier.labels for classifier in classifiers.values()), source.labels)
    files, truth = labelled_images(photos, labels)
    if limit is not None:
        files, truth = first_of_each_class(files, truth, limit)
    if not files:
        raise ExportError(f"{photos}: no images")
    reference, skipped = model_outputs(files, source.input_size, source.predict, BATCH,
                                       "reference")
    found = Parity(files, truth, reference, skipped, [])
    for path, classifier in classifiers.items():
        # One image at a time, as the device runs it.
        outputs, _ = model_outputs(files, classifier.size, classifier.engine.run, 1, path.name)
        quantization = classifier.metadata["quantization"]
        found.rows.append(compare(path.name, classifier, found, outputs,
                                  gates.get(quantization, gates["int8"])))
        if plots is not None:
            scatter(plots / plot_name(path.name), path.name, reference, outputs)
    return found


def machine() -> dict:
    """Where the artifacts ran: the CPU and the features that choose its int8 kernels (ONNX
    Runtime's int8-weight kernels saturate on AVX2 without VNNI; exports avoid them)."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "int8_features": [f for f in INT8_FEATURES if f in flags]}


def scatter(path: Path, name: str, reference: np.ndarray, outputs: np.ndarray) -> None:
    from edgeconv.train.plots import pyplot, save_figure

    figure, axes = pyplot().subplots(figsize=(4.5, 4.5))
    axes.scatter(reference.ravel(), outputs.ravel(), s=4, alpha=0.5)
    axes.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axes.set_xlabel("p (Keras reference)")
    axes.set_ylabel(f"p ({name})")
    axes.set_title(name, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def plot_name(artifact: str) -> str:
    """parity_model_int8_tflite.png: the suffix too, since TFLite and ONNX share stems."""
    return f"parity_{artifact.replace('.', '_')}.png"


def table(rows: list[dict]) -> str:
    """One row per artifact; ECE (with the model's temperature) and the none decisions'
    agreement with Keras when the model has them."""
    nones = any("none_agreement" in row for row in rows)
    return markdown_table(
        ["artifact", "quantization", "images", "reference acc", "artifact acc", "agreement",
         "max abs dp", "mean abs dp", "flips", "ECE",
         *(["none agreement", "answered none"] if nones else []), "gate"],
        [[row["artifact"], row["quantization"], row["images"],
          percent(row["reference_accuracy"], 2), percent(row["artifact_accuracy"], 2),
          percent(row["agreement"], 2), f"{row['max_abs_dp']:.2e}", f"{row['mean_abs_dp']:.2e}",
          len(row["flips"]), f"{row['ece']:.4f}" if "ece" in row else "-",
          *([percent(row.get("none_agreement"), 2), percent(row.get("none_share"), 1)]
            if nones else []),
          "pass" if row["passed"] else "FAIL: " + "; ".join(row["failures"])]
         for row in rows], left=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("export/parity.py"), description=__doc__.split(
        "\n\n")[0].strip(), epilog=f"Example: {command_name('python export/parity.py')} "
        "--reference "
        "runs/photos/model.keras --data data/photos/test runs/photos/*.tflite runs/photos/*.onnx")
    parser.add_argument("artifacts", nargs="+", type=Path, help=".tflite / .onnx files")
    parser.add_argument("--reference", type=Path, required=True, help="the Keras model")
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--report", type=Path, help="write a Markdown report; scatter plots "
                        "go beside it")
    parser.add_argument("--float32-max-dp", type=float, default=GATES["float32"].max_dp,
                        metavar="DP", help="largest |dp| allowed for float32, dp being the "
                        "difference of the two sides' probabilities (default: %(default)s)")
    parser.add_argument("--float16-agreement", type=float, metavar="SHARE",
                        default=GATES["float16"].min_agreement,
                        help="smallest share of labels float16 must agree on "
                        "(default: %(default)s)")
    parser.add_argument("--dynamic-agreement", type=float, metavar="SHARE",
                        default=GATES["dynamic"].min_agreement,
                        help="the same for dynamic-range quantization (default: %(default)s)")
    parser.add_argument("--int8-agreement", type=float, default=GATES["int8"].min_agreement,
                        metavar="SHARE", help="the same for int8 (default: %(default)s)")
    parser.add_argument("--int8-max-drop", type=float, default=GATES["int8"].max_drop,
                        metavar="FRACTION",
                        help="largest accuracy loss allowed for int8, as a fraction "
                        "(default: %(default)s = 1 point)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gates = {"float32": replace(GATES["float32"], max_dp=args.float32_max_dp),
             "float16": replace(GATES["float16"], min_agreement=args.float16_agreement),
             "dynamic": replace(GATES["dynamic"], min_agreement=args.dynamic_agreement),
             "int8": Gate(args.int8_agreement, max_drop=args.int8_max_drop)}
    written = args.report or args.json
    try:
        for path in (args.json, args.report):
            if path is not None and not path.parent.is_dir():
                raise ExportError(f"{path.parent}: output folder does not exist")
        found = check(Source(args.reference), args.artifacts, args.data, gates,
                      plots=written.parent if written else None)
    except (ExportError, ModelFileError, EngineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for error in found.skipped:
        print(f"skipped {error}", file=sys.stderr)
    report = table(found.rows)
    print(report)
    for row in found.rows:
        if row["cause"]:
            print(f"{row['artifact']}: {row['cause']}")
    if args.json:
        write_json(args.json, {"reference": str(args.reference), "data": str(args.data),
                               "images": len(found.files), "skipped": found.skipped,
                               "machine": machine(), "artifacts": found.rows})
    if args.report:
        plots = "\n".join(f"![{row['artifact']}]({plot_name(row['artifact'])})"
                          for row in found.rows)
        with atomic_path(args.report) as tmp:
            cpu = machine()
            tmp.write_text(f"# Export parity\n\nReference `{args.reference}`, "
                           f"{len(found.files)} images under `{args.data}`; run on "
                           f"{cpu['cpu']} ({', '.join(cpu['int8_features']) or 'no x86 SIMD'})."
                           f"\n\n{report}\n\n"
                           f"{plots}\n")
    return 0 if found.passed else 1


if __name__ == "__main__":
    sys.exit(main())
