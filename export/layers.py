#!/usr/bin/env python
"""Which layer loses the accuracy: each layer's int8 error against the float model, worst first.

  python export/layers.py MODEL_OR_RUN_DIR --format tflite|onnx [--data DIR] [--images N]
                          [--report F.md] [--json F.json]

Both formats are measured by their library's own debugger on the same photos: TensorFlow's
QuantizationDebugger (TFLite) and ONNX Runtime's qdq_loss_debug (ONNX). The error is the
signal-to-quantization-noise ratio of each layer's output, in dB (higher is better; every
6 dB is about one bit), averaged over the photos. A layer whose SQNR sits far below the
others is the one to keep in float (export/to_tflite.py --budget does that by itself).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeconv.common.files import atomic_path, write_json
from edgeconv.export.source import ExportError, Source, calibration_set
from edgeconv.runtime.tables import markdown_table
from edgeconv.runtime.text import command_name

FORMATS = ("tflite", "onnx")


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """10 log10(signal power / noise power); inf when they are equal."""
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference - approximation, dtype=np.float64)))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(max(signal, 1e-30) / noise)


def tflite_layers(converter, images: np.ndarray, denylisted: tuple[str, ...] = ()) -> list[dict]:
    """Per-layer SQNR of a full-int8 TFLite conversion (a configured converter)."""
    import tensorflow as tf

    def compare(float_tensor, quantized, scale, zero_point):
        return sqnr_db(float_tensor, (quantized.astype(np.float64) - zero_point) * scale)

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"sqnr_db": compare},
        denylisted_nodes=list(denylisted) or None)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: feed(images), debug_options=options)
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)  # names each layer as denylisted_nodes takes it
    rows = [{"layer": row["tensor_name"], "op": row["op_name"], "sqnr_db": float(row["sqnr_db"])}
            for row in csv.DictReader(io.StringIO(dump.getvalue()))]
    return sorted(rows, key=lambda row: row["sqnr_db"])


def feed(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for image in images:
        yield [image[np.newaxis].astype(np.float32)]


def onnx_layers(float_path: Path, quantized_path: Path, images: np.ndarray) -> list[dict]:
    """Per-layer SQNR of a QDQ ONNX model against the (prepared) float model it was quantized
    from; `layer` is the float model's node that writes the tensor (what nodes_to_exclude
    takes)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import qdq_loss_debug as debug

    input_name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = ({input_name: image[None].astype(np.float32)} for image in images)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="edgeconv-layers-") as work:
        float_all, quantized_all = Path(work) / "float.onnx", Path(work) / "int8.onnx"
        debug.modify_model_output_intermediate_tensors(str(float_path), str(float_all))
        debug.modify_model_output_intermediate_tensors(str(quantized_path), str(quantized_all))
        matching = debug.create_activation_matching(
            debug.collect_activations(str(quantized_all), Reader()),
            debug.collect_activations(str(float_all), Reader()))
    nodes = {output: node for node in onnx.load(str(float_path)).graph.node
             for output in node.output}
    rows = []
    for tensor, found in matching.items():
        node = nodes.get(tensor)
        if node is None or "float" not in found:
            continue
        values = [sqnr_db(np.asarray(f), np.asarray(q))
                  for f, q in zip(found["float"], found["post_qdq"])]
        if not np.isfinite(values).any():
            continue  # an exact copy: a tensor ONNX Runtime left unquantized
        rows.append({"layer": node.name, "op": node.op_type, "sqnr_db": float(np.mean(values))})
    return sorted(rows, key=lambda row: row["sqnr_db"])


def report(source: Source, fmt: str, images: np.ndarray, calibration: np.ndarray) -> list[dict]:
    """Per-layer rows, worst first, for a plain full-int8 export in `fmt`."""
    if fmt == "tflite":
        from edgeconv.export import to_tflite

        return tflite_layers(to_tflite.int8_converter(source, calibration, "uint8"), images)
    from edgeconv.export import to_onnx

    with tempfile.TemporaryDirectory(prefix="edgeconv-layers-") as work:
        float_path, quantized = Path(work) / "float.onnx", Path(work) / "int8.onnx"
        to_onnx.float_onnx(source, float_path, None)
        prepared = to_onnx.prepare(float_path, Path(work) / "prepared.onnx")
        to_onnx.quantize_int8(prepared, quantized, calibration)
        return onnx_layers(prepared, quantized, images)


def plot(rows: list[dict], path: Path, title: str, worst: int = 15) -> None:
    from edgeconv.train.plots import pyplot, save_figure

    shown = [row for row in rows if np.isfinite(row["sqnr_db"])][:worst][::-1]
    figure, axes = pyplot().subplots(figsize=(9, 0.3 * len(shown) + 1.2))
    axes.barh([f"{row['op']} {short(row['layer'], 36)}" for row in shown],
              [row["sqnr_db"] for row in shown], color="tab:red")
    axes.set_xlabel("SQNR, dB (higher is better)")
    axes.set_title(title, fontsize=9)
    axes.tick_params(axis="y", labelsize=7)
    figure.subplots_adjust(left=0.42, right=0.97, top=0.93, bottom=0.12)  # room for the names
    save_figure(figure, path)


def short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("export/layers.py"), description=__doc__.split("\n\n")[0].strip(),
        epilog=f"Example: {command_name('python export/layers.py')} "
        "models/plus.keras --format onnx "
               "--data ../shared/datasets/cats_and_dogs_small/validation --report layers.md")
    parser.add_argument("model", type=Path, help="model.keras or a train/run.py run folder")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="which int8 export to examine")
    parser.add_argument("--data", type=Path, help="photos the errors are measured on "
                        "(default: the run's validation split)")
    parser.add_argument("--calibration", type=Path, help="calibration images (default: the "
                        "run's training split)")
    parser.add_argument("--images", type=int, default=50,
                        help="photos to measure on (default: %(default)s)")
    parser.add_argument("--report", type=Path, help="write a Markdown table; the plot goes "
                        "beside it")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    try:
        source = Source(args.model)
        data = args.data or source.data_split("validation")
        if data is None:
            raise ExportError("the run records no validation split; pass --data DIR")
        images, _ = calibration_set(source, data, args.images)
        calibration, _ = calibration_set(source, args.calibration, 300)
        rows = report(source, args.format, images, calibration)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown_table(["rank", "layer", "op", "SQNR dB"],
                           [[rank, f"`{short(row['layer'])}`", row["op"],
                             f"{row['sqnr_db']:.1f}"] for rank, row in enumerate(rows, 1)],
                           left=3)
    print(table)
    if args.json:
        write_json(args.json, {"model": str(args.model), "format": args.format,
                               "photos": len(images), "layers": rows})
    if args.report:
        name = args.report.with_suffix(".png")
        plot(rows, name, f"{args.model.name}, int8 {args.format}: worst layers, "
             f"{len(images)} photos")
        with atomic_path(args.report) as tmp:
            tmp.write_text(f"# Per-layer int8 error: {args.model.name}, {args.format}\n\n"
                           f"{len(images)} photos of `{data.name}`; worst first.\n\n"
                           f"{table}\n\n![worst layers]({name.name})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
