#!/usr/bin/env python
"""Build DIR/{train,validation,test}/<class>/ from a folder (or zip) of photos.

Your own photos: a folder of class folders (cardboard/, glass/, ...), or of LABEL.N.jpg
files. Duplicates (same bytes) are kept once, unreadable files are skipped and named, and
each class is split on its own, at random by --seed, into counts or fractions of its
photos; DIR/manifest.csv lists every photo with its SHA-256 and split.

Cats and dogs: a Kaggle-style flat folder or zip of cat.N.jpg / dog.N.jpg, or Microsoft's
PetImages archive or folder (PetImages/Cat/N.jpg); --download fetches the latter. The seed's
split: per class, the first 1,000 usable images by index for train, the next 500 for
validation and the next 500 for test; empty, corrupt, truncated, non-image and misnamed files
are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeconv.common.files import write_json
from edgeconv.runtime.preprocess import ImageError, is_image_file, open_image
from edgeconv.runtime.progress import ProgressBar, progress
from edgeconv.runtime.text import command_name
from edgeconv.train.dataset import SPLITS, data_digest
from edgeconv.train.download import DownloadError, download
from edgeconv.train.split import Amount, SplitError, assign, parse_amount

PETIMAGES_URL = ("https://download.microsoft.com/download/3/E/1/"
                 "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip")
PETIMAGES_SIZE = 824_887_076
KAGGLE_NAME = re.compile(r"(?:^|/)(cat|dog)\.(\d+)\.(jpe?g)$", re.IGNORECASE)
PETIMAGES_NAME = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/(\d+)\.(jpe?g)$", re.IGNORECASE)
CLASS_FOLDERS = {"cat": "cats", "dog": "dogs"}
EXPECTED_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG"}
LABEL_NAME = re.compile(r"^([^/]+?)\.\d+\.[^./]+$")  # LABEL.N.ext in a flat folder
PETS_SIZES = {"train": 1000, "validation": 500, "test": 500}
OWN_SIZES = {"train": 0.7, "validation": 0.15, "test": 0.15}
LINKS = ("copy", "symlink", "hardlink")
EXAMPLES = 5  # names shown per kind of skipped file


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
    unrecognised = []
    for name, reader in list_source(source):
        match = PETIMAGES_NAME.search(name) or KAGGLE_NAME.search(name)
        if match is None:
            unrecognised.append(name)
            continue
        found[match.group(1).lower()].append((int(match.group(2)), name, reader))
    if unrecognised:
        skipped["unrecognised name"] = len(unrecognised)
        name_some("unrecognised name", unrecognised)
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


def is_pets(names: list[str]) -> bool:
    """PetImages, or a flat folder of Kaggle's cat.N.jpg / dog.N.jpg: the seed's own split."""
    if any(PETIMAGES_NAME.search(name) for name in names):
        return True
    relative = without_root(names)
    return all("/" not in name for name in relative) and any(
        KAGGLE_NAME.search(name) for name in relative)


def without_root(names: list[str]) -> list[str]:
    """The names below their one common top folder, if they share one (a zipped folder)."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return [name.split("/", 1)[1] for name in names]
    return names


def name_some(why: str, names: list[str]) -> None:
    """One stderr line naming the first few of many files skipped for one reason."""
    more = f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else ""
    print(f"skipped {len(names)} ({why}): {', '.join(names[:EXAMPLES])}{more}", file=sys.stderr)


def class_of(name: str, flat: bool) -> str | None:
    """cardboard/IMG_1.jpg -> cardboard; in a `flat` folder (no class folders) glass.12.jpg
    -> glass; None for anything else."""
    if "/" in name:
        return name.split("/", 1)[0]
    match = LABEL_NAME.match(name) if flat else None
    return match.group(1) if match else None


