"""The golden entry an export stores in its metadata (runtime/golden.py reads and checks it).

The tolerances are per engine family, from what was measured across devices: LiteRT's int8
(XNNPACK) gives identical outputs on x86 and 64-bit Arm, tflite-runtime's 32-bit Arm int8
kernels round differently (up to 23 output steps on the shipped models), ONNX Runtime's int8
graph runs the sigmoid in float between int8 tensors (one logit step through it plus one
output step), and float kernels differ in the last bits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeconv.export.source import ExportError, Source, calibration_set
from edgeconv.runtime.engines import open_engine
from edgeconv.runtime.golden import THUMBNAIL, encode, enlarge

INPUTS = 4
INT8_STEP = 1 / 256
TOLERANCES = {
    ("tflite", "int8"): {"litert": 2 * INT8_STEP, "tflite-runtime": 32 * INT8_STEP},
    ("onnx", "int8"): {"onnxruntime": 0.02},
    "float16": {"default": 1e-3},
    "dynamic": {"default": 0.02},
    "float32": {"default": 1e-4},
}


def thumbnails(images: np.ndarray, count: int = INPUTS) -> np.ndarray:
    """`count` evenly spaced images of a preprocessed set, as 32x32 thumbnails."""
    from PIL import Image

    chosen = images[np.linspace(0, len(images) - 1, min(count, len(images))).astype(int)]
    return np.stack([np.asarray(Image.fromarray(image).resize((THUMBNAIL, THUMBNAIL),
                                                              Image.BILINEAR))
                     for image in chosen])


def golden_entry(model: bytes, suffix: str, fmt: str, quantization: str,
                 images: np.ndarray) -> dict:
    """Run the golden inputs through the exported model (`model`, its bytes, before metadata
    is added) with the engine a device uses, and describe them for the metadata."""
    small = thumbnails(images)
    size = images.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="edgeconv-golden-") as work:
        path = Path(work) / f"model{suffix}"
        path.write_bytes(model)
        engine = open_engine(path, "onnxruntime" if fmt == "onnx" else "litert", threads=1)
        inputs = enlarge(small, size)
        outputs = np.concatenate([engine.run(inputs[i:i + 1]) for i in range(len(inputs))])
    tolerance = TOLERANCES.get((fmt, quantization)) or TOLERANCES[quantization]
    return {"thumbnail": THUMBNAIL, "inputs": encode(small),
            "outputs": [[float(v) for v in row] for row in outputs],
            "tolerance": tolerance, "engine": engine.name}


def golden_photos(source: Source, folder: Path | None) -> np.ndarray | None:
    """A few preprocessed photos for the golden inputs (the calibration folder, else the run's
    training split); None when there is none to take them from."""
    try:
        images, _ = calibration_set(source, folder, INPUTS)
    except ExportError:
        return None
    return images
