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

from edgeconv.common.files import atomic_path
from edgeconv.export.artifacts import ONNX_QUANTIZATIONS, file_name
from edgeconv.export.budget import Calibrations, Judge, Outcome, Recipe, search
from edgeconv.export.cli import exporter_parser, output_path, run_exporter
from edgeconv.export.golden import golden_entry, golden_photos
from edgeconv.export.metadata import build_metadata
from edgeconv.export.onnx_uint8 import to_uint8
from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.metadata import METADATA_KEY
from edgeconv.runtime.quiet import native_stderr_silenced

QUANTIZATIONS = ONNX_QUANTIZATIONS


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


def prepare(float_path: Path, path: Path) -> Path:
    """ONNX Runtime's pre-processing for quantization (shape inference, graph clean-up); its
    node names are the ones the per-layer report and the recipe's float layers use."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with native_stderr_silenced(python_stdout=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(float_path), str(path), skip_symbolic_shape=True)
    return path


def quantize_int8(prepared: Path, path: Path, images, recipe: Recipe | None = None) -> None:
    """Static QDQ quantization of a `prepare`d float model, calibrated on `images` with the
    recipe's method, stored as uint8 (export/onnx_uint8.py); the recipe's float layers are
    node names of the prepared model."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    recipe = recipe or Recipe()
    input_name = onnx.load(str(prepared)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: image[None].astype("float32")} for image in images])

        def get_next(self):
            return next(self.batches, None)

    with native_stderr_silenced(python_stdout=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=True,
                            calibrate_method=getattr(CalibrationMethod,
                                                     CALIBRATION_METHODS[recipe.method]),
                            nodes_to_exclude=list(recipe.float_layers))
    model = onnx.load(str(path))
    to_uint8(model)
    onnx.save(model, str(path))


# ONNX Runtime's calibration methods, in the order the budget search tries them.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def within_budget(source: Source, prepared: Path, calibrations: Calibrations, budget: float,
                  budget_data: Path | None) -> Outcome:
    """The budget search (export/budget.py) over ONNX Runtime's remedies."""
    from edgeconv.export.layers import onnx_layers

    judge = Judge.for_source(source, budget_data)
    work = prepared.parent

    def build(recipe: Recipe) -> bytes:
        quantize_int8(prepared, work / "try.onnx", calibrations.images(recipe), recipe)
        return (work / "try.onnx").read_bytes()

    def rank(recipe: Recipe) -> list[str]:
        quantize_int8(prepared, work / "rank.onnx", calibrations.images(recipe), recipe)
        return [row["layer"] for row in onnx_layers(prepared, work / "rank.onnx",
                                                    judge.images[::20])]

    return search(build, rank, judge, budget, ".onnx", calibrations,
                  methods=tuple(CALIBRATION_METHODS))


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
           opset: int | None = None, budget: float | None = None,
           budget_data: Path | None = None, method: str = "minmax") -> Path:
    """Convert, quantize if asked ("int8"), embed metadata and write atomically."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"ONNX quantization {quantize!r}: choose {' or '.join(QUANTIZATIONS)}")
    path = output_path(out, source, file_name("onnx", quantize))
    described = recipe_metadata = None
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as work:
        float_path = Path(work) / "float.onnx"
        float_onnx(source, float_path, opset)
        result = float_path
        if quantize == "int8":
            result = Path(work) / "int8.onnx"
            prepared = prepare(float_path, Path(work) / "prepared.onnx")
            calibrations = Calibrations(source, calibration, calibration_size, method)
            recipe = calibrations.first()
            if budget is None:
                quantize_int8(prepared, result, calibrations.images(recipe), recipe)
                recipe_metadata = recipe.as_metadata()
            else:
                outcome = within_budget(source, prepared, calibrations, budget, budget_data)
                result.write_bytes(outcome.content)
                recipe, recipe_metadata = outcome.recipe, outcome.metadata(budget)
            images, described = calibrations.load(recipe)
        else:
            images = golden_photos(source, calibration)
        golden = None if images is None else golden_entry(result.read_bytes(), ".onnx", "onnx",
                                                           quantize, images)
        metadata = build_metadata(source, fmt="onnx", quantization=quantize,
                                  input_dtype="float32", input_quantization=None,
                                  calibration=described,
                                  recipe=recipe_metadata, golden=golden)
        embed_metadata(result, metadata)
        with atomic_path(path) as tmp:
            tmp.write_bytes(result.read_bytes())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = exporter_parser(
        "export/to_onnx.py", __doc__, "python export/to_onnx.py runs/augmented --quantize int8",
        "beside the model, model_float32.onnx or model_int8.onnx", QUANTIZATIONS,
        "float32 (default) or static int8 quantization (QDQ)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the converter's)")
    parser.add_argument("--calibration-method", choices=tuple(CALIBRATION_METHODS),
                        default="minmax", help="int8: how activation ranges are chosen from "
                        "the calibration images (default: %(default)s; percentile clips "
                        "outliers)")
    args = parser.parse_args(argv)
    return run_exporter(args, export, args.quantize, opset=args.opset,
                        method=args.calibration_method)


if __name__ == "__main__":
    sys.exit(main())
