#!/usr/bin/env python3
"""Load-test runtime/serve on loopback: the image API under concurrent clients, and the
camera loop with and without stream viewers, beside runtime/classify on the same photos.

  python benchmarks/serve.py MODEL PHOTOS [--clients 4] [--requests 400] [--viewers 5]
                                [--before CHECKOUT]

Starts a real server process (and a second one with a video made from the photos as its
camera), prints requests/s, p50/p99 latency and the server's peak RSS against classify's
images/s, then camera FPS with no viewer against FPS with --viewers viewers reading the MJPEG
stream, and the server's cold start and idle RSS. With --before, the same for the runtime/serve
of another checkout (e.g. `git worktree add /tmp/before COMMIT`), side by side in one run.
Figures, not a pass/fail: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from edgeconv.benchmarks.server import Server
from edgeconv.runtime.preprocess import list_images
from edgeconv.runtime.tables import markdown_table
from edgeconv.runtime.text import command_name

ROOT = Path(__file__).resolve().parents[1]


def post_photos(url: str, photos: list[bytes], clients: int, requests: int) -> dict:
    """`requests` POSTs spread over `clients` threads; throughput and latency percentiles."""
    latencies: list[float] = []
    failures = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        for index in counter:  # shared: each request is taken once
            body = photos[index % len(photos)]
            request = urllib.request.Request(url + "/api/classify", data=body,
                                             headers={"Content-Type": "image/jpeg"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
            except OSError as error:
                with lock:
                    failures.append(str(error))
                continue
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests_per_second": len(latencies) / elapsed, "failures": len(failures),
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[round(0.99 * (len(latencies) - 1))]}


def classify_rate(model: Path, folder: Path) -> float:
    """images/s of runtime/classify on the same photos, from its summary line."""
    result = subprocess.run([sys.executable, str(ROOT / "runtime" / "classify"), str(model),
                             str(folder)], capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1]
    return float(summary.split(" images/s")[0].rsplit(" ", 1)[-1])


def make_video(photos: list[Path], path: Path, fps: int) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (640, 480)))
    writer.release()


def camera_fps(server: Server, seconds: float) -> float:
    first = server.json("/api/info")[1]
    time.sleep(seconds)
    last = server.json("/api/info")[1]
    return (last["frames"] - first["frames"]) / (last["uptime_s"] - first["uptime_s"])


def watch_stream(url: str, stop: threading.Event) -> None:
    with urllib.request.urlopen(url + "/stream.mjpg", timeout=30) as stream:
        while not stop.is_set():
            stream.read(65536)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("benchmarks/serve.py"), description=__doc__.split(
        "\n\n")[0], epilog=f"Example: {command_name('python benchmarks/serve.py')} "
        "models/plus_int8.tflite "
        "DIR/test")
    parser.add_argument("model", type=Path)
    parser.add_argument("photos", type=Path, help="a folder of photos (searched recursively)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent API clients")
    parser.add_argument("--requests", type=int, default=400, help="POSTs in all")
    parser.add_argument("--viewers", type=int, default=5, help="MJPEG viewers for the "
                        "camera run")
    parser.add_argument("--seconds", type=float, default=10, help="camera FPS window")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also measure the runtime/serve of this checkout")
    args = parser.parse_args(argv)
    files = list_images(args.photos)
    if not files or not args.model.is_file():
        parser.error("need a model file and a folder with photos")
    if args.before and not (args.before / "runtime" / "serve").is_file():
        parser.error(f"--before {args.before}: no runtime/serve there")
    used = files[:args.requests]
    photos = [path.read_bytes() for path in used]
    servers = [("", ROOT)] + ([("before: ", args.before)] if args.before else [])
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as work:
        folder = Path(work) / "photos"
        folder.mkdir()
        for index, path in enumerate(used):
            os.symlink(path.resolve(), folder / f"{index:05d}{path.suffix}")
        classify = classify_rate(args.model, folder)
        video = Path(work) / "camera.avi"
        make_video(files[:200], video, fps=200)  # faster than inference: FPS is the engine's
        results = {label: measure(args, root, photos, video) for label, root in servers}
    print(f"{args.model.name}, {len(used)} photos from {args.photos}, {os.cpu_count()} cores\n")
    rows = [["runtime/classify (files)", f"{classify:.0f}", "-", "-", "-"]]
    for label, result in results.items():
        api = result["api"]
        rows.append([f"{label}serve POST /api/classify, {args.clients} clients",
                     f"{api['requests_per_second']:.0f}", f"{api['p50_ms']:.1f}",
                     f"{api['p99_ms']:.1f}", f"{api['peak_rss_mb']:.0f}"])
    print(markdown_table(["what", "images/s", "p50 ms", "p99 ms", "peak RSS MB"], rows))
    api = results[""]["api"]
    print(f"\nAPI: {api['requests_per_second'] / classify:.2f}x classify's rate, "
          f"{api['failures']} failed requests")
    if args.before:
        old = results["before: "]["api"]
        print(f"against before: {api['requests_per_second'] / old['requests_per_second']:.2f}x "
              f"the requests/s, {api['p99_ms'] / old['p99_ms']:.2f}x the p99")
    rows = []
    for label, result in results.items():
        rows += [[f"{label}no viewer", f"{result['alone']:.1f}", "-"],
                 [f"{label}{args.viewers} MJPEG viewers", f"{result['watched']:.1f}",
                  f"{result['camera_rss']:.0f}"]]
    print(markdown_table(["camera (video at 200 FPS)", "inference FPS", "peak RSS MB"], rows))
    current = results[""]
    print(f"\nwith {args.viewers} viewers: {current['watched'] / current['alone']:.2f}x the FPS "
          "of none")
    print(markdown_table(["server", "cold start s", "idle RSS MB"],
                         [[label.rstrip(": ") or "this checkout", f"{result['cold_s']:.2f}",
                           f"{result['idle_mb']:.0f}"] for label, result in results.items()]))
    return 0


def measure(args: argparse.Namespace, root: Path, photos: list[bytes], video: Path) -> dict:
    """The API, camera and start figures of the runtime/serve in `root`."""
    server = Server(args.model, serve=root / "runtime" / "serve")
    cold_s = server.healthy_after_s()
    time.sleep(1)
    idle_mb = server.rss_mb()
    try:
        api = post_photos(server.url, photos, args.clients, args.requests)
        api["peak_rss_mb"] = server.peak_rss_mb()
    finally:
        server.stop()
    camera = Server(args.model, "--camera", str(video), serve=root / "runtime" / "serve")
    camera.healthy_after_s()  # the first frame classified
    stop = threading.Event()
    try:
        time.sleep(2)  # warm up
        alone = camera_fps(camera, args.seconds)
        viewers = [threading.Thread(target=watch_stream, args=(camera.url, stop), daemon=True)
                   for _ in range(args.viewers)]
        for viewer in viewers:
            viewer.start()
        time.sleep(1)
        watched = camera_fps(camera, args.seconds)
        camera_rss = camera.peak_rss_mb()
    finally:
        stop.set()
        camera.stop()
    return {"api": api, "alone": alone, "watched": watched, "camera_rss": camera_rss,
            "cold_s": cold_s, "idle_mb": idle_mb}


if __name__ == "__main__":
    sys.exit(main())
