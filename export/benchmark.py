#!/usr/bin/env python
"""One table across every format: status, size, accuracy, agreement, speed, start-up, memory.

  python export/benchmark.py RUN_DIR [RUN_DIR ...] [--formats F,...] [--data DIR]
                             [--threads 1,N] [--repeat K] [--json F] [--report F.md]

Exports whatever a run lacks, then measures its Keras model and each artifact on the same
images (several runs: one block of rows each, e.g. the seed's model and the plus recipe's).
Accuracy and agreement come from the parity check (end to end from the image files);
latency, throughput, cold start and peak memory from a fresh process per model and thread
count (export/probe.py), through runtime/ for the artifacts: the device path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain clone

from export import parity, to_onnx, to_tflite  # noqa: E402
from export.common import ExportError, Source  # noqa: E402
from runtime.classifier import Classifier  # noqa: E402
from runtime.files import atomic_path, write_json  # noqa: E402
from train.plots import pyplot, save_figure  # noqa: E402

BATCHES = "1,8,32"
FORMATS: list[tuple[str, str, Callable[[Source], Path]]] = [
    (f"TFLite {q}", f"model_{q}.tflite", lambda s, q=q: to_tflite.export(s, q))
    for q in to_tflite.QUANTIZATIONS
] + [
    ("ONNX float32", "model_float.onnx", lambda s: to_onnx.export(s)),
    ("ONNX int8", "model_int8.onnx", lambda s: to_onnx.export(s, "int8")),
]

ALL_FORMATS = ["Keras"] + [name for name, _, _ in FORMATS]


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def probe(model: Path, threads: int, repeat: int, batches: str = "") -> dict:
    """Run export/probe.py in a fresh process and return its measurements."""
    command = [sys.executable, str(Path(__file__).with_name("probe.py")), str(model),
               "--threads", str(threads), "--repeat", str(repeat), "--started",
               repr(time.time())]
    if batches:
        command += ["--batches", batches]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"probe failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_speed(row: dict, model: Path, threads: list[int], repeat: int) -> None:
    for count in threads:
        found = probe(model, count, repeat, BATCHES if count == threads[-1] else "")
        row["ms_p50"][str(count)] = found["ms_p50"]
        row["ms_range"][str(count)] = [found["ms_min"], found["ms_max"]]
        if count == threads[-1]:  # start-up, memory and throughput with the device default
            best = max(found["images_per_second"].items(), key=lambda item: item[1])
            row.update(images_per_second=best[1], best_batch=int(best[0]),
                       cold_start_s=found["cold_start_s"], peak_rss_mb=found["peak_rss_mb"])


def new_row(name: str, path: Path) -> dict:
    return {"run": path.parent.name, "format": name, "file": path.name, "status": "ok",
            "macs_per_image": None, "size_mb": None,
            "accuracy": None, "agreement": None, "ms_p50": {}, "ms_range": {},
            "images_per_second": None, "best_batch": None, "cold_start_s": None,
            "peak_rss_mb": None}


def benchmark(source: Source, data: Path, threads: list[int], repeat: int,
              formats: set[str]) -> list[dict]:
    """Rows for the run's Keras model and its artifacts whose format is in `formats`."""
    from train.model import count_macs

    files, truth = parity.image_files(data, source.labels)
    if not files:
        raise ExportError(f"{data}: no images")
    model = source.model
    macs = count_macs(model)
    reference, _ = parity.model_outputs(files, source.input_size,
                                        lambda x: model.predict(x, verbose=0), parity.BATCH,
                                        "keras")
    keras_row = new_row("Keras", source.path)
    known = (truth >= 0) & ~np.isnan(reference).any(axis=1)
    keras_row.update(size_mb=source.path.stat().st_size / 1e6, agreement=1.0,
                     macs_per_image=macs,
                     accuracy=float((parity.labels_of(reference[known]) == truth[known]).mean()))
    rows = []
    if "keras" in formats:
        measure_speed(keras_row, source.path, threads, repeat)
        rows.append(keras_row)
    gates = parity.default_gates()
    for name, file_name, exporter in FORMATS:
        if name.lower() not in formats:
            continue
        path = source.run_dir / file_name
        row = new_row(name, path)
        row["macs_per_image"] = macs
        rows.append(row)
        try:
            if not path.exists():
                print(f"exporting {file_name}", file=sys.stderr)
                exporter(source)
        except Exception as error:  # one broken format never stops the others
            row["status"] = f"export failed: {one_line(error)}"
            continue
        try:
            row["size_mb"] = path.stat().st_size / 1e6
            classifier = Classifier(path)
            outputs, _ = parity.model_outputs(files, classifier.size, classifier.engine.run, 1,
                                              file_name)
            quantization = classifier.metadata["quantization"]
            checked = parity.compare(file_name, quantization, files, truth, reference, outputs,
                                     gates.get(quantization, gates["int8"]))
            row.update(accuracy=checked["artifact_accuracy"], agreement=checked["agreement"])
            if not checked["passed"]:
                row["status"] = "parity failed: " + "; ".join(checked["failures"])
            measure_speed(row, path, threads, repeat)
        except Exception as error:
            row["status"] = f"failed: {one_line(error)}"
    return rows