def read_photos(entries: list[tuple[str, Reader]], skipped: Counter
                ) -> tuple[dict[str, dict[str, str]], dict[str, Reader]]:
    """(class -> {digest: name}, digest -> reader) of the usable photos, each kept once.

    A photo in two classes is dropped from both: its label is unknown and it could land in
    train and test at once. Every file left out is named on stderr, or counted when common.
    """
    examples: dict[str, list[str]] = {}

    def skip(why: str, name: str, detail: str = "", named: bool = False) -> None:
        skipped[why] += 1
        if named:
            print(f"skipped {name}: {detail or why}", file=sys.stderr)
        else:
            examples.setdefault(why, []).append(name)

    seen: dict[str, list[tuple[str, str]]] = {}
    readers: dict[str, Reader] = {}
    relatives = without_root([name for name, _ in entries])
    flat = all("/" not in relative for relative in relatives)
    for (name, reader), relative in progress(list(zip(entries, relatives)), len(entries),
                                             "check", "files"):
        label = class_of(relative, flat)
        if any(part.startswith(".") or part == "__MACOSX" for part in relative.split("/")):
            skip("hidden file", name)
        elif label is None:
            skip("not in a class folder", name)
        elif not is_image_file(Path(relative)):
            skip("not an image file name", name)
        else:
            data = reader()
            try:
                open_image(data)
            except ImageError as error:
                detail = str(error).removeprefix("<bytes>: ")
                skip(detail.split(" (")[0].split(";")[0], name, detail, named=True)
                continue
            digest = hashlib.sha256(data).hexdigest()
            seen.setdefault(digest, []).append((label, name))
            readers.setdefault(digest, reader)
    for why, found in examples.items():
        name_some(why, found)
    photos: dict[str, dict[str, str]] = {}
    for digest, copies in seen.items():
        labels = sorted({label for label, _ in copies})
        if len(labels) > 1:
            skip("in two classes", " and ".join(name for _, name in copies),
                 f"the same photo in classes {', '.join(labels)}", named=True)
            continue
        for _, name in copies[1:]:
            skip("duplicate", name, f"same bytes as {copies[0][1]}", named=True)
        photos.setdefault(labels[0], {})[digest] = copies[0][1]
    return photos, readers


