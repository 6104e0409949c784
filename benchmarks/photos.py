#!/usr/bin/env python3
"""Real-world photo sizes: classify against the machine's bound on ordinary photos and on
12-megapixel JPEGs, the full decode against the fast path, and a camera loop.

  python benchmarks/photos.py MODEL PHOTOS [--count 200] [--megapixels 12]
                                 [--before CHECKOUT] [--repeat N]

Makes COUNT JPEGs of MEGAPIXELS from the photos (upscaled, in a temporary folder, deleted
after), then prints, side by side in one run: for the photos and for the large JPEGs, the
decode ms and inference ms at 1..cores threads, the bound they give (runtime.pipeline:
cores / (decode + cheapest core-time of inference)), runtime/classify's images/s and its
share of the bound, and a naive loop's (decode, then infer on all cores, one photo at a
time); images/s of classify on the large JPEGs with --full-decode and with the default fast
path, the label agreement of the two decodes, and camera-loop FPS and capture-to-answer
latency from a 1280x720 video file against engine-only FPS. With --before, the same classify
figures for the runtime/classify of another checkout (`git worktree add /tmp/before COMMIT`).
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
from edgeconv.runtime.pipeline import Costs, timed_ms
from edgeconv.runtime.preprocess import list_images, load_image
from edgeconv.runtime.progress import progress
from edgeconv.runtime.tables import markdown_table
from edgeconv.runtime.text import command_name

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


def classify_run(model: Path, folder: Path, *flags: str, root: Path = ROOT
                 ) -> tuple[float, dict[str, str]]:
    """(images/s, path -> label) of runtime/classify --json on a folder, run from `root`'s
    own code (on PYTHONPATH: edgeconv/__init__.py then finds that checkout's stages first)."""
    result = subprocess.run([sys.executable, str(root / "runtime" / "classify"), str(model),
                             str(folder), "--json", *flags], capture_output=True, text=True,
                            timeout=3600, env={**os.environ, "PYTHONPATH": str(root)})
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


def costs(model: Path, files: list[Path], fast: bool, cores: int) -> Costs:
    """Decode ms (median over the files, one at a time) and inference ms at 1..cores threads."""
    decode = decode_ms(Classifier(model, threads=1), files[:30], fast)
    return Costs(decode, {threads: engine_ms(Classifier(model, threads=threads), 100)
                          for threads in range(1, cores + 1)})


def naive_rate(model: Path, files: list[Path], fast: bool) -> float:
    """Images/s of the bare loop: decode a photo, then infer on all cores; the next."""
    classifier = Classifier(model)
    started = time.perf_counter()
    for path in files:
        classifier.probabilities(load_image(path, classifier.size, fast_jpeg=fast)[None])
    return len(files) / (time.perf_counter() - started)


def bound_rows(model: Path, folders: dict[str, Path], cores: int, before: Path | None,
               repeat: int) -> list[list[str]]:
    """One row per folder: the costs, the bound, and classify's and the naive loop's share of
    it; on a busy machine each is measured `repeat` times, interleaved, and the median shown
    (each share from its own run's bound)."""
    rows = []
    for name, folder in folders.items():
        files = list_images(folder)
        runs = []
        for _ in range(repeat):
            measured = costs(model, files, True, cores)
            bound = measured.bound(cores)
            rates = [classify_run(model, folder)[0], naive_rate(model, files[:200], True)]
            if before:
                rates.append(classify_run(model, folder, root=before)[0])
            runs.append((measured, bound, rates))
        measured = Costs(statistics.median(run[0].decode_ms for run in runs), {
            threads: statistics.median(run[0].infer_ms[threads] for run in runs)
            for threads in runs[0][0].infer_ms})
        row = [name, f"{measured.decode_ms:.2f}", " / ".join(
            f"{ms:.2f}" for ms in measured.infer_ms.values()),
            f"{statistics.median(run[1] for run in runs):.0f}"]
        for column in range(len(runs[0][2])):
            rate = statistics.median(run[2][column] for run in runs)
            share = statistics.median(run[2][column] / run[1] for run in runs)
            row.append(f"{rate:.1f} ({share:.0%})")
        rows.append(row)
    return rows


def engine_ms(classifier: Classifier, repeat: int = 200) -> float:
    image = np.zeros((1, *classifier.size, 3), np.uint8)
    return timed_ms(lambda: classifier.engine.run(image), repeat, warmup=10)


def agreement(first: dict[str, str], second: dict[str, str]) -> tuple[float, int]:
    same = sum(first[path] == second.get(path) for path in first)
    return same / len(first), len(first) - same


def camera_run(classifier: Classifier, photos: list[Path], folder: Path
               ) -> tuple[float, float]:
    """(FPS, median ms from a frame's capture to its answer) of the camera loop on a video."""
    import cv2

    video = folder / "camera.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (1280, 720))
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (1280, 720)))
    writer.release()
    started, latencies = time.perf_counter(), []
    for _, _, _, latency_ms in classified_frames(classifier, str(video)):
        latencies.append(latency_ms)
    return (len(latencies) / (time.perf_counter() - started), statistics.median(latencies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("benchmarks/photos.py"), description=__doc__.split(
        "\n\n")[0], epilog=f"Example: {command_name('python benchmarks/photos.py')} "
        "models/plus_int8.tflite "
        "DIR/test")
    parser.add_argument("model", type=Path)
    parser.add_argument("photos", type=Path, help="a folder of class folders of photos")
    parser.add_argument("--count", type=int, default=200, help="large JPEGs to make")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also measure the runtime/classify of this checkout")
    parser.add_argument("--repeat", type=int, default=1, help="measure the bound table this "
                        "many times and show the medians (a busy machine)")
    args = parser.parse_args(argv)
    files = list_images(args.photos)
    if not files or not args.model.is_file():
        parser.error("need a model file and a folder with photos")
    if args.before and not (args.before / "runtime" / "classify").is_file():
        parser.error(f"--before {args.before}: no runtime/classify there")
    cores = os.cpu_count() or 1
    step = max(1, len(files) // args.count)
    chosen = files[::step][:args.count]
    classifier = Classifier(args.model, threads=1)
    with tempfile.TemporaryDirectory(prefix="edgeconv-photos-") as work:
        large = make_large(chosen, Path(work) / "large", args.megapixels)
        bound = bound_rows(args.model, {str(args.photos): args.photos,
                                        f"{len(large)} large JPEGs": Path(work) / "large"},
                           cores, args.before, args.repeat)
        full_rate, full_labels = classify_run(args.model, Path(work) / "large", "--full-decode")
        fast_rate, fast_labels = classify_run(args.model, Path(work) / "large")
        _, original_full = classify_run(args.model, args.photos, "--full-decode")
        _, original_fast = classify_run(args.model, args.photos)
        sample = large[:30]
        full_decode, fast_decode = (decode_ms(classifier, sample, fast) for fast in (False, True))
        engine = engine_ms(classifier)
        camera, latency = camera_run(Classifier(args.model), chosen[:150], Path(work))
        size = Image.open(large[0]).size
    large_agree, large_flips = agreement(full_labels, fast_labels)
    original_agree, original_flips = agreement(original_full, original_fast)
    print(f"{args.model.name}; {len(large)} JPEGs of {size[0]}x{size[1]} made from "
          f"{args.photos}; {cores} cores\n")
    print(markdown_table(
        ["photos", "decode ms", f"inference ms at {', '.join(map(str, range(1, cores + 1)))} "
         "threads", "bound images/s", "classify images/s (share)",
         "naive loop images/s (share)"] + (["before: classify (share)"] if args.before else []),
        bound))
    print()
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
    print(f"camera loop from a 1280x720 video (capture, convert and resize, infer; overlapped): "
          f"{camera:.0f} FPS, {latency:.1f} ms from capture to answer (median); engine alone "
          f"{1000 / engine:.0f} FPS on one thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
