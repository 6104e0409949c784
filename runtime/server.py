"""What the device's server keeps: the model, the camera's latest frame and prediction,
counters. The HTTP side is runtime/web.py.

One thread runs the camera (classify, then publish the latest frame and prediction); viewers
on the server's asyncio loop are woken for each, so a slow or stalled viewer only misses
frames and never holds up the camera or anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from PIL import Image

from edgeconv.runtime.camera import classified_frames, file_fps, is_live
from edgeconv.runtime.capture import Capture
from edgeconv.runtime.confidence import NONE
from edgeconv.runtime.evaluate import UNSURE
from edgeconv.runtime.hotswap import HotModel
from edgeconv.runtime.quiet import one_line

BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 250, 500, 1000)
STREAM_WIDTH = 640  # frames are shrunk to this width for the preview
STREAM_FPS = 15  # the preview's frame rate at most: encoding every frame would slow the camera
ANSWERS = ("class", NONE, UNSURE)  # what /metrics counts answers by


class Stats:
    """Counters, an inference-time histogram and recent latencies; safe across threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.frames = self.errors = 0
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(BUCKETS_MS) + 1)
        self.total_ms = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=1000)
        self.answers = dict.fromkeys(ANSWERS, 0)

    def inference(self, ms: float, frame: bool, label: str | None = None) -> None:
        """One classified image; `label` is counted as a class, "none" or "unsure"."""
        with self.lock:
            self.frames += frame
            if label is not None:
                self.answers[label if label in (NONE, UNSURE) else "class"] += 1
            self.count += 1
            self.total_ms += ms
            self.recent.append(ms)
            self.buckets[next((i for i, le in enumerate(BUCKETS_MS) if ms <= le),
                              len(BUCKETS_MS))] += 1

    def request(self, route: str, code: int) -> None:
        with self.lock:
            self.requests[route, code] = self.requests.get((route, code), 0) + 1
            self.errors += code >= 400

    def percentiles(self) -> dict:
        with self.lock:
            recent = sorted(self.recent)
        if not recent:
            return {"p50_ms": None, "p95_ms": None}
        return {"p50_ms": round(statistics.median(recent), 3),
                "p95_ms": round(recent[round(0.95 * (len(recent) - 1))], 3)}

    def prometheus(self, extra: dict[str, float]) -> str:
        with self.lock:
            lines = ["# HELP edgeconv_frames_total Camera frames classified.",
                     "# TYPE edgeconv_frames_total counter",
                     f"edgeconv_frames_total {self.frames}",
                     "# HELP edgeconv_requests_total HTTP requests by route and status.",
                     "# TYPE edgeconv_requests_total counter"]
            lines += [f'edgeconv_requests_total{{route="{route}",code="{code}"}} {n}'
                      for (route, code), n in sorted(self.requests.items())]
            lines += ["# HELP edgeconv_errors_total HTTP requests answered with an error.",
                      "# TYPE edgeconv_errors_total counter",
                      f"edgeconv_errors_total {self.errors}",
                      "# HELP edgeconv_inference_ms Decode and inference time per image.",
                      "# TYPE edgeconv_inference_ms histogram"]
            cumulative = 0
            for le, n in zip((*map(str, BUCKETS_MS), "+Inf"), self.buckets):
                cumulative += n
                lines.append(f'edgeconv_inference_ms_bucket{{le="{le}"}} {cumulative}')
            lines += [f"edgeconv_inference_ms_sum {self.total_ms:.3f}",
                      f"edgeconv_inference_ms_count {self.count}",
                      "# HELP edgeconv_answers_total Images answered with a class, with "
                      "none (none of the classes) or unsure (under the min score).",
                      "# TYPE edgeconv_answers_total counter"]
            lines += [f'edgeconv_answers_total{{answer="{answer}"}} {n}'
                      for answer, n in self.answers.items()]
        for name, value in extra.items():
            kind = "counter" if name.endswith("_total") else "gauge"  # Prometheus' naming rule
            lines += [f"# TYPE edgeconv_{name} {kind}", f"edgeconv_{name} {value}"]
        return "\n".join(lines) + "\n"


