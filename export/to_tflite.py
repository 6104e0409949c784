#!/usr/bin/env python
"""Convert a trained Keras model to TFLite, with its metadata inside the file.

  python export/to_tflite.py MODEL_OR_RUN_DIR --quantize {float32,float16,dynamic,int8}

int8 is full-integer quantization (integer-only builtin ops), calibrated on real images
preprocessed exactly as in training: by default up to 300 from the run's training split.
With uint8 input (the default for int8) the model takes the raw 0..255 pixels unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from edgeconv.common.files import atomic_path
from edgeconv.export.artifacts import TFLITE_QUANTIZATIONS, file_name
from edgeconv.export.budget import Calibrations, Judge, Outcome, Recipe, search
from edgeconv.export.cli import exporter_parser, output_path, run_exporter
from edgeconv.export.golden import golden_entry, golden_photos
from edgeconv.export.metadata import build_metadata
from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.metadata import METADATA_KEY
from edgeconv.runtime.quiet import native_stderr_silenced

QUANTIZATIONS = TFLITE_QUANTIZATIONS


def int8_converter(source: Source, images, io_type: str, float_allowed: bool = False):
    """A TFLiteConverter set up for full-int8 conversion calibrated on `images` (uint8
    [N, h, w, 3]); `float_allowed` lets denylisted layers stay in float."""
    import numpy as np

    model = source.convertible_model  # imports Keras, and TensorFlow with it, quietly
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]

    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if float_allowed:
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
    if io_type != "float32":
        converter.inference_input_type = getattr(tf, io_type)
        converter.inference_output_type = getattr(tf, io_type)
    return converter


def int8_flatbuffer(source: Source, images, io_type: str, recipe: Recipe) -> bytes:
    """Full-int8 flatbuffer calibrated on `images`; the recipe's float layers (output tensor
    names, as the per-layer report names them) stay in float, the model's input and output
    still `io_type`."""
    converter = int8_converter(source, images, io_type, float_allowed=bool(recipe.float_layers))
    if not recipe.float_layers:
        return quietly(converter.convert)
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    converter._experimental_calibrate_only = True  # noqa: SLF001  the debugger's own route
    calibrated = quietly(converter.convert)
    return quietly(lambda: tflite_convert.mlir_quantize(
        calibrated, fully_quantize=True, input_data_type=getattr(tf, io_type),
        output_data_type=getattr(tf, io_type), denylisted_nodes=list(recipe.float_layers)))


def quietly(conversion: Callable[[], bytes]) -> bytes:
    """Run a conversion without its progress chatter; its errors as one ExportError line."""
    try:
        with native_stderr_silenced(python_stdout=True):
            return conversion()
    except Exception as error:  # the converter raises assorted internal errors
        raise ExportError(f"TFLite conversion failed: {str(error).splitlines()[0]}") from None


def convert(source: Source, quantize: str, io_type: str, calibration: Path | None = None,
            calibration_size: int = 300, budget: float | None = None,
            budget_data: Path | None = None) -> tuple[bytes, dict]:
    """Return (flatbuffer bytes with metadata, metadata). With a `budget` (int8 only), the
    cheapest recipe whose labels agree with Keras on that share of `budget_data` (default:
    the run's validation split)."""
    import numpy as np

    model = source.convertible_model  # imports Keras, and TensorFlow with it, quietly
    import tensorflow as tf

    described = recipe_metadata = None
    if quantize == "int8":
        calibrations = Calibrations(source, calibration, calibration_size)
        recipe = calibrations.first()
        if budget is None:
            flatbuffer = int8_flatbuffer(source, calibrations.images(recipe), io_type, recipe)
            recipe_metadata = recipe.as_metadata()
        else:
            outcome = within_budget(source, calibrations, io_type, budget, budget_data)
            flatbuffer, recipe = outcome.content, outcome.recipe
            recipe_metadata = outcome.metadata(budget)
        images, described = calibrations.load(recipe)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize in ("float16", "dynamic"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        flatbuffer = quietly(converter.convert)
        images = golden_photos(source, calibration)
    golden = None if images is None else golden_entry(flatbuffer, ".tflite", "tflite",
                                                       quantize, images)
    input_detail = _input_detail(flatbuffer)
    quantization = input_detail["quantization"]
    metadata = build_metadata(
        source, fmt="tflite", quantization=quantize,
        input_dtype=np.dtype(input_detail["dtype"]).name,
        input_quantization=list(map(float, quantization)) if quantization[0] else None,
        calibration=described, recipe=recipe_metadata, golden=golden)
    return add_metadata(flatbuffer, json.dumps(metadata).encode()), metadata


def within_budget(source: Source, calibrations: Calibrations, io_type: str, budget: float,
                  budget_data: Path | None) -> Outcome:
    """The budget search (export/budget.py) over TFLite's remedies."""
    from edgeconv.export.layers import tflite_layers

    judge = Judge.for_source(source, budget_data)

    def build(recipe: Recipe) -> bytes:
        return int8_flatbuffer(source, calibrations.images(recipe), io_type, recipe)

    def rank(recipe: Recipe) -> list[str]:
        converter = int8_converter(source, calibrations.images(recipe), io_type)
        with native_stderr_silenced(python_stdout=True):
            rows = tflite_layers(converter, judge.images[::20])
        return [row["layer"] for row in rows]

    return search(build, rank, judge, budget, ".tflite", calibrations)


def add_metadata(flatbuffer: bytes, payload: bytes) -> bytes:
    """Append a Model.metadata entry named "edgeconv" holding `payload`."""
    import flatbuffers
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_KEY.encode()]
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _input_detail(flatbuffer: bytes) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flatbuffer).get_input_details()[0]


def export(source: Source, quantize: str = "float32", out: Path | None = None, *,
           calibration: Path | None = None, calibration_size: int = 300,
           io_type: str = "uint8", budget: float | None = None,
           budget_data: Path | None = None) -> Path:
    """Convert and write atomically (default: model_<quantize>.tflite beside the model)."""
    path = output_path(out, source, file_name("tflite", quantize))
    flatbuffer, _ = convert(source, quantize, io_type, calibration, calibration_size, budget,
                            budget_data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(flatbuffer)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = exporter_parser(
        "export/to_tflite.py", __doc__, "python export/to_tflite.py runs/augmented --quantize int8",
        "beside the model, model_<quantize>.tflite", QUANTIZATIONS, "float32 (default), float16 "
        "weights, dynamic-range int8 weights, or full int8 calibrated on real images")
    parser.add_argument("--io", choices=("uint8", "int8", "float32"), default="uint8",
                        help="int8 model input/output type (default: uint8, raw pixels)")
    args = parser.parse_args(argv)
    return run_exporter(args, export, args.quantize, io_type=args.io)


if __name__ == "__main__":
    sys.exit(main())
