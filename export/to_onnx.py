#!/usr/bin/env python
"""Convert a trained Keras model to ONNX (dynamic batch), with its metadata inside the file.

  python export/to_onnx.py MODEL_OR_RUN_DIR [--quantize int8] [--calibration DIR] [--opset N]

--quantize int8 applies ONNX Runtime static quantization (QDQ, 8-bit weights and activations)
calibrated on the same images, preprocessed the same way, as the TFLite int8 export. The
8-bit tensors are stored as uint8 (export/onnx_uint8.py): ONNX Runtime then computes the same
scores on every CPU, x86 with AVX2 but no VNNI included, where int8 weights saturate.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain clone

from export.cli import exporter_parser, output_path, run_exporter  # noqa: E402
from export.metadata import build_metadata  # noqa: E402
from export.onnx_uint8 import to_uint8  # noqa: E402
from export.source import ExportError, Source, calibration_set  # noqa: E402
from runtime.files import atomic_path  # noqa: E402
from runtime.metadata import METADATA_KEY  # noqa: E402
from runtime.quiet import native_stderr_silenced  # noqa: E402

QUANTIZATIONS = ("float32", "int8")


def float_onnx(source: Source, path: Path, opset: int | None) -> None:
    """Keras's own exporter (tf2onnx's from_keras fails on Keras 3 models)."""
    import numpy as np

    model = source.convertible_model
    model(np.zeros((1, *source.input_size, 3), np.float32))  # "never called" otherwise
    try:
        with native_stderr_silenced(python_stdout=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation notices
            model.export(str(path), format="onnx", opset_version=opset, verbose=False)
    except Exception as error:  # the converter raises assorted internal errors
        raise ExportError(f"ONNX conversion failed: {str(error).splitlines()[0]}") from None


def quantize_int8(float_path: Path, path: Path, images) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: image[None].astype("float32")} for image in images])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_name(path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)
    model = onnx.load(str(path))
    to_uint8(model)
    onnx.save(model, str(path))


def embed_metadata(path: Path, metadata: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    model.producer_name = "edgeconv"
    onnx.save(model, str(path))


def export(source: Source, quantize: str = "float32", out: Path | None = None, *,
           calibration: Path | None = None, calibration_size: int = 300,
           opset: int | None = None) -> Path:
    """Convert, quantize if asked ("int8"), embed metadata and write atomically."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"ONNX quantization {quantize!r}: choose {' or '.join(QUANTIZATIONS)}")
    path = output_path(out, source, "model_int8.onnx" if quantize == "int8"
                       else "model_float.onnx")
    described = None
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as work:
        float_path = Path(work) / "float.onnx"
        float_onnx(source, float_path, opset)
        result = float_path
        if quantize == "int8":
            images, described = calibration_set(source, calibration, calibration_size)
            result = Path(work) / "int8.onnx"
            quantize_int8(float_path, result, images)
        metadata = build_metadata(source, fmt="onnx", quantization=quantize,
                                  input_dtype="float32", input_quantization=None,
                                  calibration=described)
        embed_metadata(result, metadata)
        with atomic_path(path) as tmp:
            tmp.write_bytes(result.read_bytes())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = exporter_parser(
        "export/to_onnx.py", __doc__, "python export/to_onnx.py runs/augmented --quantize int8",
        "beside the model, model_float.onnx or model_int8.onnx", QUANTIZATIONS,
        "float32 (default) or static int8 quantization (QDQ)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the converter's)")
    args = parser.parse_args(argv)
    return run_exporter(args, export, args.quantize, opset=args.opset)


if __name__ == "__main__":
    sys.exit(main())
