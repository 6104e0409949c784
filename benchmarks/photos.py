#!/usr/bin/env python3
"""Real-world photo sizes: classify 12-megapixel JPEGs with the full decode and the fast path,
and a camera loop at a camera's resolution, against the engine alone.

  python benchmarks/photos.py MODEL PHOTOS [--count 200] [--megapixels 12]

Makes COUNT JPEGs of MEGAPIXELS from the photos (upscaled, in a temporary folder, deleted
after), then prints, side by side in one run: images/s of runtime/classify on them with
--full-decode and with the default fast path, the share of each image's time spent decoding,
the engine-only limit, the label agreement of the two decodes (on the large JPEGs and on the
original photos), and camera-loop FPS from a 1280x720 video file against engine-only FPS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgeconv.runtime.camera import classified_frames
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.preprocess import list_images, load_image
from edgeconv.runtime.progress import progress
from edgeconv.runtime.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def make_large(photos: list[Path], folder: Path, megapixels: float) -> list[Path]:
    """Each photo upscaled to about `megapixels` at 4:3, saved as a quality-90 JPEG."""
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = round(width * 3 / 4)
    made = []
    for index, photo in enumerate(progress(photos, label="make 12 MP", unit="img")):
        image = Image.open(photo).convert("RGB").resize((width, height),
                                                        Image.Resampling.BICUBIC)
        path = folder / photo.parent.name / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=90)
        made.append(path)
    return made


def classify_run(model: Path, folder: Path, *flags: str) -> tuple[float, dict[str, str]]:
    """(images/s, path -> label) of runtime/classify --json on a folder."""
    result = subprocess.run([sys.executable, str(ROOT / "runtime" / "classify"), str(model),
                             str(folder), "--json", *flags], capture_output=True, text=True,
                            timeout=3600)
    labels = {line["path"]: line["label"] for line in map(json.loads, result.stdout.split(
        "\n")[:-1])}
    rate = float(result.stderr.split(" images/s")[0].rsplit(" ", 1)[-1])
    return rate, labels


def decode_ms(classifier: Classifier, files: list[Path], fast: bool) -> float:
    """Median ms of load_image alone (read, decode, orient, resize) per file."""
    times = []
    for path in files:
        started = time.perf_counter()
        load_image(path, classifier.size, fast_jpeg=fast)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def engine_ms(classifier: Classifier, repeat: int = 200) -> float:
    image = np.zeros((1, *classifier.size, 3), np.uint8)
    for _ in range(10):
        classifier.engine.run(image)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        classifier.engine.run(image)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def agreement(first: dict[str, str], second: dict[str, str]) -> tuple[float, int]:
    same = sum(first[path] == second.get(path) for path in first)
    return same / len(first), len(first) - same


def camera_fps(classifier: Classifier, photos: list[Path], folder: Path) -> float:
    import cv2

    video = folder / "camera.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (1280, 720))
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (1280, 720)))
    writer.release()
    started, frames = time.perf_counter(), 0
    for _ in classified_frames(classifier, str(video)):
        frames += 1
    return frames / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/photos.py", description=__doc__.split(
        "\n\n")[0], epilog="Example: python benchmarks/photos.py models/plus_int8.tflite "
        "DIR/test")
    parser.add_argument("model", type=Path)
    parser.add_argument("photos", type=Path, help="a folder of class folders of photos")
    parser.add_argument("--count", type=int, default=200, help="large JPEGs to make")
    parser.add_argument("--megapixels", type=float, default=12.0)
    args = parser.parse_args(argv)
    files = list_images(args.photos)
    if not files or not args.model.is_file():
        parser.error("need a model file and a folder with photos")
    step = max(1, len(files) // args.count)
    chosen = files[::step][:args.count]
    classifier = Classifier(args.model, threads=1)
    with tempfile.TemporaryDirectory(prefix="edgeconv-photos-") as work:
        large = make_large(chosen, Path(work) / "large", args.megapixels)
        full_rate, full_labels = classify_run(args.model, Path(work) / "large", "--full-decode")
        fast_rate, fast_labels = classify_run(args.model, Path(work) / "large")
        _, original_full = classify_run(args.model, args.photos, "--full-decode")
        _, original_fast = classify_run(args.model, args.photos)
        sample = large[:30]
        full_decode, fast_decode = (decode_ms(classifier, sample, fast) for fast in (False, True))
        engine = engine_ms(classifier)
        camera = camera_fps(classifier, chosen[:150], Path(work))
        size = Image.open(large[0]).size
    large_agree, large_flips = agreement(full_labels, fast_labels)
    original_agree, original_flips = agreement(original_full, original_fast)
    print(f"{args.model.name}; {len(large)} JPEGs of {size[0]}x{size[1]} made from "
          f"{args.photos}; {os.cpu_count()} cores\n")
    print(markdown_table(
        ["decode", "classify images/s", "decode ms (1 image)", "engine ms (1 thread)",
         "decode share"],
        [["full", f"{full_rate:.1f}", f"{full_decode:.1f}", f"{engine:.2f}",
          f"{full_decode / (full_decode + engine):.0%}"],
         ["fast (default)", f"{fast_rate:.1f}", f"{fast_decode:.1f}", f"{engine:.2f}",
          f"{fast_decode / (fast_decode + engine):.0%}"]]))
    print(f"\nfast path: {fast_rate / full_rate:.1f}x the images/s of the full decode; "
          f"engine-only limit {1000 / engine:.0f} images/s on one thread")
    print(f"labels, fast against full decode: {large_agree:.2%} agree on the {len(large)} "
          f"large JPEGs ({large_flips} differ), {original_agree:.2%} on the "
          f"{len(original_full)} original photos ({original_flips} differ)")
    print(f"camera loop from a 1280x720 video (read, convert, resize, infer; one inference "
          f"thread): {camera:.0f} FPS; engine alone {1000 / engine:.0f} FPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
