"""Frames labelled on a device (the tar of serve's /api/field.tar), added to a training run.

`train/run.py --add FIELD.tar...` unpacks each tar's frames into RUN_DIR/field/ by their
SHA-256 (the same frame from two tars, or twice, counts once), checks each against its
manifest, and splits them: a quarter of each class (chosen by digest, so the same frames
always split the same way) goes to RUN_DIR/field/heldout/<class>/, never trained on, and the
rest to RUN_DIR/field/train/<class>/, added to the training split. Validation and test stay
the original photos. Frames labelled "none" are kept out: the classes learn nothing from them
(train/confidence.py teaches the none head from negatives).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from edgeconv.common.files import atomic_path, write_json
from edgeconv.runtime.preprocess import IMAGE_EXTENSIONS
from edgeconv.train.dataset import DataError, Dataset

FIELD_DIR = "field"
MANIFEST = "manifest.json"  # as runtime/capture.py writes it
HELD_OUT_EVERY = 4  # one frame in four (by digest) is held out to compare the models on
NONE = "none"


@dataclass(frozen=True)
class Field:
    """What --add brought: frames per class in train and heldout, and the none frames."""

    folder: Path
    train: dict[str, list[Path]]
    heldout: dict[str, list[Path]]
    none: int
    sources: list[str]

    def summary(self) -> dict:
        return {"sources": self.sources, "none_frames_not_used": self.none,
                "train": {name: len(paths) for name, paths in self.train.items()},
                "heldout": {name: len(paths) for name, paths in self.heldout.items()},
                "heldout_folder": str(self.folder / "heldout")}


def read_frames(source: Path) -> list[tuple[dict, bytes]]:
    """(manifest entry, JPEG bytes) of every frame in a field tar (or an unpacked one)."""
    if not source.exists():
        raise DataError(f"--add {source}: not found")
    try:
        if source.is_dir():
            manifest = json.loads((source / MANIFEST).read_text())
            return [(entry, (source / PurePosixPath(entry["file"])).read_bytes())
                    for entry in manifest["frames"] if safe(entry["file"])]
        with tarfile.open(source) as tar:
            manifest = json.loads(tar.extractfile(MANIFEST).read())
            frames = []
            for entry in manifest["frames"]:
                member = tar.getmember(entry["file"]) if safe(entry["file"]) else None
                if member is None or not member.isfile():
                    raise DataError(f"--add {source}: {entry['file']!r} is not a frame")
                frames.append((entry, tar.extractfile(member).read()))
            return frames
    except (OSError, KeyError, TypeError, ValueError, tarfile.TarError, AttributeError) as error:
        raise DataError(f"--add {source}: not a field tar of serve's /api/field.tar "
                        f"({type(error).__name__}: {error})") from None


def safe(name: str) -> bool:
    """A member name of LABEL/FILE.jpg, nothing above or beside it."""
    path = PurePosixPath(name)
    return (len(path.parts) == 2 and ".." not in path.parts and not path.is_absolute()
            and path.suffix.lower() in IMAGE_EXTENSIONS)


def add_field(dataset: Dataset, sources: list[Path], run_dir: Path) -> tuple[Dataset, Field]:
    """The dataset with the field frames of `sources` in its train split and a "field" split
    of the held-out ones (scored on its own, never trained on)."""
    frames: dict[str, tuple[dict, bytes]] = {}
    for source in sources:
        for entry, data in read_frames(source):
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry.get("sha256"):
                raise DataError(f"--add {source}: {entry['file']} differs from its manifest's "
                                "SHA-256 (a damaged tar?)")
            label = entry.get("label")
            if label != NONE and label not in dataset.classes:
                raise DataError(f"--add {source}: {entry['file']} is labelled {label!r}, not "
                                f"one of this dataset's classes {', '.join(dataset.classes)}")
            frames.setdefault(digest, (entry, data))
    folder = run_dir / FIELD_DIR
    chosen: dict[str, dict[str, list[Path]]] = {"train": {}, "heldout": {}}
    for name in dataset.classes:
        digests = sorted(d for d, (entry, _) in frames.items() if entry["label"] == name)
        for index, digest in enumerate(digests):
            part = "heldout" if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"
            path = folder / part / name / f"{digest[:16]}.jpg"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    tmp.write_bytes(frames[digest][1])
            chosen[part].setdefault(name, []).append(path)
    none = sum(entry["label"] == NONE for entry, _ in frames.values())
    if not chosen["train"]:
        raise DataError(f"--add: no frame labelled with a class in {', '.join(map(str, sources))}"
                        f" ({none} labelled none)")
    field = Field(folder, chosen["train"], chosen["heldout"], none, [str(s) for s in sources])
    write_json(folder / MANIFEST, {**field.summary(), "frames": [
        {**entry, "sha256": digest} for digest, (entry, _) in sorted(frames.items())]})
    index = {name: i for i, name in enumerate(dataset.classes)}
    splits = dict(dataset.splits)
    splits["train"] = splits["train"] + [(path, index[name]) for name, paths in
                                         field.train.items() for path in paths]
    if field.heldout:
        splits["field"] = [(path, index[name]) for name, paths in field.heldout.items()
                           for path in paths]
    return replace(dataset, splits=splits), field