def prepare_own(source: Path, out: Path, sizes: dict[str, Amount], seed: int,
                link: str) -> dict:
    """Split the class folders (or LABEL.N files) of `source` into out/; return a summary."""
    entries = list(list_source(source))
    if link != "copy" and not source.is_dir():
        raise PrepareError(f"{source}: --link {link} needs a folder, not an archive")
    skipped: Counter = Counter()
    photos, readers = read_photos(entries, skipped)
    if len(photos) < 2:
        raise PrepareError(f"{source}: found {len(photos)} class(es) with usable photos; need "
                           "a folder of at least two class folders (cardboard/, glass/, ...)")
    try:
        chosen = assign({name: list(found) for name, found in photos.items()}, sizes, seed)
    except SplitError as error:
        raise PrepareError(f"{source}: {error}") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = []
        for label, splits in chosen.items():
            for split, digests in splits.items():
                folder = staging / split / label
                folder.mkdir(parents=True)
                for digest in digests:
                    name = photos[label][digest]
                    target = folder / target_name(name, digest, folder)
                    place(source, name, readers[digest], target, link)
                    rows.append({"file": target.relative_to(staging).as_posix(),
                                 "sha256": digest, "split": split, "class": label,
                                 "source": name})
        rows.sort(key=lambda row: row["file"])
        with open(staging / "manifest.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        summary = {
            "source": str(source), "seed": seed, "sizes": sizes, "link": link,
            "classes": {label: {split: len(found) for split, found in splits.items()}
                        for label, splits in chosen.items()},
            "skipped": dict(sorted(skipped.items())),
            "data_sha256": data_digest({row["file"]: row["sha256"] for row in rows}),
        }
        return publish(staging, out, summary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def target_name(name: str, digest: str, folder: Path) -> str:
    """The photo's own file name, with its digest added when another photo has it."""
    flat = name.rsplit("/", 1)[-1]
    if (folder / flat).exists() or (folder / flat).is_symlink():
        stem, dot, suffix = flat.rpartition(".")
        flat = f"{stem}-{digest[:8]}{dot}{suffix}"
    return flat


def place(source: Path, name: str, reader: Reader, target: Path, link: str) -> None:
    if link == "symlink":
        target.symlink_to((source / name).resolve())
    elif link == "hardlink":
        os.link(source / name, target)
    else:
        target.write_bytes(reader())


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
        return publish(staging, out, summary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("train/prepare_data.py"),
        description="Build the train/validation/test class folders from a folder (or zip) of "
        "class folders, or from raw cats-and-dogs photos (Kaggle cat.N.jpg files or "
        "Microsoft's PetImages), skipping bad files.",
        epilog="Examples: {0} --source ~/photos --out data/photos | {0} --download".format(
            command_name("python train/prepare_data.py")),
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="folder or zip of the raw photos")
    where.add_argument("--download", action="store_true",
                       help="download Microsoft's PetImages archive (787 MB) first")
    parser.add_argument("--out", type=Path, help="dataset folder to create (default: "
                        "data/cats_and_dogs_small for cats and dogs, else data/SOURCE_NAME)")
    parser.add_argument("--downloads", type=Path, default=Path("data/downloads"),
                        help="where --download keeps the archive (default: %(default)s)")
    parser.add_argument("--url", default=PETIMAGES_URL, help="archive to download")
    parser.add_argument("--size", type=int, help="expected archive size in bytes "
                        f"(default for the official archive: {PETIMAGES_SIZE})")
    parser.add_argument("--sha256", help="expected SHA-256 of the archive")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=parse_amount, metavar="N|F",
                            help=f"photos per class in {split}/: a count (150) or a fraction "
                            f"of each class (0.7); default {OWN_SIZES[split]} of your own "
                            f"photos, {PETS_SIZES[split]} cats and dogs")
    parser.add_argument("--seed", type=int, default=0,
                        help="which photos go where in your own photos' split (default: 0)")
    parser.add_argument("--link", choices=LINKS, default="copy",
                        help="copy the photos (default), or link them to the source folder")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    given = [getattr(args, split) for split in SPLITS if getattr(args, split) is not None]
    if sum(amount for amount in given if isinstance(amount, float)) > 1 + 1e-9:
        parser.error("the fractions add up to more than 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source = args.source
        if args.download:
            size = args.size or (PETIMAGES_SIZE if args.url == PETIMAGES_URL else None)
            name = args.url.rstrip("/").rsplit("/", 1)[-1] or "download.zip"
            source = download(args.url, args.downloads / name, size=size, sha256=args.sha256)
            print(f"downloaded {source}")
        pets = args.download or is_pets([name for name, _ in list_source(source)])
        out = args.out or Path("data") / ("cats_and_dogs_small" if pets else source.stem)
        if out.exists() and any(out.iterdir()) and not args.force:
            raise PrepareError(f"{out}: already exists; pass --force to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        defaults = PETS_SIZES if pets else OWN_SIZES
        sizes = {split: defaults[split] if getattr(args, split) is None
                 else getattr(args, split) for split in SPLITS}
        if pets:
            if any(isinstance(amount, float) for amount in sizes.values()):
                raise PrepareError("the cats-and-dogs split takes counts (--train 1000), "
                                   "not fractions")
            summary = prepare(source, out, sizes)
        else:
            summary = prepare_own(source, out, sizes, args.seed, args.link)
    except (PrepareError, DownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {why}" for why, n in summary["skipped"].items()) or "none"
    if pets:
        per_class = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
        print(f"{out}: per class {per_class}; skipped: {skipped}")
        return 0
    classes = summary["classes"]
    totals = ", ".join(f"{split} {sum(c[split] for c in classes.values())}" for split in SPLITS)
    print(f"{out}: {len(classes)} classes, {totals} photos; skipped: {skipped}")
    for label, counts in classes.items():
        print(f"  {label}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    print(f"  manifest {out / 'manifest.csv'}, data SHA-256 {summary['data_sha256'][:16]}")
    return 0


def publish(staging: Path, out: Path, summary: dict) -> dict:
    """Write prepare.json into the finished staging folder and put it in `out`'s place."""
    write_json(staging / "prepare.json", summary)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return summary


if __name__ == "__main__":
    sys.exit(main())

