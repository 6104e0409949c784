"""The trained model an export starts from, and the images int8 calibration sees."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from edgeconv.runtime.preprocess import ImageError, list_images, load_image


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

    @functools.cached_property
    def model(self):
        from edgeconv.train.backend import import_keras

        keras = import_keras()  # first, so that TensorFlow starts quietly
        import edgeconv.train.augment  # noqa: F401  (registers the augmentation layer)

        try:
            return keras.saving.load_model(self.path)
        except Exception as error:  # Keras raises many types for a file it cannot read
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise ExportError(f"{self.path}: not a Keras model ({reason})") from None

    @functools.cached_property
    def convertible_model(self):
        """The model as converters get it: standalone BatchNorms as depthwise convolutions."""
        from edgeconv.export.batchnorm import as_depthwise

        return as_depthwise(self.model)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Keras outputs [N, k] for uint8 images, through the training pipeline's model."""
        return self.model.predict(images, verbose=0)

    @property
    def labels(self) -> list[str]:
        if self.run.get("classes"):
            return list(self.run["classes"])
        outputs = self.model.output_shape[-1]
        return [f"class_{i}" for i in range(max(outputs, 2))]

    @functools.cached_property
    def confidence(self) -> dict | None:
        """The run's confidence.json (train/confidence.py: temperature, none head, figures),
        or None for a run made without one."""
        path = self.run_dir / "confidence.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.model.input_shape[1:3])

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def data_split(self, split: str) -> Path | None:
        """The run's train / validation / test folder, when the run recorded its data."""
        data = self.run.get("data")
        return Path(data) / split if data and (Path(data) / split).is_dir() else None


def calibration_set(source: Source, folder: Path | None, count: int) -> tuple[np.ndarray, dict]:
    """Up to `count` images, evenly spread over the folder's sorted files, preprocessed like
    training. Default folder: the run's training split, and for a run with a none head a
    quarter of the images from the negatives that trained it (without them int8 would clip
    the head's activations to the ranges pets give, and P(none) could never reach 0.5), and
    for a run with field frames (train --add) a quarter from those it trained on: a night
    camera's frames range unlike the photos, and int8 calibrated without them flips labels
    there."""
    training = source.data_split("train")
    folder = folder or training
    default = bool(folder and training and folder.resolve() == training.resolve())
    negatives = none_fit_files(source) + field_files(source) if default else []
    if folder is None:
        raise ExportError("no calibration images: pass --calibration DIR (the run does not "
                          "record its training data)")
    if not folder.is_dir():
        raise ExportError(f"{folder}: calibration folder not found")
    files = list_images(folder)
    if not files:
        raise ExportError(f"{folder}: no images for calibration")
    chosen = evenly(files, count - len(evenly(negatives, count // 4)))
    chosen += evenly(negatives, count // 4)
    images, skipped = [], 0
    for path in dict.fromkeys(chosen):
        try:
            images.append(load_image(path, source.input_size))
        except ImageError as error:
            skipped += 1
            print(f"calibration: skipped {error}", file=sys.stderr)
    if not images:
        raise ExportError(f"{folder}: none of its images could be read for calibration")
    # Named, counted and digested, never by its absolute path: the metadata travels with the
    # model to devices and their /api/info, and the path would tell the training machine's.
    name = "/".join(folder.resolve().parts[-2:])
    if negatives:
        kinds = " and ".join(kind for kind, files in (("fit negatives", none_fit_files(source)),
                                                     ("field frames", field_files(source)))
                             if files)
        name += f" + {min(len(negatives), count // 4)} {kinds}"
    description = {"name": name, "images": len(images),
                   "skipped": skipped, "sha256": files_digest(list(dict.fromkeys(chosen))),
                   "selection": f"evenly spaced over {len(files)} sorted files"}
    return np.stack(images), description


def evenly(files: list[Path], count: int) -> list[Path]:
    """`count` of the files (all when fewer), evenly spaced over them."""
    if not files or count <= 0:
        return []
    return [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)]


def none_fit_files(source: Source) -> list[Path]:
    """The negative photos that trained the run's none head (none without one)."""
    none = (source.confidence or {}).get("none")
    if not none:
        return []
    folder = Path(none["negatives_path"])
    missing = [name for name in none["fit_folders"] if not (folder / name).is_dir()]
    if missing:
        raise ExportError(f"{folder}: the none head's negatives ({', '.join(missing)}) are not "
                          "there; int8 calibration needs them (or pass --calibration DIR)")
    return [path for name in none["fit_folders"] for path in list_images(folder / name)]


def field_files(source: Source) -> list[Path]:
    """The field frames the run trained on (train --add: RUN_DIR/field/train/CLASS/)."""
    folder = source.run_dir / "field" / "train"
    return list_images(folder) if source.run.get("field") and folder.is_dir() else []


def files_digest(files: list[Path]) -> str:
    """SHA-256 over the files' SHA-256 digests, in order: the same set of bytes on any machine
    gives the same digest, wherever the folder is."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