class Live:
    """The camera's latest frame (JPEG) and prediction, handed to any number of viewers.

    The camera thread publishes; viewers wait on the server's event loop, which `publish`
    wakes (thread-safely) through one asyncio.Event, replaced after each wake."""

    def __init__(self, history: int = 20):
        self.lock = threading.Lock()
        self.events = self.frames = 0  # sequence numbers
        self.jpeg: bytes | None = None
        self.event: dict | None = None
        self.history: deque[dict] = deque(maxlen=history)
        self.frame_at: float | None = None  # monotonic time of the last prediction
        self.viewers = 0
        self.running = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the first viewer
        self.changed = asyncio.Event()

    def publish(self, jpeg: bytes | None, event: dict) -> None:
        with self.lock:
            self.event = event
            self.history.append(event)
            self.frame_at = time.monotonic()
            self.events += 1
            if jpeg is not None:
                self.jpeg = jpeg
                self.frames += 1
        self.wake()

    def wake(self) -> None:
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(self._wake_waiters)

    def _wake_waiters(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def _wait(self, newer: Callable[[], bool], timeout: float) -> None:
        loop = self.loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not newer() and (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def next_event(self, after: int, timeout: float) -> tuple[int, dict | None]:
        """Wait up to `timeout` for a prediction newer than `after`; (sequence, event)."""
        await self._wait(lambda: self.events > after, timeout)
        return self.events, self.event

    async def next_frame(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """Wait up to `timeout` for a frame newer than `after`; (sequence, jpeg)."""
        await self._wait(lambda: self.frames > after, timeout)
        return self.frames, self.jpeg


def encode_jpeg(frame: np.ndarray, width: int = STREAM_WIDTH, quality: int = 75) -> bytes:
    image = Image.fromarray(frame)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)),
                             Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class App:
    """What the handlers share: the model, the camera's output, counters and settings."""

    def __init__(self, model: HotModel, profile: str | None = None,
                 log: Callable[[str], None] | None = None, capture: Capture | None = None):
        self.model, self.profile, self.capture = model, profile, capture
        self.stats = Stats()
        self.live = Live()
        self.stop = threading.Event()
        self.fps = 0.0
        self.camera_started: float | None = None  # monotonic; None: serve has no camera
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def camera_loop(self, source: str, width: int | None, height: int | None,
                    every: int) -> None:
        """Classify the camera until stopped. A video file plays in real time, as a camera
        would deliver it, and again from the start when it ends."""
        self.live.running = True
        self.camera_started = time.monotonic()
        period = 0.0 if is_live(source) else every / file_fps(source)
        last_jpeg = 0.0
        try:
            while not self.stop.is_set():
                started, count = time.perf_counter(), 0
                for index, frame, prediction, _ in classified_frames(self.model, source, width,
                                                                     height, every):
                    count += 1
                    if period:  # wait for this frame's time in the file
                        self.stop.wait(max(0.0, started + count * period - time.perf_counter()))
                    self.fps = count / max(time.perf_counter() - started, 1e-9)
                    self.stats.inference(prediction.ms, frame=True, label=prediction.label)
                    if self.capture is not None:
                        self.capture.keep(frame, prediction, self.model, self.log)
                    jpeg = None
                    now = time.perf_counter()
                    if self.live.viewers and now - last_jpeg >= 1 / STREAM_FPS:
                        jpeg, last_jpeg = encode_jpeg(frame), now
                    self.live.publish(jpeg, {"frame": index, **prediction.as_dict(),
                                             "fps": round(self.fps, 2)})
                    if self.stop.is_set():
                        return
                if is_live(source) or count == 0:
                    self.log(f"camera {source}: stream ended")
                    return
        except Exception as error:  # noqa: BLE001  a broken camera must not take the API down
            self.log(f"camera {source}: stopped ({type(error).__name__}: {one_line(error)})")
        finally:
            self.live.running = False

    def info(self) -> dict:
        classifier = self.model.classifier
        return {"model": self.model.path.name, "metadata": classifier.metadata,
                "engine": classifier.engine.name, "threads": classifier.engine.threads,
                "interpreters": classifier.plan.interpreters,
                "min_score": classifier.min_score, "profile": self.profile,
                "uptime_s": round(time.time() - self.stats.started, 1),
                "frames": self.stats.frames, "camera": self.live.running,
                "fps": round(self.fps, 2), "model_swaps": self.model.swaps,
                "model_refused": self.model.refused,
                "capture": None if self.capture is None else self.capture.usage(),
                **self.stats.percentiles()}


    def frame_age(self) -> float | None:
        """Seconds since the camera's last frame (or its start); None without a camera."""
        if self.camera_started is None:
            return None
        return time.monotonic() - (self.live.frame_at or self.camera_started)

    def stopping(self) -> None:
        """The server is stopping: the camera ends, and so does every stream."""
        self.stop.set()
        self.live.wake()
