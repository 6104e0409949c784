#!/usr/bin/env python
"""Build DIR/{train,validation,test}/{cats,dogs}/ from the raw cats-and-dogs photos.

Sources: a Kaggle-style flat folder or zip of cat.N.jpg / dog.N.jpg, or Microsoft's PetImages
archive or folder (PetImages/Cat/N.jpg, PetImages/Dog/N.jpg); --download fetches the latter.
The seed's split: per class, the first 1,000 usable images by index for train, the next 500
for validation and the next 500 for test. Every file is decoded before it is admitted;
empty, corrupt, truncated, non-image and misnamed files are skipped and counted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain clone

from runtime.files import write_json  # noqa: E402
from runtime.preprocess import ImageError, open_image  # noqa: E402
from runtime.progress import ProgressBar  # noqa: E402
from train.dataset import SPLITS  # noqa: E402
from train.download import DownloadError, download  # noqa: E402

PETIMAGES_URL = ("https://download.microsoft.com/download/3/E/1/"
                 "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip")
PETIMAGES_SIZE = 824_887_076
KAGGLE_NAME = re.compile(r"(?:^|/)(cat|dog)\.(\d+)\.(jpe?g)$", re.IGNORECASE)
PETIMAGES_NAME = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/(\d+)\.(jpe?g)$", re.IGNORECASE)
CLASS_FOLDERS = {"cat": "cats", "dog": "dogs"}
EXPECTED_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG"}


class PrepareError(Exception):
    """A problem with the user's input or output, reported as one line."""


Reader = Callable[[], bytes]


def list_source(source: Path) -> Iterator[tuple[str, Reader]]:
    """Yield (relative name, reader) for every file in a folder or zip archive."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file():
                yield path.relative_to(source).as_posix(), path.read_bytes
    elif zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        for info in archive.infolist():
            if not info.is_dir():
                yield info.filename, (lambda info=info: archive.read(info))
    elif source.exists():
        raise PrepareError(f"{source}: neither a folder nor a zip archive")
    else:
        raise PrepareError(f"{source}: not found")


def candidates(source: Path, skipped: Counter) -> dict[str, list[tuple[int, str, Reader]]]:
    """Group recognisable files by class ("cat", "dog"), sorted by image index."""
    found: dict[str, list[tuple[int, str, Reader]]] = {"cat": [], "dog": []}
    for name, reader in list_source(source):
        match = PETIMAGES_NAME.search(name) or KAGGLE_NAME.search(name)
        if match is None:
            skipped["unrecognised name"] += 1
            continue
        found[match.group(1).lower()].append((int(match.group(2)), name, reader))
    for items in found.values():
        items.sort(key=lambda item: item[0])
    return found


def check_image(name: str, data: bytes) -> str | None:
    """Return why `data` may not be admitted, or None when it is a whole image of its type."""
    if not data:
        return "empty file"
    try:
        image = open_image(data)
    except ImageError as error:
        return "not an image" if "not an image" in str(error) else "corrupt or truncated"
    expected = EXPECTED_FORMAT.get(name.rsplit(".", 1)[-1].lower())
    if expected and image.format != expected:
        return f"misnamed ({image.format} named .{name.rsplit('.', 1)[-1]})"
    return None


def prepare(source: Path, out: Path, sizes: dict[str, int]) -> dict:
    """Copy the first usable images per class into out/<split>/<class>/; return a summary."""
    skipped: Counter = Counter()
    found = candidates(source, skipped)
    needed = sum(sizes.values())
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        admitted: dict[str, dict[str, int]] = {}
        for animal, items in found.items():
            folder = CLASS_FOLDERS[animal]
            plan = [split for split in SPLITS for _ in range(sizes[split])]
            bar = ProgressBar(needed, f"check {folder}", "images")
            kept = 0
            for index, name, reader in items:
                if kept == needed:
                    break
                reason = check_image(name, reader())
                if reason:
                    skipped[reason.split(" (")[0]] += 1
                    print(f"skipped {name}: {reason}", file=sys.stderr)
                    continue
                split = plan[kept]
                target = staging / split / folder / f"{animal}.{index}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(reader())
                kept += 1
                bar.update()
            bar.close()
            if kept < needed:
                raise PrepareError(f"{source}: only {kept} usable {animal} images, {needed} "
                                   "needed; lower --train/--validation/--test")
            admitted[folder] = dict(sizes)
        summary = {"source": str(source), "splits": sizes, "admitted": admitted,
                   "skipped": dict(sorted(skipped.items()))}
        write_json(staging / "prepare.json", summary)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        return summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train/prepare_data.py",
        description="Build the train/validation/test class folders from raw cats-and-dogs "
        "photos (Kaggle cat.N.jpg files or Microsoft's PetImages), skipping bad files.",
        epilog="Example: python train/prepare_data.py --download --out data/cats_and_dogs_small",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="folder or zip of the raw photos")
    where.add_argument("--download", action="store_true",
                       help="download Microsoft's PetImages archive (787 MB) first")
    parser.add_argument("--out", type=Path, default=Path("data/cats_and_dogs_small"),
                        help="dataset folder to create (default: %(default)s)")
    parser.add_argument("--downloads", type=Path, default=Path("data/downloads"),
                        help="where --download keeps the archive (default: %(default)s)")
    parser.add_argument("--url", default=PETIMAGES_URL, help="archive to download")
    parser.add_argument("--size", type=int, help="expected archive size in bytes "
                        f"(default for the official archive: {PETIMAGES_SIZE})")
    parser.add_argument("--sha256", help="expected SHA-256 of the archive")
    for split, default in zip(SPLITS, (1000, 500, 500)):
        parser.add_argument(f"--{split}", type=int, default=default,
                            help=f"images per class in {split}/ (default: {default})")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if any(getattr(args, split) < 0 for split in SPLITS):
        parser.error("split sizes cannot be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out.exists() and any(args.out.iterdir()) and not args.force:
            raise PrepareError(f"{args.out}: already exists; pass --force to replace it")
        if not args.out.parent.is_dir():
            args.out.parent.mkdir(parents=True)
        source = args.source
        if args.download:
            size = args.size or (PETIMAGES_SIZE if args.url == PETIMAGES_URL else None)
            name = args.url.rstrip("/").rsplit("/", 1)[-1] or "download.zip"
            source = download(args.url, args.downloads / name, size=size, sha256=args.sha256)
            print(f"downloaded {source}")
        summary = prepare(source, args.out, {split: getattr(args, split) for split in SPLITS})
    except (PrepareError, DownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_class = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    skipped = ", ".join(f"{n} {why}" for why, n in summary["skipped"].items()) or "none"
    print(f"{args.out}: per class {per_class}; skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