def markdown(rows: list[dict], threads: list[int]) -> str:
    def number(value, digits=2, scale=1.0):
        return "-" if value is None else f"{value * scale:.{digits}f}"

    several = len({row["run"] for row in rows}) > 1
    ms_heads = " | ".join(f"ms p50 ({n} thread{'s' if n > 1 else ''})" for n in threads)
    lines = [f"| {'run | ' if several else ''}format | status | size MB | accuracy | agreement "
             f"| {ms_heads} | images/s (best batch) | cold start s | peak RSS MB |",
             f"|{'---|' if several else ''}---|---|---:|---:|---:|" + "---:|" * len(threads)
             + "---:|---:|---:|"]
    for row in rows:
        ms = " | ".join(number(row["ms_p50"].get(str(n))) for n in threads)
        ips = "-" if row["images_per_second"] is None else \
            f"{row['images_per_second']:.0f} (b{row['best_batch']})"
        lines.append(f"| {row['run'] + ' | ' if several else ''}"
                     f"{row['format']} | {row['status']} | {number(row['size_mb'])} | "
                     f"{number(row['accuracy'], 1, 100)}% | {number(row['agreement'], 1, 100)}% "
                     f"| {ms} | {ips} | {number(row['cold_start_s'])} | "
                     f"{number(row['peak_rss_mb'], 0)} |")
    return "\n".join(lines).replace("| -% |", "| - |")


def hardware_lines(rows: list[dict]) -> str:
    """Per run: its MACs per image and what the int8 TFLite model makes of this CPU."""
    lines = []
    for run in dict.fromkeys(row["run"] for row in rows):
        macs = next(r["macs_per_image"] for r in rows if r["run"] == run)
        int8 = next((r for r in rows if r["run"] == run and r["format"] == "TFLite int8"
                     and r["images_per_second"]), None)
        line = f"{run}: {macs / 1e6:.0f} M multiply-accumulates per image"
        if int8:
            rate = macs * int8["images_per_second"] / 1e9
            line += (f"; TFLite int8 at {int8['images_per_second']:.0f} images/s achieves "
                     f"{rate:.1f} G MAC/s on {os.cpu_count()} cores")
        lines.append(line + ".")
    return "\n".join(lines)


def bar_chart(rows: list[dict], threads: list[int], path: Path) -> None:
    plt = pyplot()

    shown = [r for r in rows if r["ms_p50"]]
    several = len({r["run"] for r in shown}) > 1
    names = [f"{r['run']}: {r['format']}" if several else r["format"] for r in shown]
    figure, (latency, size) = plt.subplots(1, 2, figsize=(11, 4))
    latency.barh(names, [r["ms_p50"][str(threads[-1])] for r in shown], color="tab:blue")
    latency.set_xlabel(f"ms per image, p50, {threads[-1]} threads")
    latency.invert_yaxis()
    size.barh(names, [r["size_mb"] for r in shown], color="tab:orange")
    size.set_xlabel("size MB")
    size.invert_yaxis()
    figure.tight_layout()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export/benchmark.py", description=__doc__.split(
        "\n\n")[0].strip(), epilog="Example: python export/benchmark.py runs/augmented "
        "--report benchmark.md")
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="train/run.py run folders")
    parser.add_argument("--formats", default=",".join(ALL_FORMATS),
                        help="comma-separated formats to measure (default: all: %(default)s)")
    parser.add_argument("--data", type=Path, help="class folders to score on (default: the "
                        "run's test split)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}",
                        help="thread counts to time (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--report", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    formats = {name.strip().lower() for name in args.formats.split(",")}
    unknown = formats - {name.lower() for name in ALL_FORMATS}
    if unknown:
        parser.error(f"unknown format {sorted(unknown)[0]!r}; choose from "
                     f"{', '.join(ALL_FORMATS)}")
    rows = []
    try:
        threads = sorted({int(n) for n in args.threads.split(",")})
        for run_dir in args.run_dirs:
            source = Source(run_dir)
            data = args.data or (Path(source.run["data"]) / "test" if source.run.get("data")
                                 else None)
            if data is None or not data.is_dir():
                raise ExportError(f"{data}: no test images; pass --data DIR")
            rows += benchmark(source, data, threads, args.repeat, formats)
    except (ExportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown(rows, threads)
    summary = hardware_lines(rows)
    runs = ", ".join(str(run_dir) for run_dir in args.run_dirs)
    print(f"{table}\n\n{summary}")
    figure = (args.report or args.json or args.run_dirs[0] / "benchmark.json").with_suffix(".png")
    bar_chart(rows, threads, figure)
    if args.report:
        with atomic_path(args.report) as tmp:
            tmp.write_text(f"# Benchmark: {runs}\n\nImages under `{data}`; "
                           f"{os.cpu_count()} cores.\n\n{table}\n\n"
                           f"{summary}\n\n![latency and size]({figure.name})\n")
    if args.json:
        write_json(args.json, {"runs": [str(r) for r in args.run_dirs], "data": str(data),
                               "rows": rows, "threads": threads})
    with open("benchmarks.log", "a") as log:
        log.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "runs": [str(r) for r in args.run_dirs], "rows": [
                                  {k: r[k] for k in ("run", "format", "status", "ms_p50",
                                                     "images_per_second")} for r in rows]})
                  + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
