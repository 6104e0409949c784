"""What every exporter shares: the source model, calibration images, metadata, writing."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np

from runtime.metadata import METADATA_FORMAT
from runtime.preprocess import PREPROCESSING, ImageError, is_image_file, load_image


class ExportError(Exception):
    """A problem with the user's input or output, reported as one line."""


class Source:
    """A trained model: `model.keras` and, when it came from train/run.py, its run folder."""

    def __init__(self, model_or_run_dir: str | os.PathLike):
        given = Path(model_or_run_dir)
        self.path = given / "model.keras" if given.is_dir() else given
        if not self.path.exists():
            raise ExportError(f"{self.path}: not found; pass a model.keras or a run folder")
        self.run_dir = self.path.parent
        run_file = self.run_dir / "run.json"
        self.run = json.loads(run_file.read_text()) if run_file.exists() else {}
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from train.backend import import_keras

            keras = import_keras()  # first, so that TensorFlow starts quietly
            import train.augment  # noqa: F401  (registers the augmentation layer)

            try:
                self._model = keras.saving.load_model(self.path)
            except Exception as error:  # Keras raises many types for a file it cannot read
                reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
                raise ExportError(f"{self.path}: not a Keras model ({reason})") from None
        return self._model

    @functools.cached_property
    def convertible_model(self):
        """The model as converters get it: standalone BatchNorms as depthwise convolutions."""
        from export.batchnorm import as_depthwise

        return as_depthwise(self.model)

    @property
    def labels(self) -> list[str]:
        if self.run.get("classes"):
            return list(self.run["classes"])
        outputs = self.model.output_shape[-1]
        return [f"class_{i}" for i in range(max(outputs, 2))]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.model.input_shape[1:3])

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def default_output(self, suffix: str) -> Path:
        return self.run_dir / f"model_{suffix}"

    def training_images(self) -> Path | None:
        """The run's training split, when the run recorded where its data was."""
        data = self.run.get("data")
        return Path(data) / "train" if data and (Path(data) / "train").is_dir() else None


def calibration_set(source: Source, folder: Path | None, count: int) -> tuple[np.ndarray, dict]:
    """Up to `count` images, evenly spread over the folder's sorted files, preprocessed like
    training. Default folder: the run's training split."""
    folder = folder or source.training_images()
    if folder is None:
        raise ExportError("no calibration images: pass --calibration DIR (the run does not "
                          "record its training data)")
    if not folder.is_dir():
        raise ExportError(f"{folder}: calibration folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise ExportError(f"{folder}: no images for calibration")
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)]
    images, skipped = [], 0
    for path in dict.fromkeys(chosen):
        try:
            images.append(load_image(path, source.input_size))
        except ImageError as error:
            skipped += 1
            print(f"calibration: skipped {error}", file=sys.stderr)
    if not images:
        raise ExportError(f"{folder}: none of its images could be read for calibration")
    description = {"folder": str(folder), "images": len(images), "skipped": skipped,
                   "selection": f"evenly spaced over {len(files)} sorted files"}
    return np.stack(images), description


def build_metadata(source: Source, *, fmt: str, quantization: str, input_dtype: str,
                   input_quantization: list | None, calibration: dict | None) -> dict:
    """What makes an artifact self-describing (stored inside the model file)."""
    binary = len(source.labels) == 2
    return {
        "format": METADATA_FORMAT,
        "model_format": fmt,
        "quantization": quantization,
        "labels": source.labels,
        "input": {"shape": [1, *source.input_size, 3], "dtype": input_dtype,
                  "quantization": input_quantization, "layout": "NHWC"},
        "preprocessing": PREPROCESSING,
        "output": {"activation": "sigmoid" if binary else "softmax",
                   "threshold": 0.5 if binary else None},
        "source_model": {"file": source.path.name, "sha256": source.sha256(),
                         "recipe": source.run.get("recipe")},
        "calibration": calibration,
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


def add_source_arguments(parser) -> None:
    """The arguments every exporter takes: the model and its calibration images."""
    parser.add_argument("model", type=Path, help="model.keras or a train/run.py run folder")
    parser.add_argument("--calibration", type=Path, help="images for int8 calibration "
                        "(default: the run's training split)")
    parser.add_argument("--calibration-size", type=int, default=300,
                        help="calibration images to use (default: %(default)s)")


def output_path(out: Path | None, source: Source, suffix: str) -> Path:
    path = out or source.default_output(suffix)
    if not path.parent.is_dir():
        raise ExportError(f"{path.parent}: output folder does not exist")
    return path
