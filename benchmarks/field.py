#!/usr/bin/env python3
"""A field loop on a simulated night camera: serve keeps the frames the model is unsure of,
they are labelled through the label page's API, and the tar comes back for training.

  python benchmarks/field.py MODEL PHOTOS --out DIR [--count N] [--fps F]

There is no camera here, so the field is simulated: each photo of PHOTOS (class folders, e.g.
DIR/train) becomes a frame of an infrared night camera (grey, dim, low contrast, sensor noise,
letterboxed to 640x480), and the frames make a video that a real runtime/serve process plays
as its camera with --capture. Every kept frame is then labelled through POST /api/field/ID
with the class of the photo it came from (a person would press a key on /label), and GET
/api/field.tar is saved as DIR/field.tar. With --night-test TEST, TEST's photos are also
written, as night frames, to DIR/night-test/<class>/ for `classify --eval`. Prints the capture
figures (frames played, kept, skipped as near-duplicates, bytes) and the commands that follow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgeconv.benchmarks.server import Server
from edgeconv.runtime.capture import dhash
from edgeconv.runtime.preprocess import list_images
from edgeconv.runtime.text import command_name

FRAME = (640, 480)


def night_frame(photo: Path, seed: int) -> Image.Image:
    """`photo` as an infrared night camera would see it."""
    with Image.open(photo) as image:
        grey = ImageOps.grayscale(ImageOps.exif_transpose(image))
    grey = ImageOps.pad(grey, FRAME, color=0)
    pixels = np.asarray(grey, np.float32) / 255
    pixels = 0.08 + 0.45 * pixels ** 1.6  # dim, low contrast, the blacks lifted
    noise = np.random.default_rng(seed).normal(0, 0.035, pixels.shape)
    return Image.fromarray(np.clip((pixels + noise) * 255, 0, 255).astype(np.uint8)).convert("RGB")


def write_video(frames: list[Image.Image], path: Path, fps: float) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME)
    for frame in frames:
        writer.write(np.asarray(frame)[:, :, ::-1])
    writer.release()


def capture_figures(server: Server) -> dict:
    _, info = server.json("/api/info")
    return info["capture"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("benchmarks/field.py"), description=__doc__.split("\n\n")[0],
        epilog=f"Example: {command_name('python benchmarks/field.py')} "
        "models/plus_int8.tflite DIR/train --out runs/field-loop --night-test DIR/test")
    parser.add_argument("model", type=Path, help="the model the device runs now")
    parser.add_argument("photos", type=Path, help="class folders of photos: the field")
    parser.add_argument("--out", type=Path, required=True, help="folder for the video, the "
                        "kept frames and field.tar")
    parser.add_argument("--count", type=int, default=0, help="photos, evenly spaced over "
                        "PHOTOS (default: all)")
    parser.add_argument("--fps", type=float, default=30.0, help="the video's frame rate")
    parser.add_argument("--night-test", type=Path, metavar="TEST",
                        help="also write TEST's photos as night frames to OUT/night-test/")
    args = parser.parse_args(argv)
    classes = sorted(p.name for p in args.photos.iterdir() if p.is_dir())
    photos = [(path, name) for name in classes for path in list_images(args.photos / name)]
    if args.count:
        photos = [photos[i] for i in np.linspace(0, len(photos) - 1, args.count).astype(int)]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    frames = [night_frame(path, seed) for seed, (path, _) in enumerate(photos)]
    write_video(frames, args.out / "night.avi", args.fps)
    hashes = np.array([dhash(frame) for frame in frames], np.uint64)
    truths = [name for _, name in photos]
    print(f"video: {len(frames)} night frames of {args.photos} at {args.fps:g} FPS "
          f"({time.monotonic() - started:.0f} s to make)", file=sys.stderr)

    kept = args.out / "kept"
    server = Server(args.model, "--camera", args.out / "night.avi", "--capture", kept,
                    "--capture-per-minute", "100000", "--capture-keep", "100000",
                    "--capture-mb", "2000")
    try:
        while True:  # one pass over the video, then a little more: the loop repeats it
            _, info = server.json("/api/info")
            if info["frames"] >= len(frames) + args.fps:
                break
            time.sleep(1)
        figures = capture_figures(server)
        _, listing = server.json("/api/field")
        for frame in listing["frames"]:
            code = int(json.loads((kept / f"{frame['id']}.json").read_text())["dhash"], 16)
            distance = np.unpackbits((hashes ^ np.uint64(code)).view(np.uint8)).reshape(
                -1, 64).sum(axis=1)
            label = truths[int(distance.argmin())]
            status, answer = server.json(f"/api/field/{frame['id']}", data=json.dumps(
                {"label": label}).encode(), headers={"Content-Type": "application/json"})
            if status != 200:
                raise SystemExit(f"error: labelling {frame['id']}: {answer}")
        status, _, tar = server.request("/api/field.tar")
        if status != 200:
            raise SystemExit(f"error: GET /api/field.tar: {status}")
        (args.out / "field.tar").write_bytes(tar)
    finally:
        server.stop()
    answers = {}
    for frame in listing["frames"]:
        answers[frame["answer"]] = answers.get(frame["answer"], 0) + 1
    print(f"played {info['frames']} frames ({len(frames)} photos); kept {figures['saved']} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(answers.items()))} as answered), "
          f"skipped {figures['duplicate']} near-duplicates; {figures['bytes'] / 1e6:.1f} MB "
          f"in {kept}; labelled all, {args.out / 'field.tar'} {len(tar) / 1e6:.1f} MB")
    if args.night_test:
        for name in sorted(p.name for p in args.night_test.iterdir() if p.is_dir()):
            folder = args.out / "night-test" / name
            folder.mkdir(parents=True, exist_ok=True)
            for seed, path in enumerate(list_images(args.night_test / name)):
                night_frame(path, 10**6 + seed).save(folder / f"{path.stem}.jpg", quality=90)
        print(f"night test photos: {args.out / 'night-test'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
