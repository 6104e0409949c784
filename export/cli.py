"""What the exporters' command lines share: the arguments and the one-line error handling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.text import command_name


def exporter_parser(prog: str, doc: str, example: str, out_help: str,
                    quantizations: tuple[str, ...], quantize_help: str
                    ) -> argparse.ArgumentParser:
    """A parser with the arguments every exporter takes: model, --quantize, calibration
    images, --out."""
    typed = f"python {prog}"
    example = command_name(typed) + example.removeprefix(typed)
    parser = argparse.ArgumentParser(prog=command_name(prog),
                                     description=doc.split("\n\n")[0].strip(),
                                     epilog=f"Example: {example}")
    parser.add_argument("model", type=Path, help="model.keras or a train/run.py run folder")
    parser.add_argument("--quantize", choices=quantizations, default=quantizations[0],
                        help=quantize_help)
    parser.add_argument("--calibration", type=Path, help="images for int8 calibration "
                        "(default: the run's training split, plus a quarter from the negatives "
                        "that trained its none head, if it has one)")
    parser.add_argument("--calibration-size", type=int, default=300,
                        help="calibration images to use (default: %(default)s)")
    parser.add_argument("--budget", type=agreement_share, metavar="AGREEMENT",
                        help="int8 only: try remedies in order of cost (more calibration "
                        "images, other calibration methods, the worst layers in float) until "
                        "the labels agree with the Keras model on this share of the budget "
                        "photos, e.g. 0.995; each try is printed")
    parser.add_argument("--budget-data", type=Path, metavar="DIR", help="class folders the "
                        "budget is measured on (default: the run's validation split)")
    parser.add_argument("--out", type=Path, help=f"output file (default: {out_help})")
    return parser


def agreement_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a share between 0 and 1, e.g. 0.995")
    return value


def run_exporter(args: argparse.Namespace, export: Callable[..., Path], quantize: str,
                 **options) -> int:
    """Export as asked; print the file and its size, or one error line (exit 2)."""
    if args.budget is not None and quantize != "int8":
        print("error: --budget applies to --quantize int8 only", file=sys.stderr)
        return 2
    try:
        path = export(Source(args.model), quantize, args.out, calibration=args.calibration,
                      calibration_size=args.calibration_size, budget=args.budget,
                      budget_data=args.budget_data, **options)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{path} ({path.stat().st_size / 1e6:.2f} MB, {quantize})")
    return 0


def output_path(out: Path | None, source: Source, file_name: str) -> Path:
    """--out, else `file_name` beside the model; its folder must exist."""
    path = out or source.run_dir / file_name
    if not path.parent.is_dir():
        raise ExportError(f"{path.parent}: output folder does not exist")
    return path
