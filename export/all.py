#!/usr/bin/env python
"""Export a run to every format (or the ones named) it does not have yet; one line each.

  python export/all.py RUN_DIR [--formats "TFLite int8,ONNX int8"] [--force]

Formats: TFLite float32, float16, dynamic, int8; ONNX float32, int8 (files model_*.tflite and
model_*.onnx beside the model). A format that fails is reported and the others still run.
Exit 0 when every format is there, 1 when one failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeconv.export import formats
from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.text import command_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("export/all.py"), description=__doc__.split(
        "\n\n")[0].strip(), epilog=f"Example: {command_name('python export/all.py')} "
        "runs/augmented")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a train/run.py run folder (or its model.keras)")
    parser.add_argument("--formats", default="all", help="comma-separated: tflite, onnx, int8, or "
                        "one format (tflite-int8, onnx-float32, ...; default: all)")
    parser.add_argument("--force", action="store_true", help="export again what exists")
    args = parser.parse_args(argv)
    try:
        names = formats.select(args.formats)
    except ValueError as error:
        parser.error(str(error))
    try:
        outcomes = formats.export_missing(Source(args.run_dir), names, force=args.force)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        done = (f"{outcome.size_mb:.2f} MB" if outcome.ok else f"failed: {outcome.error}")
        took = f", {outcome.seconds:.1f} s" if outcome.status != "exists" else ""
        print(f"{outcome.format.name:<16} {outcome.status:<8} {outcome.path} ({done}{took})")
    return 0 if all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
