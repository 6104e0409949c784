"""What makes an artifact self-describing: the edgeconv metadata stored inside the file."""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from importlib import metadata as package_metadata

from edgeconv.export.source import Source
from edgeconv.runtime.confidence import class_columns
from edgeconv.runtime.metadata import METADATA_FORMAT
from edgeconv.runtime.preprocess import PREPROCESSING


def build_metadata(source: Source, *, fmt: str, quantization: str, input_dtype: str,
                   input_quantization: list | None, calibration: dict | None,
                   recipe: dict | None = None, golden: dict | None = None) -> dict:
    """The metadata stored in an export; `recipe` says how an int8 file was quantized,
    `golden` holds the inputs and outputs a device checks (runtime/golden.py)."""
    binary = len(source.labels) == 2
    output = {"activation": "sigmoid" if binary else "softmax",
              "threshold": 0.5 if binary else None}
    confidence = source.confidence
    if confidence:  # runtime/confidence.py reads these two; paths stay on this machine
        confidence = {key: value for key, value in confidence.items() if key != "from_run"}
        confidence["none"] = {key: value for key, value in confidence["none"].items()
                              if key != "negatives_path"}
        output["temperature"] = confidence["temperature"]
        output["none"] = {"column": class_columns(len(source.labels)),
                          "threshold": confidence["none"]["threshold"]}
    return {
        "format": METADATA_FORMAT,
        "model_format": fmt,
        "quantization": quantization,
        "labels": source.labels,
        "input": {"shape": [1, *source.input_size, 3], "dtype": input_dtype,
                  "quantization": input_quantization, "layout": "NHWC"},
        "preprocessing": PREPROCESSING,
        "output": output,
        "confidence": confidence,
        "source_model": {"file": source.path.name, "sha256": source.sha256,
                         "recipe": source.run.get("recipe")},
        "calibration": calibration,
        "int8_recipe": recipe,
        "golden": golden,
        "tools": tool_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def tool_versions() -> dict:
    versions = {}
    for name in ("edgeconv", "keras", "tensorflow", "tensorflow-cpu", "tf2onnx", "onnx",
                 "onnxruntime"):
        with contextlib.suppress(package_metadata.PackageNotFoundError):
            versions[name] = package_metadata.version(name)
    return versions
