"""The device's HTTP server: a live preview page, an image API, metrics, on the standard library.

One thread runs the camera (classify, then publish the latest frame and prediction); every
client gets a thread of its own that reads what was published last, so a slow or stalled
viewer only misses frames and never holds up the camera or anyone else. Inference goes through
the Classifier's lock; decoding a posted image does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import email.parser
import email.policy
import hmac
import io
import json
import os
import secrets
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from runtime.camera import classified_frames, file_fps, is_live
from runtime.hotswap import HotModel
from runtime.preprocess import ImageError

PAGE = Path(__file__).with_name("page.html")
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 250, 500, 1000)
COOKIE = "edgeconv_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STREAM_WIDTH = 640  # frames are shrunk to this width for the preview
STREAM_FPS = 15  # the preview's frame rate at most: encoding every frame would slow the camera
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt() parameters (malloc.h)


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

    def inference(self, ms: float, frame: bool) -> None:
        with self.lock:
            self.frames += frame
            self.count += 1
            self.total_ms += ms
            self.recent.append(ms)
            self.buckets[next((i for i, le in enumerate(BUCKETS_MS) if ms <= le),
                              len(BUCKETS_MS))] += 1

    def request(self, route: str, code: int) -> None:
        route = route if route in ROUTES else "other"  # one label for any path a client makes up
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
                      f"edgeconv_inference_ms_count {self.count}"]
        for name, value in extra.items():
            lines += [f"# TYPE edgeconv_{name} gauge", f"edgeconv_{name} {value}"]
        return "\n".join(lines) + "\n"


class Live:
    """The camera's latest frame (JPEG) and prediction, handed to any number of viewers.

    Two conditions on one lock: event listeners wake for every prediction, stream viewers
    only for a new frame."""

    def __init__(self, history: int = 20):
        lock = threading.Lock()
        self.new_event = threading.Condition(lock)
        self.new_frame = threading.Condition(lock)
        self.events = self.frames = 0  # sequence numbers
        self.jpeg: bytes | None = None
        self.event: dict | None = None
        self.history: deque[dict] = deque(maxlen=history)
        self.viewers = 0
        self.running = False

    def publish(self, jpeg: bytes | None, event: dict) -> None:
        with self.new_event:
            self.events += 1
            self.event = event
            self.history.append(event)
            self.new_event.notify_all()
            if jpeg is not None:
                self.frames += 1
                self.jpeg = jpeg
                self.new_frame.notify_all()

    def add_viewer(self, change: int) -> None:
        with self.new_frame:
            self.viewers += change

    def next_event(self, after: int, timeout: float) -> tuple[int, dict | None]:
        """Wait up to `timeout` for a prediction newer than `after`; (sequence, event)."""
        with self.new_event:
            self.new_event.wait_for(lambda: self.events > after, timeout)
            return self.events, self.event

    def next_frame(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """Wait up to `timeout` for a frame newer than `after`; (sequence, jpeg)."""
        with self.new_frame:
            self.new_frame.wait_for(lambda: self.frames > after, timeout)
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

    def __init__(self, model: HotModel, token: str | None, max_body: int,
                 profile: str | None = None, log: Callable[[str], None] | None = None):
        self.model, self.token, self.max_body, self.profile = model, token, max_body, profile
        self.stats = Stats()
        self.live = Live()
        self.stop = threading.Event()
        self.fps = 0.0
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def camera_loop(self, source: str, width: int | None, height: int | None,
                    every: int) -> None:
        """Classify the camera until stopped. A video file plays in real time, as a camera
        would deliver it, and again from the start when it ends."""
        self.live.running = True
        period = 0.0 if is_live(source) else every / file_fps(source)
        last_jpeg = 0.0
        try:
            while not self.stop.is_set():
                started, count = time.perf_counter(), 0
                for index, frame, prediction in classified_frames(self.model, source, width,
                                                                  height, every):
                    count += 1
                    if period:  # wait for this frame's time in the file
                        self.stop.wait(max(0.0, started + count * period - time.perf_counter()))
                    self.fps = count / max(time.perf_counter() - started, 1e-9)
                    self.stats.inference(prediction.ms, frame=True)
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
            self.log(f"camera {source}: stopped ({error})")
        finally:
            self.live.running = False

    def info(self) -> dict:
        classifier = self.model.classifier
        return {"model": self.model.path.name, "metadata": classifier.metadata,
                "engine": classifier.engine.name, "threads": classifier.engine.threads,
                "min_score": classifier.min_score, "profile": self.profile,
                "uptime_s": round(time.time() - self.stats.started, 1),
                "frames": self.stats.frames, "camera": self.live.running,
                "fps": round(self.fps, 2), "model_swaps": self.model.swaps,
                "model_refused": self.model.refused,
                **self.stats.percentiles()}


class Handler(BaseHTTPRequestHandler):
    """One client connection. Routes: see ROUTES; every answer but the page, the stream and
    the events is JSON (or Prometheus text)."""

    app: App  # set on the subclass that serve() makes
    timeout = 10  # seconds a client may stall a read or a write before it is dropped
    protocol_version = "HTTP/1.1"
    server_version = "edgeconv"
    route = ""  # until the request line is read
    body_unread = False  # a body the answer leaves behind: the connection is closed after it

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base's signature)
        pass  # one line per request would drown the camera's log; /metrics counts them

    def handle(self) -> None:
        # A client that went away or stalled mid-request: nobody to answer, nothing to log.
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line or headers, an
        unknown method or version) as the same one-line JSON errors as every other answer."""
        self.close_connection = True  # after a malformed request the stream cannot be trusted
        if self.request_version == "HTTP/0.9":  # a request line it could not read at all
            self.request_version = "HTTP/1.0"  # still answer with a status line
        self.error(code, message or self.responses.get(code, ("error",))[0])

    # --- plumbing ---------------------------------------------------------------------------

    def send_body(self, code: int, body: bytes, content_type: str,
                  headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.body_unread:
            self.close_connection = True  # the body left behind is not the next request
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.app.stats.request(self.route, code)

    def start_stream(self, content_type: str) -> None:
        """Headers of an answer that lasts until the client leaves (no length, no reuse)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.app.stats.request(self.route, 200)
        self.close_connection = True

    def send_json(self, code: int, data: dict, headers: dict | None = None) -> None:
        self.send_body(code, json.dumps(data).encode() + b"\n", "application/json", headers)

    def error(self, code: int, message: str, headers: dict | None = None) -> None:
        self.send_json(code, {"error": message}, headers)

    def authorized(self) -> bool:
        token = self.app.token
        if token is None:
            return True
        offered = []
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            offered.append(header[len("Bearer "):].strip())
        # By hand: SimpleCookie raises on the odd cookies other localhost apps may set.
        for pair in self.headers.get("Cookie", "").split(";"):
            name, _, value = pair.strip().partition("=")
            if name == COOKIE:
                offered.append(value)
        offered += self.query.get("token", [])
        return any(hmac.compare_digest(value.encode(), token.encode()) for value in offered)

    def dispatch(self) -> None:
        self.body_unread = "Transfer-Encoding" in self.headers or \
            self.headers.get("Content-Length", "0").strip() != "0"
        try:
            parts = urlsplit(self.path)
        except ValueError as error:  # e.g. "http://[": an address that is not one
            return self.error(400, f"bad request target ({error})")
        self.route, self.query = parts.path, parse_qs(parts.query)
        routes = ROUTES.get(self.route)
        if routes is None:
            self.error(404, f"no route {self.route}")
        elif self.command not in routes and not (self.command == "HEAD" and "GET" in routes):
            self.error(405, f"{self.command} not allowed on {self.route}",
                       {"Allow": ", ".join(routes)})
        elif self.route != "/healthz" and not self.authorized():
            self.error(401, "token required: Authorization: Bearer TOKEN, or open "
                       "/?token=TOKEN once", {"WWW-Authenticate": "Bearer"})
        else:
            getattr(self, routes[self.command if self.command in routes else "GET"])()

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = dispatch

    # --- routes ----------------------------------------------------------------------------

    def page(self) -> None:
        headers = {}
        if self.query.get("token") and self.app.token:  # remember it; drop it from the URL
            headers = {"Set-Cookie": f"{COOKIE}={self.app.token}; HttpOnly; SameSite=Strict; "
                       "Path=/", "Location": "/"}
            self.send_body(303, b"", "text/plain", headers)
            return
        self.send_body(200, PAGE.read_bytes(), "text/html; charset=utf-8")

    def healthz(self) -> None:
        self.send_json(200, {"status": "ok", "camera": self.app.live.running})

    def info(self) -> None:
        self.send_json(200, self.app.info())

    def metrics(self) -> None:
        extra = {"viewers": self.app.live.viewers, "model_swaps_total": self.app.model.swaps,
                 "uptime_seconds": round(time.time() - self.app.stats.started, 1)}
        self.send_body(200, self.app.stats.prometheus(extra).encode(),
                       "text/plain; version=0.0.4")

    def read_body(self) -> bytes | None:
        """The request's whole body, or None once the reason it cannot be had is answered."""
        if "Transfer-Encoding" in self.headers:
            return self.error(411, "send a Content-Length (Transfer-Encoding bodies such as "
                              "chunked are not accepted)")
        lengths = {value.strip() for value in self.headers.get_all("Content-Length", [])}
        if not lengths:
            return self.error(411, "Content-Length required")
        text = lengths.pop() if len(lengths) == 1 else ""  # two that disagree: no length
        if not (text.isascii() and text.isdigit()):
            return self.error(400, "Content-Length must be one whole number of bytes")
        length = int(text)
        if length > self.app.max_body:  # refused before it is read
            return self.error(413, f"body of {length} bytes is over the "
                              f"{self.app.max_body}-byte limit")
        body = self.rfile.read(length)
        if len(body) < length:
            return self.error(400, f"body ended after {len(body)} of {length} bytes")
        self.body_unread = False
        return body

    def classify(self) -> None:
        body = self.read_body()
        if body is None:
            return
        try:
            data = self.image_bytes(body)
            classifier = self.app.model.classifier
            started = time.perf_counter()
            image = classifier.load(data)
            output = classifier.probabilities(image[None])[0]
            prediction = classifier.decide(output, (time.perf_counter() - started) * 1000)
        except ImageError as error:
            return self.error(400, str(error).replace("<bytes>: ", ""))
        self.app.stats.inference(prediction.ms, frame=False)
        self.send_json(200, prediction.as_dict())

    def image_bytes(self, body: bytes) -> bytes:
        """The image in a raw body, or in the `file` field of a multipart form."""
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            return body
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        for part in message.iter_parts() if message.is_multipart() else ():
            if part.get_param("name", header="content-disposition") == "file":
                return part.get_payload(decode=True) or b""
        raise ImageError("multipart form has no 'file' field")

    def stream(self) -> None:
        if not self.app.live.running and self.app.live.jpeg is None:
            return self.error(404, "no camera: start serve with --camera")
        self.start_stream("multipart/x-mixed-replace; boundary=frame")
        self.app.live.add_viewer(+1)
        try:
            sequence = 0
            while not self.app.stop.is_set():
                newer, jpeg = self.app.live.next_frame(sequence, timeout=5)
                if jpeg is None or newer == sequence:
                    continue
                sequence = newer
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
        finally:
            self.app.live.add_viewer(-1)

    def events(self) -> None:
        self.start_stream("text/event-stream")
        self.wfile.write(b"retry: 2000\n\n")
        self.wfile.flush()
        sequence = 0
        while not self.app.stop.is_set():
            newer, event = self.app.live.next_event(sequence, timeout=15)
            if newer == sequence or event is None:
                self.wfile.write(b": keep-alive\n\n")  # also finds clients that went away
            else:
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
            sequence = newer

    def history(self) -> None:
        self.send_json(200, {"predictions": list(self.app.live.history)})


ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "page"},
    "/healthz": {"GET": "healthz"},
    "/api/info": {"GET": "info"},
    "/api/history": {"GET": "history"},
    "/api/classify": {"POST": "classify"},
    "/metrics": {"GET": "metrics"},
    "/stream.mjpg": {"GET": "stream"},
    "/events": {"GET": "events"},
}


def steady_malloc() -> None:
    """Keep a long-running server's memory flat under glibc (a no-op elsewhere).

    Every client gets a thread, and glibc may give each thread a malloc arena of its own; and
    once a large block (a posted image) is freed, glibc raises the size above which blocks are
    mmapped, so later large blocks land in those arenas and fragment them. Left alone, the
    server's RSS creeps up by megabytes per thousand requests. Two arenas and a fixed mmap
    threshold keep it within a few MB over 10,000 (docs/reliability.md)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 2)
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored at `path`, or a new one written there with 0600; (token, created)."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never keeps the process alive
    # Connections waiting for accept(): the default 5 drops a burst of clients while the
    # accepting thread waits its turn for the interpreter (they retry a second later, or fail).
    request_queue_size = 128


def make_server(app: App, host: str, port: int) -> Server:
    return Server((host, port), type("BoundHandler", (Handler,), {"app": app}))
