"""Find a folder-of-classes dataset and decode it, once, into uint8 arrays.

Layout: DIR/{train,validation,test}/<class>/<images>. Classes are the folder names, sorted.
Decoded arrays are cached on disk (EDGECONV_CACHE, default ~/.cache/edgeconv), keyed by the
files' names, sizes and modification times, so repeated runs skip the JPEG decoding. A cache
is a .npy file, written photo by photo and read back as a memory map: a photo is in memory
only while a batch uses it, so memory stays flat however many photos there are. With the
cache off, photos are decoded into memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeconv.common.files import atomic_path
from edgeconv.runtime.preprocess import ImageError, list_images, load_image
from edgeconv.runtime.progress import progress

INPUT_SHAPE = (150, 150, 3)  # height, width, channels every recipe trains on
SPLITS = ("train", "validation", "test")
DEFAULT_DATA = Path("data/cats_and_dogs_small")
PREPARE_COMMAND = "python train/prepare_data.py --download --out data/cats_and_dogs_small"
_CACHE_VERSION = "3"  # bump when runtime.preprocess changes what load_image returns, or the format


class DataError(Exception):
    """A problem with the user's data, reported as one line."""


def resolve_data(data: Path | None) -> Path:
    """--data, else $EDGECONV_DATA, else data/cats_and_dogs_small when it exists."""
    if data is not None:
        return data
    if os.environ.get("EDGECONV_DATA"):
        return Path(os.environ["EDGECONV_DATA"])
    if not DEFAULT_DATA.is_dir():
        raise DataError(f"no dataset at {DEFAULT_DATA}; pass --data DIR, set EDGECONV_DATA, or "
                        f"download and prepare it with: {PREPARE_COMMAND}")
    return DEFAULT_DATA


@dataclass(frozen=True)
class Dataset:
    root: Path
    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]]  # split -> [(file, class index)]

    def counts(self, split: str) -> list[int]:
        labels = [label for _, label in self.splits[split]]
        return [labels.count(index) for index in range(len(self.classes))]


def data_digest(files: dict[str, str]) -> str:
    """A dataset's fingerprint: SHA-256 of its sorted "split/class/name sha256" lines, from
    {relative path: SHA-256 of the file}. train/prepare_data.py records it in prepare.json
    and manifest.csv lists its lines; a run records it for the photos it used."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def dataset_digest(dataset: Dataset) -> str:
    """data_digest of every photo the dataset's splits hold."""
    return data_digest({relative_name(path, dataset.root):
                        hashlib.sha256(path.read_bytes()).hexdigest()
                        for entries in dataset.splits.values() for path, _ in entries})


def relative_name(path: Path, root: Path) -> str:
    """"split/class/name" of a photo of the dataset; a field frame added from outside it
    (train.field, RUN_DIR/field/PART/CLASS/NAME) is "field/PART/CLASS/NAME"."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return "/".join(path.parts[-4:])


def natural_key(path: Path) -> list:
    """Sort photo.2.jpg before photo.10.jpg."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_dataset(
    root: str | os.PathLike, splits: tuple[str, ...] = SPLITS, limit: int | None = None
) -> Dataset:
    """Index DIR/<split>/<class>/<images>; `limit` keeps the first N files per class and split."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: data folder not found; pass --data DIR or set EDGECONV_DATA "
            "(python train/prepare_data.py --download builds one)"
        )
    for split in splits:
        if not (root / split).is_dir():
            raise DataError(
                f"{root / split}: split folder missing; expected "
                f"{root}/{{{','.join(splits)}}}/<class>/<images>"
            )
    classes = sorted(p.name for p in (root / splits[0]).iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(
            f"{root / splits[0]}: found {len(classes)} class folder(s); need at least two "
            "(one folder of images per class)"
        )
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in splits:
        found = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        if found != classes:
            raise DataError(f"{root / split}: classes {found} differ from {splits[0]}'s {classes}")
        files[split] = []
        for index, name in enumerate(classes):
            images = sorted(list_images(root / split / name, recursive=False), key=natural_key)
            if not images:
                raise DataError(f"{root / split / name}: no images in this class folder")
            files[split] += [(path, index) for path in images[:limit]]
    return Dataset(root, classes, files)


def load_split(
    dataset: Dataset, split: str, size: tuple[int, int] = INPUT_SHAPE[:2]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, h, w, 3], labels int32 [N]) for one split, decoded once.

    With a cache, images is a read-only memory map of the cache file.
    """
    entries = dataset.splits[split]
    labels = np.array([label for _, label in entries], dtype=np.int32)
    cache = _cache_file(entries, size)
    if cache is None:
        images = np.empty((len(entries), *size, 3), dtype=np.uint8)
        _decode(entries, split, size, images.__setitem__)
        return images, labels
    if not cache.exists():
        with atomic_path(cache) as tmp:
            _decode_to_file(entries, split, size, tmp)
    return np.load(cache, mmap_mode="r"), labels


def _decode_to_file(entries: list[tuple[Path, int]], split: str, size: tuple[int, int],
                    path: Path) -> None:
    """Decode into a .npy file, each photo written at its place as soon as it is decoded."""
    shape = (len(entries), *size, 3)
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "|u1", "fortran_order": False, "shape": shape})
        start, photo_bytes = file.tell(), size[0] * size[1] * 3
        file.truncate(start + len(entries) * photo_bytes)
        _decode(entries, split, size, lambda index, image: os.pwrite(
            file.fileno(), image.tobytes(), start + index * photo_bytes))


def _decode(entries: list[tuple[Path, int]], split: str, size: tuple[int, int],
            store: Callable[[int, np.ndarray], object]) -> None:
    """Decode every photo, on every core, and `store(index, image)` each one."""

    def decode(index: int) -> int:
        path = entries[index][0]
        try:
            store(index, load_image(path, size))
        except ImageError as error:
            raise DataError(
                f"{error}; remove it from the {split} split (train/prepare_data.py filters "
                "bad files)"
            ) from None
        return index

    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in progress(pool.map(decode, range(len(entries))), len(entries), f"decode {split}"):
            pass


def _cache_file(entries: list[tuple[Path, int]], size: tuple[int, int]) -> Path | None:
    folder = os.environ.get("EDGECONV_CACHE", str(Path.home() / ".cache" / "edgeconv"))
    if folder.lower() in ("", "0", "off", "none"):
        return None
    digest = hashlib.sha256(f"{_CACHE_VERSION} {size}".encode())
    for path, _ in entries:
        try:
            stat = path.stat()
            digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        except (OSError, RuntimeError):  # a broken or looping link: decoding will say so
            digest.update(f"{path.absolute()} unreadable\n".encode())
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"images-{digest.hexdigest()[:24]}.npy"
