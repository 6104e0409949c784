"""Golden outputs: a model file carries a few small inputs and the outputs its export computed,
so a device can run them on its own engine and refuse a model it computes differently.

Each golden input is a 32x32 RGB thumbnail of a real photo, stored raw (base64) and enlarged
to the model's input size by integer nearest-neighbour indexing: no resampling library is
involved, so every device builds bit-identical inputs. The tolerance is recorded per engine
family by the export (int8 kernels round differently on 32-bit Arm, for example).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

THUMBNAIL = 32
MAX_INPUTS = 16


class GoldenError(ValueError):
    """The model's golden entry is malformed."""


@dataclass
class GoldenCheck:
    engine: str
    inputs: int
    largest: float  # largest |output - expected| over every input and class
    tolerance: float
    worst: int  # the input with the largest difference

    @property
    def passed(self) -> bool:
        return self.largest <= self.tolerance

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"golden self-test {verdict} on {self.engine}: {self.inputs} inputs, largest "
                f"difference {self.largest:.4f} (tolerance {self.tolerance:.4f})"
                + ("" if self.passed else f", at golden input {self.worst + 1}: this device "
                   "computes something other than the export did"))


def enlarge(thumbnails: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, t, t, 3] uint8 -> [N, h, w, 3] by nearest-neighbour indexing (exact everywhere)."""
    side = thumbnails.shape[1]
    rows = np.arange(size[0]) * side // size[0]
    cols = np.arange(size[1]) * side // size[1]
    return thumbnails[:, rows][:, :, cols]


def encode(thumbnails: np.ndarray) -> list[str]:
    return [base64.b64encode(np.ascontiguousarray(t, np.uint8).tobytes()).decode("ascii")
            for t in thumbnails]


def decode(entry: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """(thumbnails [N, t, t, 3], expected outputs [N, k], tolerances) from a golden entry."""
    try:
        side = int(entry["thumbnail"])
        raw = [base64.b64decode(text, validate=True) for text in entry["inputs"]]
        expected = np.asarray(entry["outputs"], dtype=np.float64)
        tolerances = {str(k): float(v) for k, v in dict(entry["tolerance"]).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise GoldenError(f"malformed golden entry ({type(error).__name__})") from None
    if not 0 < len(raw) <= MAX_INPUTS or side != THUMBNAIL or expected.ndim != 2 \
            or len(expected) != len(raw) or any(len(r) != side * side * 3 for r in raw):
        raise GoldenError("malformed golden entry (sizes do not match)")
    thumbnails = np.stack([np.frombuffer(r, np.uint8).reshape(side, side, 3) for r in raw])
    return thumbnails, expected, tolerances


def self_test(engine, metadata: dict) -> GoldenCheck | None:
    """Run the model's golden inputs on `engine` (None when the model carries none)."""
    entry = metadata.get("golden")
    if entry is None:
        return None
    thumbnails, expected, tolerances = decode(entry)
    height, width = metadata["input"]["shape"][1:3]
    images = enlarge(thumbnails, (height, width))
    outputs = np.concatenate([engine.run(images[i:i + 1]) for i in range(len(images))])
    if outputs.shape != expected.shape:
        return GoldenCheck(engine.name, len(images), float("inf"), 0.0, 0)
    tolerance = tolerances.get(engine.name, tolerances.get("default"))
    if tolerance is None:
        raise GoldenError(f"the golden entry records no tolerance for {engine.name}")
    differences = np.abs(outputs - expected).max(axis=1)
    return GoldenCheck(engine.name, len(images), float(differences.max()), tolerance,
                       int(differences.argmax()))
