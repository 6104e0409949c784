#!/usr/bin/env python
"""Peak memory of a short training run as the dataset grows, cache memory-mapped or not.

  python benchmarks/memory.py [--data DIR] [--sizes 2000,8000,32000] [--steps 20] [--json FILE]

For each size, a training folder of that many photos (the real training photos again and
again under new names, as links) with 100 validation and 100 test photos per class, and three
runs of `train/run.py --recipe baseline --epochs 1`, cut to --steps batches of 20:
  first      memory-mapped cache, empty: the run decodes every photo into it, then trains
  cached     memory-mapped cache, as the first run left it
  in memory  EDGECONV_CACHE=off: every photo decoded into memory (the cache before version 3
             also loaded every photo into memory)
Every run is a process of its own; its peak resident memory (VmHWM) is printed, with its
ratio to the smallest size's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeconv.common.files import write_json
from edgeconv.runtime.tables import markdown_table
from edgeconv.runtime.text import command_name
from edgeconv.train.dataset import DataError, find_dataset, resolve_data

REPO = Path(__file__).resolve().parents[1]
BATCH = 20  # the baseline recipe's
MODES = {"first": "cache", "cached": "cache", "in memory": "off"}


def linked_dataset(source: Path, out: Path, train_photos: int, held_out: int = 100) -> Path:
    """out/{train,validation,test}/<class>/: `train_photos` links to source's training photos
    (repeated under new names), split evenly between the classes; `held_out` per class in the
    other splits."""
    dataset = find_dataset(source)
    for split, count in (("train", train_photos // len(dataset.classes)),
                         ("validation", held_out), ("test", held_out)):
        for index, name in enumerate(dataset.classes):
            photos = [path for path, label in dataset.splits[split] if label == index]
            folder = out / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                photo = photos[number % len(photos)]
                (folder / f"{name}.{number}{photo.suffix}").symlink_to(photo.resolve())
    return out


def peak_rss_mb(args: list[str], env: dict, log: Path) -> float:
    """Run `python args` to its end and return its peak resident memory in MB."""
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}); see {log}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def measure(source: Path, work: Path, size: int, steps: int) -> dict[str, float]:
    data = linked_dataset(source, work / f"data-{size}", size)
    figures = {}
    for mode, cache in MODES.items():
        out = work / f"run-{size}-{mode.replace(' ', '-')}"
        env = {**os.environ, "EDGECONV_CACHE": str(work / "cache") if cache == "cache" else "off"}
        # An epoch of exactly `steps` batches: steps = passes * photos / batch.
        args = ["train/run.py", "--data", str(data), "--recipe", "baseline", "--epochs", "1",
                "--set", f"passes_per_epoch={steps * BATCH / size}", "--out", str(out),
                "--verbose", "0"]
        figures[mode] = peak_rss_mb(args, env, work / f"{out.name}.log")
        print(f"{size} photos, {mode}: peak RSS {figures[mode]:.0f} MB", file=sys.stderr)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("benchmarks/memory.py"), description=__doc__.split(
        "\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: as train/run.py)")
    parser.add_argument("--sizes", default="2000,8000,32000",
                        help="training photos per run, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="training batches per run")
    parser.add_argument("--work", type=Path, help="keep the linked datasets, caches and runs "
                        "here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeconv-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = resolve_data(args.data)
        rows = {size: measure(source, work, size, args.steps) for size in sizes}
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    smallest = rows[sizes[0]]
    print(f"\npeak RSS (MB) of train/run.py --recipe baseline, {args.steps} steps of "
          f"{BATCH}, 200 validation and 200 test photos; ratio to {sizes[0]:,} photos\n")
    print(markdown_table(
        ["training photos", *(f"{mode} MB" for mode in MODES), *(f"{mode} ratio" for mode in
                                                                 MODES)],
        [[f"{size:,}", *(f"{figures[mode]:.0f}" for mode in MODES),
          *(f"{figures[mode] / smallest[mode]:.2f}x" for mode in MODES)]
         for size, figures in rows.items()]))
    if args.json:
        write_json(args.json, {"steps": args.steps, "batch": BATCH,
                               "peak_rss_mb": {str(size): figures
                                               for size, figures in rows.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
