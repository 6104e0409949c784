"""The HTTP side of runtime/serve: routes, the rules on who may call them, and a limit on each
thing a client controls, as an ASGI app (Starlette's requests and responses) that
runtime/listener.py serves.

Every answer but the pages, the stream, the events, a kept frame's JPEG and the tar of the
labelled ones is one line of JSON (or Prometheus text); every refusal is {"error": ...} with
its status. A request passes, in order: a head within Limits.headers lines and
Limits.head_bytes (431), a Host this server is known by (421), not from another site (403), a
route (404) and method (405), the token (401, but for /healthz). The pages / and /label take
the token once as ?token=, then as a cookie. A handler's own exception is a 500 and one log
line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from edgeconv.runtime.capture import FRAME_ID, Capture, CaptureError, chunks
from edgeconv.runtime.classifier import Prediction
from edgeconv.runtime.confidence import NONE
from edgeconv.runtime.guard import COOKIE, FORM_TYPE, Guard, body_type_allowed, top_level_navigation
from edgeconv.runtime.listener import Limits
from edgeconv.runtime.preprocess import ImageBusy, ImageError
from edgeconv.runtime.quiet import one_line
from edgeconv.runtime.server import App

PAGE = Path(__file__).with_name("page.html")
LABEL_PAGE = Path(__file__).with_name("label.html")
PAGES = {"/": PAGE, "/label": LABEL_PAGE}  # each takes ?token= once, then the cookie
FIELD_FRAME = "/api/field/"  # + ID.jpg (GET) or ID (POST a label)
MAX_FORM_PARTS = 64  # a form holds one image; the page sends one part
MAX_STREAMS = 32  # /stream.mjpg and /events at once; each lasts as long as its viewer
ANSWER_S = 30.0  # decoding and inference, including the wait for a decoding slot
DECODE_WAIT_S = 10.0  # the most a decode waits for a slot (runtime.preprocess) before 503
SEND_S = 10.0  # a stream viewer that takes no data for this long is dropped
STALE_S = 5.0  # /healthz is 503 once the camera's last frame is older than this

ROUTES: dict[str, dict[str, str]] = {
    "/": {"GET": "page"},
    "/healthz": {"GET": "healthz"},
    "/api/info": {"GET": "info"},
    "/api/history": {"GET": "history"},
    "/api/classify": {"POST": "classify"},
    "/metrics": {"GET": "metrics"},
    "/stream.mjpg": {"GET": "stream"},
    "/events": {"GET": "events"},
    "/label": {"GET": "page"},
    "/api/field": {"GET": "field"},
    "/api/field.tar": {"GET": "field_tar"},
}
FRAME_ROUTE = {"GET": "field_frame", "POST": "field_label"}  # /api/field/ID[.jpg], ID checked
STREAMS = {"/stream.mjpg": "multipart/x-mixed-replace; boundary=frame",
           "/events": "text/event-stream"}


class Refusal(Exception):
    """An answer that is an error: raised anywhere in a handler, answered as JSON."""

    def __init__(self, status: int, message: str, headers: dict | None = None,
                 close: bool = False):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})
        if close:  # a body left unread is not the next request
            self.headers["Connection"] = "close"


def json_response(status: int, data: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(data).encode() + b"\n", status, {
        "Cache-Control": "no-store", **(headers or {})}, media_type="application/json")


def form_file(content_type: str, body: bytes) -> bytes:
    """The `file` field of a multipart/form-data body (python-multipart's parser; a form
    nested in a part is that part's bytes, so forms are one level deep)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ImageError("multipart form without a boundary")
    field = FileField()
    try:
        parser = MultipartParser(boundary, field.callbacks())
        parser.write(body)
        parser.finalize()
    except ImageError:
        raise
    except ValueError as error:  # python-multipart's FormParserError and its kind
        raise ImageError(f"malformed multipart form ({one_line(error, 200)})") from None
    if field.file is None:
        raise ImageError("multipart form has no 'file' field")
    return field.file


class FileField:
    """python-multipart callbacks that keep the first part named 'file', and refuse a form
    of more than MAX_FORM_PARTS parts as soon as the next one begins."""

    def __init__(self):
        self.parts = 0
        self.header_name = self.header_value = self.disposition = b""
        self.taking = False
        self.chunks: list[bytes] = []
        self.file: bytes | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value_part, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise ImageError(f"multipart form of over {MAX_FORM_PARTS} parts")
        self.disposition, self.taking = b"", False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_value_part(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def headers_finished(self) -> None:
        _, params = parse_options_header(self.disposition)
        self.taking = params.get(b"name") == b"file" and self.file is None

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.taking:
            self.chunks.append(data[start:end])

    def part_end(self) -> None:
        if self.taking:
            self.file, self.taking = b"".join(self.chunks), False


class Web:
    """The ASGI app that listener.serve runs."""

    def __init__(self, app: App, guard: Guard, max_body: int, limits: Limits):
        self.app, self.guard, self.max_body, self.limits = app, guard, max_body, limits
        self.body_budget = max(4 * max_body, 16 * 2**20)  # bodies held at once, in bytes
        self.bodies = 0  # bytes of bodies held now
        self.streams = 0
        self.pool = ThreadPoolExecutor(2 * (os.cpu_count() or 1) + 2,
                                       thread_name_prefix="classify")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        route = scope["raw_path"].decode("latin-1")
        try:
            response = await self.answer(request, route)
        except Refusal as refusal:
            response = json_response(refusal.status, {"error": refusal.message},
                                     refusal.headers)
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as error:  # noqa: BLE001  one line in the log, never a traceback
            self.app.log(f"{scope['method']} {route[:200]}: {type(error).__name__}: "
                         f"{one_line(error)}")
            response = json_response(500, {"error": "internal error (one line on it in the "
                                           "server's log)"}, {"Connection": "close"})
        self.app.stats.request(route if route in ROUTES else FIELD_FRAME + "ID" if  # one
                               is_frame_route(route) else "other",  # label for any path a
                               response.status_code)  # client makes up
        await response(scope, receive, send)

    async def answer(self, request: Request, route: str) -> Response:
        if request.scope["http_version"] not in ("1.0", "1.1"):
            raise Refusal(505, "HTTP/1.0 and HTTP/1.1 only", close=True)
        headers = request.headers
        lines = request.scope["headers"]
        if len(lines) > self.limits.headers or sum(len(name) + len(value) + 4 for name, value
                                                   in lines) > self.limits.head_bytes:
            raise Refusal(431, f"request head over {self.limits.headers} lines or "
                          f"{self.limits.head_bytes} bytes", close=True)
        host = headers.get("host", "")
        local = (request.scope.get("server") or (None,))[0]
        if not self.guard.host_allowed(host, local):
            raise Refusal(421, f"this server does not answer to Host {host[:100]!r}; "
                          "see serve --allow-host")
        if self.guard.cross_site(headers, host) and not (route in PAGES and
                                                         top_level_navigation(headers)):
            raise Refusal(403, "a request from another site is refused")
        methods = ROUTES.get(route) or (FRAME_ROUTE if is_frame_route(route) else None)
        if methods is None:
            raise Refusal(404, f"no route {route[:200]}")
        method = request.method
        if method not in methods and not (method == "HEAD" and "GET" in methods):
            raise Refusal(405, f"{method[:20]} not allowed on {route}",
                          {"Allow": ", ".join(methods)})
        query_token = request.query_params.get("token") if route in PAGES else None
        if route != "/healthz" and not self.guard.authorized(headers, request.cookies,
                                                             query_token):
            raise Refusal(401, "token required: Authorization: Bearer TOKEN, or open "
                          "/?token=TOKEN once", {"WWW-Authenticate": "Bearer"})
        response = await getattr(self, methods["GET" if method == "HEAD" else method])(request)
        if method == "HEAD" and isinstance(response, LiveStream):  # its head, not its stream
            return Response(b"", 200, {"Cache-Control": "no-store"}, media_type=STREAMS[route])
        return response

    # --- routes ----------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        route = request.scope["raw_path"].decode("latin-1")
        if request.query_params.get("token") and self.guard.token:  # remember; drop from URL
            return Response(b"", 303, {
                "Set-Cookie": f"{COOKIE}={self.guard.token}; HttpOnly; SameSite=Strict; Path=/",
                "Location": route, "Cache-Control": "no-store"}, media_type="text/plain")
        return Response(PAGES[route].read_bytes(), 200, {"Cache-Control": "no-store"},
                        media_type="text/html; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        age = self.app.frame_age()
        if age is not None and age > STALE_S:
            return json_response(503, {"error": f"the camera's last frame is {age:.0f} s old",
                                       "status": "stale", "camera": self.app.live.running})
        return json_response(200, {"status": "ok", "camera": self.app.live.running})

    async def info(self, request: Request) -> Response:
        return json_response(200, self.app.info())

    async def history(self, request: Request) -> Response:
        return json_response(200, {"predictions": list(self.app.live.history)})

    async def metrics(self, request: Request) -> Response:
        model = self.app.model
        extra = {"viewers": self.app.live.viewers, "model_swaps_total": model.swaps,
                 "model_refused_total": model.refused, "streams": self.streams,
                 "uptime_seconds": round(time.time() - self.app.stats.started, 1)}
        if self.app.capture is not None:
            usage = self.app.capture.usage()
            extra |= {"capture_frames": usage["frames"], "capture_bytes": usage["bytes"],
                      "capture_bytes_limit": usage["max_bytes"],
                      "capture_labelled": usage["labelled"],
                      "capture_saved_total": usage["saved"],
                      "capture_duplicates_total": usage["duplicate"],
                      "capture_rate_limited_total": usage["rate"],
                      "capture_full_total": usage["full"],
                      "capture_dropped_total": usage["dropped"],
                      "capture_errors_total": usage["errors"]}
        return Response(self.app.stats.prometheus(extra).encode(), 200,
                        {"Cache-Control": "no-store"}, media_type="text/plain; version=0.0.4")

    async def classify(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not body_type_allowed(content_type):
            raise Refusal(415, f"Content-Type {content_type[:100]!r} is not an image: send "
                          "image/jpeg, image/png... or a multipart form with a 'file' field",
                          close=True)
        async with self.body(request) as body:
            try:
                prediction = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                    self.pool, self.predict, content_type, body), ANSWER_S)
            except asyncio.TimeoutError:
                raise Refusal(503, f"no answer within {ANSWER_S:.0f} s; try again") from None
            except ImageBusy:
                raise Refusal(503, "busy decoding other images; try again") from None
            except ImageError as error:
                raise Refusal(400, str(error).replace("<bytes>: ", "")) from None
        self.app.stats.inference(prediction.ms, frame=False, label=prediction.label)
        return json_response(200, prediction.as_dict())

    def predict(self, content_type: str, body: bytes) -> Prediction:
        """In a worker thread: the image out of the body, decoded, classified."""
        if content_type.split(";", 1)[0].strip().lower() == FORM_TYPE:
            body = form_file(content_type, body)
        classifier = self.app.model.classifier
        started = time.perf_counter()
        image = classifier.load(body, wait=DECODE_WAIT_S)
        output = classifier.probabilities(image[None])[0]
        return classifier.decide(output, (time.perf_counter() - started) * 1000)

    @contextlib.asynccontextmanager
    async def body(self, request: Request) -> AsyncIterator[bytes]:
        """The request's whole body, held against the server's budget for bodies until the
        block ends: over --max-body is 413 (before reading, when the length is given), over
        the budget 503, not all there within Limits.body_s 408."""
        length = int(request.headers.get("content-length") or 0)  # h11 has checked it
        if length > self.max_body:  # refused before it is read
            raise Refusal(413, f"body of {length} bytes is over the {self.max_body}-byte "
                          "limit", close=True)
        held, chunks = [0], []

        async def receive_all() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise Refusal(413, f"body is over the {self.max_body}-byte limit",
                                  close=True)
                if size > held[0]:
                    wanted = max(size, length) - held[0]
                    if self.bodies + wanted > self.body_budget:
                        raise Refusal(503, "busy receiving other images; try again",
                                      close=True)
                    self.bodies += wanted
                    held[0] += wanted
                chunks.append(chunk)

        try:
            await asyncio.wait_for(receive_all(), self.limits.body_s)
        except asyncio.TimeoutError:
            self.bodies -= held[0]
            raise Refusal(408, f"the body did not arrive within {self.limits.body_s:g} s",
                          close=True) from None
        except BaseException:
            self.bodies -= held[0]
            raise
        try:
            yield b"".join(chunks)
        finally:
            self.bodies -= held[0]

    # --- the frames kept by --capture, labelled on /label ----------------------------------

    def capture(self) -> Capture:
        if self.app.capture is None:
            raise Refusal(404, "no capture folder: start serve with --capture DIR")
        return self.app.capture

    def field_labels(self) -> list[str]:
        return [*self.app.model.classifier.labels, NONE]

    async def field(self, request: Request) -> Response:
        capture = self.capture()
        return json_response(200, {"labels": self.field_labels(),
                                   "classes": self.app.model.classifier.labels,
                                   "frames": capture.listing(), "usage": capture.usage()})

    async def field_frame(self, request: Request) -> Response:
        name = request.scope["raw_path"].decode("latin-1").removeprefix(FIELD_FRAME)
        if not name.endswith(".jpg"):
            raise Refusal(404, f"no route {FIELD_FRAME}{name[:100]}")
        try:
            data = self.capture().jpeg(name.removesuffix(".jpg"))
        except CaptureError as error:
            raise Refusal(404, str(error)) from None
        return Response(data, 200, {"Cache-Control": "no-store"}, media_type="image/jpeg")

    async def field_label(self, request: Request) -> Response:
        """POST {"label": CLASS | "none" | null} labels a frame; null takes the label back."""
        frame_id = request.scope["raw_path"].decode("latin-1").removeprefix(FIELD_FRAME)
        capture = self.capture()
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise Refusal(415, 'send Content-Type application/json: {"label": "NAME"}',
                          close=True)
        async with self.body(request) as body:
            try:
                label = json.loads(body)["label"]
            except (ValueError, KeyError, TypeError):
                raise Refusal(400, 'the body is not {"label": "NAME"} (or null)') from None
        try:
            answer = capture.label(frame_id, label, self.field_labels())
        except CaptureError as error:
            raise Refusal(404 if str(error).startswith("no frame") else 400, str(error)
                          ) from None
        return json_response(200, answer)

    async def field_tar(self, request: Request) -> Response:
        """The labelled frames as a tar (built in a temporary file, then streamed). HEAD
        answers the headers only: a probe must not mark frames exported (they would be the
        first dropped to make room, never downloaded)."""
        capture = self.capture()
        if request.method == "HEAD":
            return Response(b"", 200, {"Cache-Control": "no-store"},
                            media_type="application/x-tar")
        spool = tempfile.TemporaryFile()  # noqa: SIM115  (closed when the stream ends)
        try:
            count = await asyncio.get_running_loop().run_in_executor(self.pool, capture.export,
                                                                     spool)
        except BaseException:
            spool.close()
            raise
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = "".join(c if c.isalnum() or c in "-." else "-" for c in capture.device)
        return StreamingResponse(closing_chunks(spool), 200, {
            "Cache-Control": "no-store", "X-Frames": str(count),
            "Content-Disposition": f'attachment; filename="field-{name}-{stamp}.tar"'},
            media_type="application/x-tar")

    async def stream(self, request: Request) -> Response:
        if self.app.camera_started is None:
            raise Refusal(404, "no camera: start serve with --camera")
        return self.live_stream(request, "/stream.mjpg")

    async def events(self, request: Request) -> Response:
        return self.live_stream(request, "/events")

    def live_stream(self, request: Request, route: str) -> Response:
        if self.streams >= MAX_STREAMS:
            raise Refusal(503, f"{MAX_STREAMS} streams are open already; try again later")
        return LiveStream(self, route)


def is_frame_route(path: str) -> bool:
    """/api/field/ID or /api/field/ID.jpg, ID a kept frame's name (runtime/capture.py)."""
    return path.startswith(FIELD_FRAME) and bool(FRAME_ID.fullmatch(
        path.removeprefix(FIELD_FRAME).removesuffix(".jpg")))


def closing_chunks(spool) -> Iterator[bytes]:
    try:
        yield from chunks(spool)
    finally:
        spool.close()


class LiveStream(Response):
    """The MJPEG frames or the events, as long as the viewer reads them and the server runs."""

    def __init__(self, web: Web, route: str):
        self.web, self.route, self.status_code = web, route, 200

    async def __call__(self, scope, receive, send) -> None:
        # Counted here, with no await since the handler checked the count: one event loop.
        self.web.streams += 1
        live, stop = self.web.app.live, self.web.app.stop
        gone = asyncio.Event()

        async def watch() -> None:  # the one message left is the viewer leaving
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        mjpeg = self.route == "/stream.mjpg"
        live.viewers += mjpeg
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", STREAMS[self.route].encode()),
                (b"cache-control", b"no-store")]})
            if not mjpeg:
                await self.write(send, b"retry: 2000\n\n")
            sequence = 0
            while not (stop.is_set() or gone.is_set()):
                if mjpeg:
                    newer, jpeg = await live.next_frame(sequence, timeout=5)
                    if jpeg is not None and newer != sequence:
                        await self.write(send, b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: " + str(len(jpeg)).encode() +
                                         b"\r\n\r\n" + jpeg + b"\r\n")
                else:
                    newer, event = await live.next_event(sequence, timeout=15)
                    await self.write(send, b": keep-alive\n\n" if newer == sequence or
                                     event is None else
                                     b"data: " + json.dumps(event).encode() + b"\n\n")
                sequence = newer
            await send({"type": "http.response.body", "body": b""})
        except asyncio.TimeoutError:
            pass  # a viewer that stopped reading: dropped (the connection closes)
        finally:
            live.viewers -= mjpeg
            self.web.streams -= 1
            watcher.cancel()

    @staticmethod
    async def write(send, data: bytes) -> None:
        await asyncio.wait_for(send({"type": "http.response.body", "body": data,
                                     "more_body": True}), SEND_S)
