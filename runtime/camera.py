"""Classify a live camera or video stream, frame by frame.

Sources: a device index ("0"), /dev/videoN, a video file or a stream URL (all through
OpenCV), or "picamera" (picamera2 on a Raspberry Pi). Frames go through the same
load_image as photos, so a frame is resized exactly as in training.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeconv.runtime.capture import Capture
from edgeconv.runtime.classifier import Classifier, Prediction
from edgeconv.runtime.hotswap import HotModel
from edgeconv.runtime.pipeline import in_order
from edgeconv.runtime.quiet import native_stderr_silenced
from edgeconv.runtime.shadow import Shadow
from edgeconv.runtime.text import display


class CameraError(RuntimeError):
    """The camera or stream cannot be opened."""


def is_live(source: str) -> bool:
    """Files end; devices, picamera and network streams are retried when they drop."""
    return not Path(source).is_file()


def open_capture(source: str, width: int | None, height: int | None):
    """Return a function that gives the next RGB frame, or None when the stream has none."""
    if source == "picamera":
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError("picamera2 is not installed (sudo apt install python3-picamera2)"
                              ) from None
        camera = Picamera2()
        size = (width or 640, height or 480)
        camera.configure(camera.create_preview_configuration(
            main={"size": size, "format": "RGB888"}))
        camera.start()
        # picamera2's "RGB888" is BGR in memory, as OpenCV's frames are.
        return lambda: camera.capture_array()[:, :, ::-1], camera.close
    try:
        import cv2
    except ImportError:
        raise CameraError("OpenCV is not installed: pip install opencv-python-headless"
                          ) from None
    with native_stderr_silenced():  # OpenCV's "[ WARN ]" lines: the error below says it
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise CameraError(f"{display(source)}: cannot open this camera or stream")
    if width:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    if height:
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)

    def read():
        ok, frame = capture.read()
        return frame[:, :, ::-1] if ok else None  # BGR -> RGB

    return read, capture.release


def file_fps(source: str, default: float = 30.0) -> float:
    """The frame rate a video file was recorded at (to replay it as a camera would)."""
    try:
        import cv2
    except ImportError:
        return default
    capture = cv2.VideoCapture(source)
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return fps if 0 < fps <= 240 else default


def frames(source: str, width: int | None, height: int | None, retries: int = 5,
           log=print) -> Iterator[np.ndarray]:
    """Yield RGB frames; a live source that drops is reopened with exponential backoff."""
    read, close = open_capture(source, width, height)
    failures = 0
    try:
        while True:
            frame = read()
            if frame is not None:
                failures = 0
                yield frame
                continue
            if not is_live(source):
                return
            failures += 1
            if failures > retries:
                log(f"stream {display(source)} lost; gave up after {retries} retries",
                    file=sys.stderr)
                return
            delay = min(0.5 * 2 ** (failures - 1), 8.0)
            log(f"stream {display(source)} dropped; retry {failures}/{retries} in {delay:.1f} s",
                file=sys.stderr)
            close()
            time.sleep(delay)
            try:
                read, close = open_capture(source, width, height)
            except CameraError:
                continue
    finally:
        close()


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def classified_frames(model: Classifier | HotModel, source: str, width: int | None = None,
                      height: int | None = None, every: int = 1,
                      max_frames: int | None = None
                      ) -> Iterator[tuple[int, np.ndarray, Prediction, float]]:
    """(frame index, RGB frame, prediction, ms from capture to answer) for every `every`-th
    frame, at most `max_frames`, in order.

    Capture, conversion and inference overlap: while the model's workers (one per interpreter,
    Classifier.split) convert and infer the frames in flight, the next is captured. With a
    HotModel, a replaced model file is picked up between frames."""
    def captured() -> Iterator[tuple[int, np.ndarray, float, Classifier]]:
        seen = 0
        for index, frame in enumerate(frames(source, width, height)):
            if max_frames is not None and seen >= max_frames:
                return
            if index % every:
                continue
            seen += 1
            if isinstance(model, HotModel):
                model.poll()
            yield index, frame, time.perf_counter(), current()

    def current() -> Classifier:
        return model.classifier if isinstance(model, HotModel) else model

    def classify(item: tuple[int, np.ndarray, float, Classifier]) -> Prediction:
        return item[3].predict(item[1])

    for (index, frame, at, _), prediction in in_order(classify, captured(),
                                                      current().plan.interpreters, ahead=0):
        yield index, frame, prediction, (time.perf_counter() - at) * 1000


def run_camera(model: Classifier | HotModel, source: str, width: int | None = None,
               height: int | None = None, every: int = 1, max_frames: int | None = None,
               show: bool | None = None, json_lines: bool = False,
               capture: Capture | None = None, shadow: Shadow | None = None,
               max_seconds: float | None = None) -> dict:
    """Classify every `every`-th frame, a line each, for at most `max_frames` frames and
    `max_seconds`; return a summary (its latencies: from a frame's capture to its answer).
    Ctrl-C ends cleanly. With `capture` (and a HotModel), the frames its rules want are kept;
    with `shadow`, its candidate classifies each frame too, unseen but counted."""
    show = has_display() if show is None else show
    counts: Counter = Counter()
    latencies: list[float] = []  # from capture to answer
    started = time.perf_counter()
    try:
        for index, frame, prediction, latency in classified_frames(model, source, width, height,
                                                                   every, max_frames):
            latencies.append(latency)
            counts[prediction.label] += 1
            if capture is not None and isinstance(model, HotModel):
                capture.keep(frame, prediction, model, lambda line: print(line, file=sys.stderr))
            if shadow is not None:
                shadow.compare(frame, prediction)
            if json_lines:
                print(json.dumps({"frame": index, **prediction.as_dict()}), flush=True)
            else:
                ranked = sorted(prediction.scores.items(), key=lambda item: -item[1])
                unsure = "unsure  " if prediction.label not in prediction.scores else ""
                print(f"{prediction.ms:5.1f} ms  {unsure}" + "  ".join(
                    f"{name} {score:.2f}" for name, score in ranked), flush=True)
            if show and not _draw(frame, prediction, len(latencies) /
                                  (time.perf_counter() - started)):
                break
            if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                break
    except KeyboardInterrupt:
        pass
    elapsed = time.perf_counter() - started
    return {"frames": len(latencies), "counts": dict(counts),
            "latency_ms_p50": statistics.median(latencies) if latencies else None,
            "fps": len(latencies) / elapsed if elapsed > 0 else 0.0}


def _draw(frame: np.ndarray, prediction, fps: float) -> bool:
    """Show the frame with label, score and FPS; False when the user closes it (q / Esc)."""
    import cv2

    image = np.ascontiguousarray(frame[:, :, ::-1])
    text = f"{prediction.label} {prediction.score:.2f}  {fps:.1f} FPS"
    cv2.putText(image, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
    cv2.imshow("edgeconv", image)
    return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
