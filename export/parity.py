#!/usr/bin/env python
"""Prove exported models are faithful: each artifact against the Keras model, end to end.

  python export/parity.py --reference MODEL.keras --data DIR ARTIFACT... [--json F] [--report F.md]

Both sides start from the same image files under DIR (class folders): the reference through
the training pipeline in Keras, each artifact through runtime/ exactly as a device runs it.
Per artifact: accuracies, label agreement, max and mean |p_ref - p_art|, the files whose
label flips, and a scatter plot of p_ref against p_art. Exit 0 only when every artifact
passes its gate (1 when one fails, 2 for usage errors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain clone

from export.common import ExportError, Source  # noqa: E402
from runtime.classifier import Classifier  # noqa: E402
from runtime.engines import EngineError  # noqa: E402
from runtime.files import atomic_path, write_json  # noqa: E402
from runtime.metadata import ModelFileError  # noqa: E402
from runtime.preprocess import ImageError, is_image_file, load_image  # noqa: E402
from runtime.progress import progress  # noqa: E402
from train.plots import pyplot, save_figure  # noqa: E402

BATCH = 32


def default_gates() -> dict:
    """quantization -> (min label agreement, max |dp| or None, max accuracy drop or None)."""
    return {"float32": [1.0, 1e-4, None], "float16": [0.995, None, None],
            "dynamic": [0.99, None, None], "int8": [0.98, None, 0.01]}


def image_files(folder: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image under folder; truth is the index of its class folder (-1 if not a label)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    truth = np.array([labels.index(p.parent.name) if p.parent.name in labels else -1
                      for p in files], dtype=int)
    return files, truth


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


def labels_of(outputs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    if outputs.shape[1] == 1:
        return (outputs[:, 0] >= threshold).astype(int)
    return outputs.argmax(axis=1)


def compare(name: str, quantization: str, files: list[Path], truth: np.ndarray,
            reference: np.ndarray, outputs: np.ndarray, gate: list) -> dict:
    readable = ~np.isnan(reference).any(axis=1)
    known = readable & (truth >= 0)
    ref_labels, art_labels = labels_of(reference[readable]), labels_of(outputs[readable])
    dp = np.abs(reference[readable] - outputs[readable]).max(axis=1)
    ref_accuracy = float((labels_of(reference[known]) == truth[known]).mean()) if known.any() \
        else None
    art_accuracy = float((labels_of(outputs[known]) == truth[known]).mean()) if known.any() \
        else None
    flips = [str(path) for path, a, b in zip(np.array(files)[readable], ref_labels, art_labels)
             if a != b]
    agreement = float((ref_labels == art_labels).mean())
    min_agreement, max_dp, max_drop = gate
    failures = []
    if agreement < min_agreement:
        failures.append(f"agreement {agreement:.4f} < {min_agreement}")
    if max_dp is not None and dp.max() > max_dp:
        failures.append(f"max |dp| {dp.max():.2e} > {max_dp:.0e}")
    if max_drop is not None and ref_accuracy is not None and \
            ref_accuracy - art_accuracy > max_drop + 1e-12:
        failures.append(f"accuracy drop {100 * (ref_accuracy - art_accuracy):.2f} points > "
                        f"{100 * max_drop:.2f}")
    return {"artifact": name, "quantization": quantization, "images": int(readable.sum()),
            "reference_accuracy": ref_accuracy, "artifact_accuracy": art_accuracy,
            "agreement": agreement, "max_abs_dp": float(dp.max()),
            "mean_abs_dp": float(dp.mean()), "flips": flips, "passed": not failures,
            "failures": failures}


def scatter(path: Path, name: str, reference: np.ndarray, outputs: np.ndarray) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
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
    lines = ["| artifact | quantization | images | reference acc | artifact acc | agreement | "
             "max abs dp | mean abs dp | flips | gate |", "|---|---|---:|---:|---:|---:|---:|"
             "---:|---:|---|"]
    for row in rows:
        def pct(value):
            return "-" if value is None else f"{100 * value:.2f}%"
        gate = "pass" if row["passed"] else "FAIL: " + "; ".join(row["failures"])
        lines.append(f"| {row['artifact']} | {row['quantization']} | {row['images']} | "
                     f"{pct(row['reference_accuracy'])} | {pct(row['artifact_accuracy'])} | "
                     f"{pct(row['agreement'])} | {row['max_abs_dp']:.2e} | "
                     f"{row['mean_abs_dp']:.2e} | {len(row['flips'])} | {gate} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="export/parity.py", description=__doc__.split(
        "\n\n")[0].strip(), epilog="Example: python export/parity.py --reference "
        "runs/augmented/model.keras --data data/cats_and_dogs_small/test runs/augmented/*.tflite")
    parser.add_argument("artifacts", nargs="+", type=Path, help=".tflite / .onnx files")
    parser.add_argument("--reference", type=Path, required=True, help="the Keras model")
    parser.add_argument("--data", type=Path, required=True, help="folder of class folders")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--report", type=Path, help="write a Markdown report; scatter plots "
                        "go beside it")
    gates = default_gates()
    parser.add_argument("--float32-max-dp", type=float, default=gates["float32"][1])
    parser.add_argument("--float16-agreement", type=float, default=gates["float16"][0])
    parser.add_argument("--dynamic-agreement", type=float, default=gates["dynamic"][0])
    parser.add_argument("--int8-agreement", type=float, default=gates["int8"][0])
    parser.add_argument("--int8-max-drop", type=float, default=gates["int8"][2],
                        help="largest accuracy loss allowed for int8, as a fraction "
                        "(default: %(default)s = 1 point)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gates = default_gates()
    gates["float32"][1] = args.float32_max_dp
    gates["float16"][0] = args.float16_agreement
    gates["dynamic"][0] = args.dynamic_agreement
    gates["int8"][0], gates["int8"][2] = args.int8_agreement, args.int8_max_drop
    try:
        for path in (args.json, args.report):
            if path is not None and not path.parent.is_dir():
                raise ExportError(f"{path.parent}: output folder does not exist")
        if not args.data.is_dir():
            raise ExportError(f"{args.data}: data folder not found")
        source = Source(args.reference)
        classifiers = {path: Classifier(path) for path in args.artifacts}  # fail fast
        labels = source.labels
        files, truth = image_files(args.data, labels)
        if not files:
            raise ExportError(f"{args.data}: no images")
        model = source.model
        reference, errors = model_outputs(
            files, source.input_size, lambda x: model.predict(x, verbose=0), BATCH, "reference")
        for error in errors:
            print(f"skipped {error}", file=sys.stderr)
        rows = []
        for path, classifier in classifiers.items():
            # One image at a time, as the device runs it.
            outputs, _ = model_outputs(files, classifier.size, classifier.engine.run, 1,
                                       path.name)
            quantization = classifier.metadata["quantization"]
            rows.append(compare(path.name, quantization, files, truth, reference, outputs,
                                gates.get(quantization, gates["int8"])))
            written = args.report or args.json
            if written is not None:
                scatter(written.parent / plot_name(path.name), path.name, reference, outputs)
    except (ExportError, ModelFileError, EngineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = table(rows)
    print(report)
    if args.json:
        write_json(args.json, {"reference": str(args.reference), "data": str(args.data),
                               "images": len(files), "skipped": errors, "artifacts": rows})
    if args.report:
        plots = "\n".join(f"![{row['artifact']}]({plot_name(row['artifact'])})" for row in rows)
        with atomic_path(args.report) as tmp:
            tmp.write_text(f"# Export parity\n\nReference `{args.reference}`, "
                           f"{len(files)} images under `{args.data}`.\n\n{report}\n\n{plots}\n")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
