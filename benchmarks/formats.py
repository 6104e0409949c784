#!/usr/bin/env python
"""One table across every format: status, size, accuracy, agreement, speed, start-up, memory.

  python benchmarks/formats.py RUN_DIR [RUN_DIR ...] [--formats F,...] [--data DIR]
                             [--threads 1,N] [--repeat K] [--json F] [--report F.md] [--log F]

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
from datetime import datetime, timezone
from pathlib import Path

from edgeconv.common.files import atomic_path, write_json
from edgeconv.export import formats, parity
from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.engines import EngineError
from edgeconv.runtime.metadata import ModelFileError
from edgeconv.runtime.tables import markdown_table, percent
from edgeconv.runtime.text import command_name

BATCHES = "1,8,32"
KERAS = "Keras"


def probe(model: Path, threads: int, repeat: int, batches: str = "") -> dict:
    """Run export/probe.py in a fresh process and return its measurements."""
    command = [sys.executable, "-m", "edgeconv.export.probe", str(model),
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


def new_row(name: str, path: Path, macs: int) -> dict:
    return {"run": path.parent.name, "format": name, "file": path.name, "status": "ok",
            "macs_per_image": macs, "size_mb": None, "accuracy": None, "agreement": None,
            "ms_p50": {}, "ms_range": {}, "images_per_second": None, "best_batch": None,
            "cold_start_s": None, "peak_rss_mb": None}


def benchmark(source: Source, data: Path, threads: list[int], repeat: int,
              names: list[str]) -> list[dict]:
    """Rows for the run's Keras model and its artifacts whose format is in `names`."""
    from edgeconv.train.model import count_macs

    macs = count_macs(source.model)
    outcomes = formats.export_missing(source, names)
    loadable, broken = [], {}
    for outcome in (outcome for outcome in outcomes if outcome.ok):
        try:  # a file that fails to load fails its row, not the whole check
            Classifier(outcome.path)
            loadable.append(outcome.path)
        except (ModelFileError, EngineError) as error:
            broken[outcome.path.name] = error
    found = parity.check(source, loadable, data)
    checked = {row["artifact"]: row for row in found.rows}
    rows = []
    if KERAS in names:
        row = new_row(KERAS, source.path, macs)
        row.update(size_mb=source.path.stat().st_size / 1e6, agreement=1.0,
                   accuracy=found.reference_accuracy())
        measure_speed(row, source.path, threads, repeat)
        rows.append(row)
    for outcome in outcomes:
        row = new_row(outcome.format.name, outcome.path, macs)
        rows.append(row)
        if not outcome.ok:
            row["status"] = f"export failed: {outcome.error}"
            continue
        row["size_mb"] = outcome.size_mb
        if outcome.path.name in broken:
            row["status"] = f"failed: {formats.one_line(broken[outcome.path.name])}"
            continue
        result = checked[outcome.path.name]
        row.update(accuracy=result["artifact_accuracy"], agreement=result["agreement"])
        if not result["passed"]:
            row["status"] = "parity failed: " + "; ".join(result["failures"])
        try:
            measure_speed(row, outcome.path, threads, repeat)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            row["status"] = f"failed: {formats.one_line(error)}"
    return rows


def markdown(rows: list[dict], threads: list[int]) -> str:
    def number(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    several = len({row["run"] for row in rows}) > 1
    header = [*(["run"] if several else []), "format", "status", "size MB", "accuracy",
              "agreement", *(f"ms p50 ({n} thread{'s' if n > 1 else ''})" for n in threads),
              "images/s (best batch)", "cold start s", "peak RSS MB"]
    lines = []
    for row in rows:
        ips = "-" if row["images_per_second"] is None else \
            f"{row['images_per_second']:.0f} (b{row['best_batch']})"
        lines.append([*([row["run"]] if several else []), row["format"], row["status"],
                      number(row["size_mb"]), percent(row["accuracy"]),
                      percent(row["agreement"]),
                      *(number(row["ms_p50"].get(str(n))) for n in threads), ips,
                      number(row["cold_start_s"]), number(row["peak_rss_mb"], 0)])
    return markdown_table(header, lines, left=3 if several else 2)


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
    from edgeconv.train.plots import pyplot, save_figure

    shown = [r for r in rows if r["ms_p50"]]
    several = len({r["run"] for r in shown}) > 1
    names = [f"{r['run']}: {r['format']}" if several else r["format"] for r in shown]
    figure, (latency, size) = pyplot().subplots(1, 2, figsize=(11, 4))
    latency.barh(names, [r["ms_p50"][str(threads[-1])] for r in shown], color="tab:blue")
    latency.set_xlabel(f"ms per image, p50, {threads[-1]} threads")
    latency.invert_yaxis()
    size.barh(names, [r["size_mb"] for r in shown], color="tab:orange")
    size.set_xlabel("size MB")
    size.invert_yaxis()
    figure.tight_layout()
    save_figure(figure, path)


def test_split(source: Source, data: Path | None) -> Path:
    data = data or source.data_split("test")
    if data is None or not data.is_dir():
        raise ExportError(f"{data}: no test images; pass --data DIR")
    return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("benchmarks/formats.py"), description=__doc__.split(
        "\n\n")[0].strip(), epilog=f"Example: {command_name('python benchmarks/formats.py')} "
        "runs/augmented "
        "--report benchmark.md")
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="train/run.py run folders")
    parser.add_argument("--formats", default="all", help="comma-separated formats to "
                        "measure: keras, tflite, onnx, int8, or one format (tflite-int8, "
                        "onnx-float32, ...; default: all)")
    parser.add_argument("--data", type=Path, help="class folders to score on (default: the "
                        "run's test split)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}",
                        help="thread counts to time (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--report", type=Path, help="write the Markdown table here")
    parser.add_argument("--log", type=Path, help="append one JSON line of results to this file")
    args = parser.parse_args(argv)
    try:
        args.names = formats.select(args.formats, extra=(KERAS,))
        args.threads = sorted({int(n) for n in args.threads.split(",")})
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    try:
        for run_dir in args.run_dirs:
            source = Source(run_dir)
            data = test_split(source, args.data)
            rows += benchmark(source, data, args.threads, args.repeat, args.names)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown(rows, args.threads)
    summary = hardware_lines(rows)
    print(f"{table}\n\n{summary}")
    figure = (args.report or args.json or args.run_dirs[0] / "benchmark.json").with_suffix(".png")
    bar_chart(rows, args.threads, figure)
    runs = [str(run_dir) for run_dir in args.run_dirs]
    if args.report:
        with atomic_path(args.report) as tmp:
            tmp.write_text(f"# Benchmark: {', '.join(runs)}\n\nImages under `{data}`; "
                           f"{os.cpu_count()} cores.\n\n{table}\n\n"
                           f"{summary}\n\n![latency and size]({figure.name})\n")
    if args.json:
        write_json(args.json, {"runs": runs, "data": str(data), "rows": rows,
                               "threads": args.threads})
    if args.log:
        with open(args.log, "a") as log:
            log.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(
                timespec="seconds"), "runs": runs, "rows": [
                    {k: r[k] for k in ("run", "format", "status", "ms_p50", "images_per_second")}
                    for r in rows]}) + "\n")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
