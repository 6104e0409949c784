#!/usr/bin/env python3
"""Hostile HTTP for runtime/serve: random and malformed requests, slow and vanishing clients,
tabulated (case, tried, crashes, hangs, wrong answers, data lost) with the server's memory.

  python tests/reliability/fuzz_serve.py [--requests 10000] [--seed 0] [--model MODEL]

Starts the real server (token required, 1 MB body limit) on a free loopback port and sends a
seeded mix of CASES from a pool of client threads, while GET /healthz must answer within
HEALTHY_S every second. A request the server must refuse gets a 4xx (501/505 for a method or
an HTTP version it does not implement, as HTTP says) whose body is one line of JSON
{"error": ...}; a good request gets its answer; an image body gets what the Python API gives
for the same bytes (the label and scores, or its error), a good image answered otherwise is
data lost. A crash is the process dying or a traceback in its log; a hang, no answer within
HANG_S to a client that behaved, or a stalled client's connection still open well after the
server's own timeout. The server's RSS is read after 1,000 requests and after the last.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import random
import secrets
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import attacks

import edgeconv.benchmarks.server as serve_process
from edgeconv.benchmarks.server import Server
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.listener import Limits
from edgeconv.runtime.preprocess import ImageError
from edgeconv.runtime.tables import markdown_table
from edgeconv.runtime.web import ROUTES

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 30  # a client that behaved waits this long for its answer
HEALTHY_S = 5  # GET /healthz must answer within this, whatever the other clients do
HEAD_S, BODY_S = 10, 10  # the server's deadlines for a request's head and body in this run
DROP_S = BODY_S + 10  # a stalled client must be answered or dropped by then
HEAD_BYTES, HEADER_LINES = Limits.head_bytes, Limits.headers
MAX_BODY_MB = 1
RSS_GROWTH_MB = 5
PHOTO = ROOT / "devices" / "selftest" / "cat.jpg"
STREAMS = ("text/event-stream", "multipart/x-mixed-replace")


# --- talking to the server -------------------------------------------------------------------

@dataclass
class Answer:
    status: int | None = None  # None: the server closed the connection without answering
    headers: http.client.HTTPMessage | None = None
    body: bytes = b""
    hung: bool = False
    garbled: bytes = b""  # what came instead of an HTTP answer


def read_answer(file: io.BufferedReader, method: str = "GET") -> Answer:
    """One answer from `file`; the server always sends a Content-Length but for streams."""
    try:
        status = 100
        while 100 <= status < 200:  # skip "100 Continue"
            line = file.readline(65537)
            if not line:
                return Answer()
            words = line.split(None, 2)
            if len(words) < 2 or not words[0].startswith(b"HTTP/1.") or not words[1].isdigit():
                return Answer(garbled=line[:80])
            status = int(words[1])
            headers = http.client.parse_headers(file)
        if method == "HEAD" or headers.get("Content-Type", "").startswith(STREAMS):
            return Answer(status, headers)
        if not (headers.get("Content-Length") or "").isdigit():
            return Answer(status, headers, garbled=b"no Content-Length")
        return Answer(status, headers, file.read(int(headers["Content-Length"])))
    except TimeoutError:
        return Answer(hung=True)
    except (ConnectionError, http.client.HTTPException):
        return Answer()


def exchange(port: int, chunks: bytes | list[bytes], method: str = "GET", gap: float = 0.0,
             half_close: bool = False, wait_s: float = HANG_S) -> Answer:
    """Send `chunks` (sleeping `gap` between them) on a new connection and read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        try:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                sock.sendall(chunk)
                time.sleep(gap)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early (a refusal) and closed: read its answer
        with sock.makefile("rb") as file:
            return read_answer(file, method)


def request(method: str, target: str, headers: list[tuple[str, str | None]] | None = None,
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """A request's bytes, headers as given (latin-1; a None value writes the name alone)."""
    lines = [f"{method} {target} {version}", *(name if value is None else f"{name}: {value}"
                                               for name, value in headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- what a right answer is ------------------------------------------------------------------

def check(answer: Answer, allowed: set[str], method: str = "GET") -> tuple[str, str]:
    """('ok' | 'hang' | 'wrong', why) for an answer that may be any of `allowed`:
    'answer' (2xx/3xx), 'refusal' (4xx, or 501/505, with a one-line JSON error), 'drop'."""
    if answer.hung:
        return "hang", f"no answer in {HANG_S} s"
    if answer.garbled:
        return "wrong", f"not an HTTP answer: {answer.garbled!r}"
    if answer.status is None:
        return ("ok", "") if "drop" in allowed else ("wrong", "closed without an answer")
    status = answer.status
    if status >= 500 and status not in (501, 505):
        return "wrong", f"{status}: {answer.body[:200]!r}"
    if status >= 400:
        lines = answer.body.splitlines()
        try:
            error = json.loads(answer.body)["error"] if len(lines) == 1 else None
        except (ValueError, KeyError, TypeError):
            error = None
        if method != "HEAD" and not (isinstance(error, str) and error and
                                     answer.headers["Content-Type"] == "application/json"):
            return "wrong", f"{status} without a one-line JSON error: {answer.body[:200]!r}"
        if "refusal" not in allowed:
            return "wrong", f"{status} {answer.body[:200]!r} to a good request"
    elif "answer" not in allowed:
        return "wrong", f"{status} to a request that must be refused"
    return "ok", ""


class Oracle:
    """What the Python API says about an image body: a prediction dict or an error line."""

    def __init__(self, model: Path):
        self.classifier = Classifier(model)
        self.lock = threading.Lock()

    def __call__(self, body: bytes) -> dict | str:
        with self.lock:
            try:
                image = self.classifier.load(body)
            except ImageError as error:
                return str(error).replace("<bytes>: ", "")
            return self.classifier.decide(self.classifier.probabilities(image[None])[0]
                                          ).as_dict()


def check_classify(answer: Answer, expected: dict | str) -> tuple[str, str]:
    """A POST /api/classify answer against the Python API's verdict on the same image bytes."""
    if isinstance(expected, str):  # not an image: refused with the same reason
        verdict, why = check(answer, {"refusal"})
        if verdict == "ok" and (answer.status != 400 or
                                json.loads(answer.body)["error"] != expected):
            return "wrong", f"{answer.status} {answer.body[:200]!r}, expected 400 {expected!r}"
        return verdict, why
    verdict, why = check(answer, {"answer"})
    if verdict == "hang":
        return verdict, why
    got = json.loads(answer.body) if verdict == "ok" else {}
    scores = got.get("scores") or {}
    if got.get("label") != expected["label"] or any(
            abs(scores.get(label, -1.0) - score) > 1e-6 for label, score in
            expected["scores"].items()):
        return "lost", f"a good image answered {answer.status} {answer.body[:200]!r}"
    return "ok", ""


def oracle_route(method: str, target: str, authorized: bool) -> set[str]:
    """What a body-less request may get: the server's ROUTES, read the way it reads them."""
    route = target.split("?", 1)[0]  # the raw path, as the server matches it
    routes = ROUTES.get(route, {})
    if not (method in routes or (method == "HEAD" and "GET" in routes)):
        return {"refusal"}
    if (route != "/healthz" and not authorized) or route in (
            "/api/classify", "/stream.mjpg", "/api/field", "/api/field.tar"):
        return {"refusal"}  # no token, no body, no camera, no --capture
    return {"answer"}


# --- the cases -------------------------------------------------------------------------------

@dataclass
class Target:
    port: int
    token: str
    oracle: Oracle
    images: list[bytes]  # good ones, in several formats
    bombs: dict[str, bytes]  # name -> a decoding bomb (see bombs())

    def host(self) -> list[tuple[str, str]]:
        return [("Host", f"127.0.0.1:{self.port}")]

    def auth(self, image: bool = False) -> list[tuple[str, str]]:
        """Host and token; with `image`, a Content-Type for a raw image body."""
        return [*self.host(), ("Authorization", f"Bearer {self.token}"),
                *([("Content-Type", "image/jpeg")] if image else [])]


Outcome = tuple[str, str]  # (verdict, why)
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'"


def junk(rng: random.Random, size: int, alphabet: str | None = None) -> str:
    """`size` random characters: of `alphabet`, or any latin-1 character but CR and LF."""
    if alphabet:
        return "".join(rng.choices(alphabet, k=size))
    return "".join(chr(rng.choice([c for c in range(1, 256) if c not in (10, 13)]))
                   for _ in range(size))


def random_target(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(list(ROUTES))
    if kind == 1:
        return rng.choice(list(ROUTES)) + "?" + junk(rng, rng.randrange(200), TOKEN_CHARS + "=&%")
    if kind == 2:
        return "/" + junk(rng, rng.randrange(1, 300)).replace(" ", "%20")
    if kind == 3:
        return rng.choice(["//[", "http://[::1/healthz", "http://[", "//healthz", "*",
                           "http://x/healthz", "/%ZZ", "/../..", "/healthz#frag",
                           "/api/classify/", "//", "?", "/healthz;x", "%"])
    if kind == 4:
        return "/" + "a" * rng.randrange(1000, 70000)
    return "/" + "/".join(rng.choice(["api", "..", ".", "%2e", "healthz", "", "\x7f"])
                          for _ in range(rng.randrange(1, 8)))


def case_method_path(rng: random.Random, target: Target) -> Outcome:
    method = rng.choice(["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                         "TRACE", junk(rng, rng.randrange(1, 12), TOKEN_CHARS[:52])])
    path = random_target(rng)
    authorized = rng.random() < 0.8
    headers = target.auth() if authorized else target.host()
    answer = exchange(target.port, request(method, path, headers), method)
    if len(path) > 65536 - 20:  # the request line is over the standard library's limit
        return check(answer, {"refusal"}, method)
    allowed = oracle_route(method, path, authorized)
    if path.startswith("/events") and "answer" in allowed:
        allowed.add("drop")  # the stream stays open: the server may close it on us
    return check(answer, allowed, method)


def case_headers(rng: random.Random, target: Target) -> Outcome:
    kind = rng.choice(["healthz", "info", "classify"])
    headers: list[tuple[str, str | None]] = target.auth()
    too_long = refused = ambiguous = False
    for _ in range(rng.randrange(1, 20)):
        twist = rng.randrange(12)
        if twist == 0:
            value = junk(rng, 40)
            headers.append((junk(rng, rng.randrange(1, 30), TOKEN_CHARS), value))
            # h11 takes any byte in a value but NUL and whitespace other than space and tab
            refused |= any(c in "\x0b\x0c" for c in value)
        elif twist == 1:
            headers.append(("X-Huge", "h" * rng.randrange(70000, 100000)))
        elif twist == 2:
            headers += [(f"X-{n}", "v") for n in range(101)]
        elif twist == 3:
            headers.append(("Cookie", junk(rng, rng.randrange(200), TOKEN_CHARS + '=;," \\')))
        elif twist == 4:
            headers = [h for h in headers if h[0] != "Authorization"]
            headers.append(("Authorization", rng.choice(["Bearer", "Bearer ", "Basic eA==",
                                                         "Bearer " + junk(rng, 30)])))
            refused |= kind != "healthz"  # 401
        elif twist == 5:
            headers.append(("Expect", junk(rng, 10, TOKEN_CHARS)))  # ignored, as HTTP allows
        elif twist == 6:
            headers.append(("Expect", "100-continue"))
        elif twist == 7:
            headers.append(("Connection", rng.choice(["close", "keep-alive", "upgrade", "x"])))
        elif twist == 8:
            headers.append((" Folded", "value"))  # continues the header before it
            ambiguous = True
        elif twist == 9:
            headers.append(("No colon " + junk(rng, 5, TOKEN_CHARS), None))
            ambiguous = True  # the headers after it are lost: maybe the token or the length
        elif twist == 10:
            headers += [(f"X-Long-{n}", "l" * 8000) for n in range(rng.randrange(1, 60))]
        else:
            headers.append(("Host", junk(rng, 20)))  # two Host headers: refused
            refused = True
    image = rng.choice(target.images)
    if kind == "classify":
        headers = [("Content-Length", str(len(image))), ("Content-Type", "image/png"), *headers]
        raw = request("POST", "/api/classify", headers, image)
    else:
        raw = request("GET", "/healthz" if kind == "healthz" else "/api/info", headers)
    too_long |= len(headers) > HEADER_LINES or sum(
        len(name) + len(value or "") + 4 for name, value in headers) > HEAD_BYTES
    answer = exchange(target.port, raw, half_close=kind == "classify")
    if too_long:
        return check(answer, {"refusal"})
    if ambiguous:
        return check(answer, {"answer", "refusal"})
    if refused:
        return check(answer, {"refusal"})
    return check_classify(answer, target.oracle(image)) if kind == "classify" else \
        check(answer, {"answer"})


def case_content_length(rng: random.Random, target: Target) -> Outcome:
    image = rng.choice(target.images)
    length = rng.choice(["-1", "-99999", "abc", "", "1e3", "+12", "0x10", "1_000", "12.0",
                         "\xef\xbc\x91\xef\xbc\x92", "9" * 30, f"{len(image)}, {len(image) + 1}",
                         f"-{len(image)}", f"{len(image)}x"])
    headers = [*target.auth(True), ("Content-Length", length)]
    if rng.random() < 0.3:  # two lengths that disagree
        headers = [*target.auth(True), ("Content-Length", str(len(image))),
                   ("Content-Length", str(rng.randrange(len(image))))]
    answer = exchange(target.port, request("POST", "/api/classify", headers, image),
                      half_close=True)
    return check(answer, {"refusal"})


def case_short_body(rng: random.Random, target: Target) -> Outcome:
    """Less body than Content-Length says; the client then stops writing, or just waits."""
    image = rng.choice(target.images)
    sent = image[:rng.randrange(len(image))]
    waits = rng.random() < 0.15
    answer = exchange(target.port, request("POST", "/api/classify", [
        *target.auth(True), ("Content-Length", str(len(image)))], sent), half_close=not waits,
        wait_s=DROP_S if waits else HANG_S)
    return check(answer, {"refusal", "drop"} if waits else {"refusal"})


def chunked(data: bytes, rng: random.Random) -> bytes:
    out = b""
    while data:
        size = rng.randrange(1, 70000)
        out += f"{size if size <= len(data) else len(data):x}\r\n".encode() + \
            data[:size] + b"\r\n"
        data = data[size:]
    return out + b"0\r\n\r\n"


def case_transfer_encoding(rng: random.Random, target: Target) -> Outcome:
    image = rng.choice(target.images)
    coding = rng.choice(["chunked", "Chunked", "gzip, chunked", "gzip", "identity", "x"])
    headers = [*target.auth(True), ("Transfer-Encoding", coding)]
    if rng.random() < 0.5:
        headers.append(("Content-Length", str(len(image))))
    body = chunked(image, rng) if "hunked" in coding else image
    answer = exchange(target.port, request("POST", "/api/classify", headers, body),
                      half_close=True)
    if coding.lower() == "chunked":
        return check_classify(answer, target.oracle(image))
    return check(answer, {"refusal"})


def case_random_body(rng: random.Random, target: Target) -> Outcome:
    size = int(2 ** rng.uniform(0, 21))  # up to 2 MB, over the 1 MB limit
    magic = rng.choice([b"", b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM",
                        b"RIFF\0\0\0\0WEBP", b"II*\0", b"\0\0\0\x18ftypheic"])
    body = magic + rng.randbytes(size)
    answer = exchange(target.port, request("POST", "/api/classify", [
        *target.auth(True), ("Content-Length", str(len(body)))], body), half_close=True)
    if len(body) > MAX_BODY_MB * 1_000_000:
        return check(answer, {"refusal"})
    return check_classify(answer, target.oracle(body))


def mutated(image: bytes, rng: random.Random) -> bytes:
    data = bytearray(image)
    if rng.random() < 0.3:
        del data[rng.randrange(1, len(data)):]
    for _ in range(rng.choice([1, 4, 16, 64])):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def case_mutated_image(rng: random.Random, target: Target) -> Outcome:
    body = mutated(rng.choice(target.images), rng)
    answer = exchange(target.port, request("POST", "/api/classify", [
        *target.auth(True), ("Content-Length", str(len(body)))], body), half_close=True)
    return check_classify(answer, target.oracle(body))


BOUNDARY_CHARS = TOKEN_CHARS + "()+,/:=?"


def form(file: bytes, rng: random.Random, boundary: str | None = None) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart form holding `file` as field 'file', and maybe
    other fields around it."""
    boundary = boundary or junk(rng, rng.randrange(1, 70), BOUNDARY_CHARS)
    parts = []
    if rng.random() < 0.3:
        parts.append(b'Content-Disposition: form-data; name="note"\r\n\r\nhello')
    filename = rng.choice(['; filename="cat.jpg"', "", '; filename="\xe9t\xe9.jpg"'])
    parts.append(f'Content-Disposition: form-data; name="file"{filename}\r\n'
                 f"Content-Type: {rng.choice(['image/jpeg', 'application/octet-stream'])}"
                 "\r\n\r\n".encode("latin-1") + file)
    if rng.random() < 0.3:
        parts.append(b'Content-Disposition: form-data; name="after"\r\n\r\nbye')
    delimiter = f"--{boundary}".encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
    media = rng.choice(["multipart/form-data"] * 4 + ["Multipart/Form-Data"])
    return f'{media}; boundary="{boundary}"', body


def post_form(target: Target, content_type: str, body: bytes) -> Answer:
    return exchange(target.port, request("POST", "/api/classify", [
        *target.auth(), ("Content-Type", content_type), ("Content-Length", str(len(body)))],
        body), half_close=True)


def case_good_image(rng: random.Random, target: Target) -> Outcome:
    image = rng.choice(target.images)
    if rng.random() < 0.5:
        answer = exchange(target.port, request("POST", "/api/classify", [
            *target.auth(True), ("Content-Length", str(len(image)))], image))
    else:
        answer = post_form(target, *form(image, rng))
    return check_classify(answer, target.oracle(image))


def case_bad_form(rng: random.Random, target: Target) -> Outcome:
    image = rng.choice(target.images)
    content_type, body = form(image, rng, "edgeconv-boundary")
    kind = rng.randrange(9)
    if kind == 0:
        content_type = "multipart/form-data"  # no boundary
    elif kind == 1:
        content_type = "multipart/form-data; boundary=other"
    elif kind == 2:
        body = body[:rng.randrange(len(body))]  # cut mid-part: maybe still an image
        return check(post_form(target, content_type, body), {"answer", "refusal"})
    elif kind == 3:
        body = body.replace(b'name="file"', b'name="image"')
    elif kind == 4:
        content_type = "multipart/form-data; boundary=" + rng.choice(
            ['""', '"', "a" * 500, junk(rng, 30), ";;;", "x; boundary=y"])
    elif kind == 5:
        body = body.replace(b"Content-Type: ", b"Content-Transfer-Encoding: " + rng.choice(
            [b"base64", b"quoted-printable", b"x-uuencode", b"7bit", b"junk"]) + b"\r\nX: ")
        return check(post_form(target, content_type, body), {"answer", "refusal"})
    elif kind == 6:
        body = rng.randbytes(rng.randrange(1, 5000))
    elif kind == 7:
        nested, inner = form(image, rng, "inner")
        body = (b"--edgeconv-boundary\r\nContent-Disposition: form-data; name=\"file\"\r\n"
                b"Content-Type: " + nested.encode() + b"\r\n\r\n" + inner +
                b"\r\n--edgeconv-boundary--\r\n")
        return check(post_form(target, content_type, body), {"answer", "refusal"})
    else:  # over the 64 parts a form may have
        body = b"".join(b"--edgeconv-boundary\r\nContent-Disposition: form-data; name=\"n%d\"\r\n"
                        b"\r\nx\r\n" % n for n in range(rng.randrange(64, 3000))) + body
    return check(post_form(target, content_type, body), {"refusal"})


def case_request_line(rng: random.Random, target: Target) -> Outcome:
    kind = rng.randrange(6)
    if kind == 0:
        line = junk(rng, rng.randrange(1, 200)).encode("latin-1")
        if line.startswith(b"GET ") or not line.strip():
            line = b"X" + line  # an HTTP/0.9 GET is answered without a status line
        answer = exchange(target.port, line + b"\r\n\r\n")
        return check(answer, {"refusal", "drop"})
    if kind == 1:
        raw = request("GET", "/healthz", target.auth(), version=rng.choice(
            ["HTTP/2.0", "HTTP/1.1.1", "HTTP/x", "HTTPS/1.1", "HTTP/1", "HTTP/11111111111.1"]))
    elif kind == 2:
        raw = request("GET", "/" + "a" * rng.randrange(65536, 100000), target.auth())
    elif kind == 3:
        raw = request(rng.choice(["get", "Get", "G\x01T", "BREW"]), "/healthz", target.auth())
    elif kind == 4:
        raw = b"GET /healthz HTTP/1.1 extra\r\n\r\n"
    else:
        raw = b"POST /api/classify\r\n\r\n"  # HTTP/0.9 knows only GET
    return check(exchange(target.port, raw), {"refusal"})


def case_trickle(rng: random.Random, target: Target) -> Outcome:
    """A good request sent a few bytes at a time, at most about 3 s in all."""
    image = target.images[-1]  # the smallest
    if rng.random() < 0.5:
        raw = request("POST", "/api/classify", [
            *target.auth(True), ("Content-Length", str(len(image)))], image)
    else:
        raw = request("GET", "/api/info", target.auth())
    size = max(1, len(raw) // 60)
    chunks = [raw[i:i + size] for i in range(0, len(raw), size)]
    answer = exchange(target.port, chunks, gap=rng.uniform(0, 0.05))
    return check_classify(answer, target.oracle(image)) if raw.startswith(b"POST") else \
        check(answer, {"answer"})


def case_stalled(rng: random.Random, target: Target) -> Outcome:
    """Connects and says nothing, or starts a request and stops: must be dropped in time."""
    raw = request("POST", "/api/classify", [*target.auth(True), ("Content-Length", "100")])
    sent = rng.choice([b"", raw[:rng.randrange(1, len(raw))]])
    answer = exchange(target.port, sent, wait_s=DROP_S)
    if answer.hung:
        return "hang", f"still open after {DROP_S} s with {len(sent)} bytes sent"
    return check(answer, {"refusal", "drop"})


def case_vanish(rng: random.Random, target: Target) -> Outcome:
    """A request, then the client goes away (maybe with a reset) before reading it all."""
    image = rng.choice(target.images)
    raw = rng.choice([request("GET", "/", target.auth()),
                      request("GET", "/metrics", target.auth()),
                      request("GET", "/events", target.auth()),
                      request("POST", "/api/classify", [
                          *target.auth(True), ("Content-Length", str(len(image)))], image),
                      request("POST", "/api/classify", [
                          *target.auth(True), ("Content-Length", str(len(image)))], image[:100]),
                      b"NOT HTTP AT ALL\r\n\r\n"])
    with socket.create_connection(("127.0.0.1", target.port), timeout=HANG_S) as sock:
        if rng.random() < 0.5:  # close with a reset, not a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.sendall(raw)
            time.sleep(rng.choice([0, 0, 0.001, 0.01, 0.1]))
            sock.recv(rng.choice([1, 100, 5000]))
        except OSError:
            pass
    return "ok", ""  # whatever it answered; the server must live on (its log is read at the end)


def case_keep_alive(rng: random.Random, target: Target) -> Outcome:
    """Several requests on one connection, all sent at once: every answer, in order."""
    image = rng.choice(target.images)
    plan = [rng.choice(["healthz", "info", "image", "missing", "head"])
            for _ in range(rng.randrange(2, 6))]
    raw = {"healthz": request("GET", "/healthz", target.auth()),
           "info": request("GET", "/api/info", target.auth()),
           "image": request("POST", "/api/classify", [
               *target.auth(True), ("Content-Length", str(len(image)))], image),
           "missing": request("GET", "/no/such/route", target.auth()),
           "head": request("HEAD", "/api/history", target.auth())}
    with socket.create_connection(("127.0.0.1", target.port), timeout=HANG_S) as sock:
        sock.sendall(b"".join(raw[step] for step in plan))
        with sock.makefile("rb") as file:
            for index, step in enumerate(plan):
                answer = read_answer(file, "HEAD" if step == "head" else "GET")
                if answer.hung:
                    return "hang", f"answer {index + 1} of {plan}"
                if step == "image":
                    verdict, why = check_classify(answer, target.oracle(image))
                else:
                    verdict, why = check(answer, {"refusal"} if step == "missing" else
                                         {"answer"})
                if verdict != "ok":
                    return "lost", f"answer {index + 1} of {plan}: {why}"
    return "ok", ""


# --- the network attacker's cases --------------------------------------------------------

def exactly(answer: Answer, status: int, why: str) -> Outcome:
    """A refusal with exactly `status` (one line of JSON), for attacks that must be refused
    for a given reason and no other."""
    verdict, reason = check(answer, {"refusal"})
    if verdict == "ok" and answer.status != status:
        return "wrong", f"{answer.status} {answer.body[:200]!r}, expected {status} ({why})"
    return verdict, reason


def case_rebinding(rng: random.Random, target: Target) -> Outcome:
    """DNS rebinding: a page on another name reaches the loopback server: 421 on any route."""
    host = rng.choice(["attacker.example", f"attacker.example:{target.port}", "127.0.0.1",
                       f"localhost:{target.port + 1}", f"127.0.0.1.nip.io:{target.port}",
                       f"[::1]:{target.port}0", "", junk(rng, 12, TOKEN_CHARS)])
    route = rng.choice(list(ROUTES))
    method = next(iter(ROUTES[route]))
    headers = [("Host", host), ("Authorization", f"Bearer {target.token}")]
    image = rng.choice(target.images)
    body = image if method == "POST" else b""
    if body:
        headers += [("Content-Type", "image/jpeg"), ("Content-Length", str(len(body)))]
    return exactly(exchange(target.port, request(method, route, headers, body), method), 421,
                   f"Host {host!r}")


def case_cross_site(rng: random.Random, target: Target) -> Outcome:
    """A page on another site: a no-cors fetch (text/plain blob), a form post, an image or
    event source; with a foreign Origin, or Sec-Fetch-Site cross-site / same-site."""
    image = rng.choice(target.images)
    site = rng.choice([[("Origin", "http://attacker.example")], [("Origin", "null")],
                       [("Origin", f"http://localhost:{target.port + 1}")],
                       [("Sec-Fetch-Site", "cross-site")], [("Sec-Fetch-Site", "same-site")],
                       [("Origin", "http://attacker.example"), ("Sec-Fetch-Site", "cross-site"),
                        ("Sec-Fetch-Mode", "no-cors")]])
    if rng.random() < 0.6:
        content_type, body = rng.choice([
            ("text/plain;charset=UTF-8", image), ("image/jpeg", image),
            form(image, rng), ("application/x-www-form-urlencoded", b"file=x")])
        raw = request("POST", "/api/classify", [*target.auth(), *site, (
            "Content-Type", content_type), ("Content-Length", str(len(body)))], body)
        return exactly(exchange(target.port, raw, "POST"), 403, "cross-site POST")
    route = rng.choice(["/stream.mjpg", "/events", "/api/info", "/api/history", "/metrics"])
    return exactly(exchange(target.port, request("GET", route, [*target.auth(), *site])), 403,
                   f"cross-site GET {route}")


def case_not_an_image_type(rng: random.Random, target: Target) -> Outcome:
    """The API takes image types or a form: 415 for any other body, whatever it holds."""
    image = rng.choice(target.images)
    content_type = rng.choice(["text/plain", "application/x-www-form-urlencoded",
                               "application/octet-stream", "application/json", None])
    headers = [*target.auth(), ("Content-Length", str(len(image)))]
    if content_type:
        headers.append(("Content-Type", content_type))
    return exactly(exchange(target.port, request("POST", "/api/classify", headers, image),
                            "POST"), 415, f"a body of {content_type}")


def case_empty_token(rng: random.Random, target: Target) -> Outcome:
    """An empty or blank token in every place one is read, and ?token= off the page: 401."""
    route = rng.choice(["/api/info", "/api/history", "/metrics", "/events", "/stream.mjpg"])
    offer = rng.choice([("Cookie", "edgeconv_token="), ("Cookie", "edgeconv_token= "),
                        ("Authorization", "Bearer "), ("Authorization", "Bearer"),
                        ("Authorization", "bearer  "), ("Cookie", "a=b; edgeconv_token=;")])
    if rng.random() < 0.3:
        route, offer = f"{route}?token={target.token}", ("X-Nothing", "")
    return exactly(exchange(target.port, request("GET", route, [*target.host(), offer])), 401,
                   f"{offer} on {route}")


def case_bomb(rng: random.Random, target: Target) -> Outcome:
    """A decoding bomb (by bytes, not pixels) or a JPEG of thousands of scans: refused with
    the Python API's own reason."""
    name = rng.choice(list(target.bombs))
    body = target.bombs[name]
    answer = exchange(target.port, request("POST", "/api/classify", [
        *target.auth(True), ("Content-Length", str(len(body)))], body), "POST")
    return check_classify(answer, target.oracle(body))


def case_nested_form(rng: random.Random, target: Target) -> Outcome:
    """Forms nested in the 'file' field, 2 to 1,000 deep: one level is parsed, the rest is
    bytes that are not an image."""
    depth = rng.randrange(2, 1000)
    body = b""
    for level in range(depth, 0, -1):
        body = (f"--b{level}\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type:"
                f" multipart/form-data; boundary=b{level + 1}\r\n\r\n").encode() + body + \
            f"\r\n--b{level}--\r\n".encode()
    answer = post_form(target, "multipart/form-data; boundary=b1", body)
    return exactly(answer, 400, "a nested form") if len(body) <= MAX_BODY_MB * 1_000_000 \
        else exactly(answer, 413, "too large")


def case_slow_head(rng: random.Random, target: Target) -> Outcome:
    """Headers one line at a time, slower than the server's head deadline: dropped by then."""
    gap = rng.uniform(0.5, 2.0)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", target.port), timeout=HEAD_S + 5) as sock:
        try:
            sock.sendall(b"GET /api/info HTTP/1.1\r\n")
            while time.monotonic() - started < HEAD_S + 5:
                time.sleep(gap)
                sock.sendall(b"X-Slow: %d\r\n" % rng.randrange(1000))
            return "hang", f"a slow head still open after {HEAD_S + 5} s"
        except OSError:
            pass  # closed on us: dropped
    if time.monotonic() - started < HEAD_S - 1:
        return "wrong", f"dropped after {time.monotonic() - started:.1f} s, before the deadline"
    return "ok", ""


def case_slow_body(rng: random.Random, target: Target) -> Outcome:
    """The head at once, then a body that never ends in time: 408 at the body deadline."""
    image = rng.choice(target.images)
    head = request("POST", "/api/classify", [*target.auth(True), ("Content-Length",
                                                                  str(len(image) + 10))])
    chunks = [head, image[:rng.randrange(len(image))]]
    return exactly(exchange(target.port, chunks, "POST", wait_s=BODY_S + 10), 408, "slow body")


CASES: dict[str, tuple[int, Callable[[random.Random, Target], Outcome]]] = {
    # name: (weight in the mix, case)
    "random method, path and query": (15, case_method_path),
    "random and malformed headers (huge, over 100, no colon, bad token, Expect)":
        (14, case_headers),
    "bad Content-Length (negative, not a number, two that disagree)": (8, case_content_length),
    "body shorter than its Content-Length (client stops, or waits)": (6, case_short_body),
    "Transfer-Encoding bodies (chunked and others)": (4, case_transfer_encoding),
    "random binary bodies, some with an image format's magic bytes": (12, case_random_body),
    "good images with flipped bytes or cut short": (8, case_mutated_image),
    "good images, raw body or multipart field": (10, case_good_image),
    "truncated or malformed multipart forms": (10, case_bad_form),
    "garbage request lines, bad versions, 64 KiB+ paths": (8, case_request_line),
    "slow client: a good request a few bytes at a time": (3, case_trickle),
    "stalled client: says nothing, or stops mid-request": (1, case_stalled),
    "client leaves mid-request or mid-answer (FIN or reset)": (6, case_vanish),
    "several requests on one connection, pipelined": (5, case_keep_alive),
    "rebinding: a Host that is not the server's own (421)": (6, case_rebinding),
    "cross-site: no-cors fetch, form post, img/EventSource from another site (403)":
        (6, case_cross_site),
    "a body that is not an image type or a form (415)": (3, case_not_an_image_type),
    "empty or blank token, ?token= off the page (401)": (3, case_empty_token),
    "decoding bombs: 16-bit, RGBA, mode-I TIFF 8000x8000; a 2,000-scan JPEG": (3, case_bomb),
    "multipart forms nested 2-1,000 deep": (2, case_nested_form),
    "slow head: a header line every 0.5-2 s (dropped at the deadline)": (1, case_slow_head),
    "slow body: never all of it (408 at the deadline)": (1, case_slow_body),
}


# --- the run ---------------------------------------------------------------------------------

def good_images() -> list[bytes]:
    """The selftest photo in several formats and sizes; the smallest last."""
    from PIL import Image

    photo = Image.open(PHOTO).convert("RGB")

    def encoded(image: Image.Image, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    rotated = Image.Exif()
    rotated[0x0112] = 6
    return [PHOTO.read_bytes(), encoded(photo, "PNG"), encoded(photo, "WEBP"),
            encoded(photo.convert("P"), "GIF"), encoded(photo, "BMP"),
            encoded(photo.convert("L"), "JPEG"), encoded(photo, "JPEG", exif=rotated),
            encoded(photo.resize((2400, 1800)), "JPEG", quality=70),
            encoded(photo.resize((48, 36)), "JPEG")]


def bombs() -> dict[str, bytes]:
    """Files of a few hundred KB that decode to over 100 MB each (Pillow's pixel guard passes
    them), and a JPEG of 2,000 empty scans (minutes of CPU before the budget)."""
    from PIL import Image

    def encoded(image: Image.Image, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    progressive = encoded(Image.open(PHOTO), "JPEG", progressive=True)
    return {"16-bit PNG": encoded(Image.new("I;16", (8000, 8000), 40000), "PNG"),
            "RGBA PNG": encoded(Image.new("RGBA", (8000, 8000), (9, 9, 9, 9)), "PNG"),
            "mode-I TIFF": encoded(Image.new("I", (8000, 8000)), "TIFF",
                                   compression="tiff_deflate"),
            "2,000-scan JPEG": progressive[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
            * 2000 + b"\xff\xd9"}


VERDICTS = ("crash", "hang", "wrong", "lost")
HEADER = ["case", "tried", "crashes", "hangs", "wrong answers", "data lost"]
HEALTH_ROW = f"GET /healthz about every second meanwhile: 200 within {HEALTHY_S} s"
PROCESS_ROW = "the server process: alive to the end, no traceback in its log"


@dataclass
class Report:
    counts: dict[str, Counter]  # row name -> tried and each verdict
    failures: list[str]
    checkpoint: int  # requests done when the first RSS was read
    requests: int
    rss_mb: tuple[float, float]  # after `checkpoint` requests, after all of them

    def rows(self) -> list[list]:
        return [[name, counts["tried"], *(counts[v] for v in VERDICTS)]
                for name, counts in self.counts.items()]

    def rss_line(self) -> str:
        first, last = self.rss_mb
        return (f"server RSS: {first:.1f} MB after {self.checkpoint:,} requests, {last:.1f} MB "
                f"after {self.requests:,} ({last - first:+.1f} MB; at most "
                f"+{RSS_GROWTH_MB} MB allowed)")

    def passed(self) -> bool:
        return not any(counts[v] for counts in self.counts.values() for v in VERDICTS) and \
            self.rss_mb[1] - self.rss_mb[0] <= RSS_GROWTH_MB


def fuzz(model: Path, requests: int, seed: int = 0, workers: int = 16) -> Report:
    """Start a server on `model`, send it `requests` cases, stop it; the tallies."""
    names = list(CASES)
    counts = {name: Counter() for name in [*names, HEALTH_ROW, PROCESS_ROW]}
    failures: list[str] = []
    lock = threading.Lock()

    def record(name: str, verdict: str, why: str) -> None:
        with lock:
            counts[name]["tried"] += 1
            if verdict != "ok":
                counts[name][verdict] += 1
                failures.append(f"{name}: {verdict}: {why}")

    token = secrets.token_urlsafe(16)
    deadlines = ["--head-timeout", str(HEAD_S), "--body-timeout", str(BODY_S)]
    if "--head-timeout" not in serve_process.SERVE.read_text():  # a server from before them
        deadlines = []
    server = Server(model, "--token", token, "--max-body", str(MAX_BODY_MB), *deadlines)
    target = Target(server.port, token, Oracle(model), good_images(), bombs())

    def attempt(index: int) -> None:
        rng = random.Random(f"{seed}:{index}")
        name = rng.choices(names, [CASES[name][0] for name in names])[0]
        try:
            verdict, why = CASES[name][1](rng, target)
        except TimeoutError as error:
            verdict, why = "hang", repr(error)
        except OSError as error:  # refused or reset where the case did not expect it
            verdict, why = "crash" if server.process.poll() is not None else "wrong", repr(error)
        record(name, verdict, f"request {index} (seed {seed}): {why}")

    def healthy() -> None:
        answer = exchange(server.port, request("GET", "/healthz", target.host()),
                          wait_s=HEALTHY_S)
        verdict, why = check(answer, {"answer"})
        record(HEALTH_ROW, verdict, f"no answer in {HEALTHY_S} s" if answer.hung else why)

    def run(indices: range, pool: ThreadPoolExecutor) -> None:
        pending = {pool.submit(attempt, index) for index in indices}
        while pending:
            _, pending = wait(pending, timeout=1.0)
            if server.process.poll() is not None:
                for future in pending:
                    future.cancel()
                return
            healthy()

    checkpoint = min(1000, requests // 2)
    rss = []
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="client") as pool:
            for indices in (range(checkpoint), range(checkpoint, requests)):
                run(indices, pool)
                if server.process.poll() is None:
                    time.sleep(1)  # the server's threads wind down
                    rss.append(server.rss_mb())
    finally:
        died = server.process.poll() is not None
        log = server.stop() if not died else server.log()
    tracebacks = log.count("Traceback (most recent call last)")
    record(PROCESS_ROW, "crash" if died or tracebacks else "ok",
           f"exit {server.process.returncode}" if died else f"{tracebacks} tracebacks:\n{log}")
    return Report(counts, failures, checkpoint, requests, (*rss, float("nan"), float("nan"))[:2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/reliability/fuzz_serve.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10000, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "plus_int8.tflite")
    parser.add_argument("--workers", type=int, default=16,
                        help="client threads at once (default: %(default)s)")
    parser.add_argument("--slow-clients", type=int, default=2000,
                        help="slow clients in the file-limit scenario (default: %(default)s)")
    parser.add_argument("--slow-seconds", type=float, default=30,
                        help="how long they stay (default: %(default)s)")
    parser.add_argument("--bomb-rounds", type=int, default=25,
                        help="rounds of 4 bombs at once (default: %(default)s)")
    parser.add_argument("--serve", type=Path, default=serve_process.SERVE,
                        help="the runtime/serve to attack, e.g. an older checkout's "
                        "(default: this checkout's)")
    args = parser.parse_args(argv)
    serve_process.SERVE = args.serve
    if args.requests < 2:
        parser.error("--requests must be at least 2")
    started = time.monotonic()
    report = fuzz(args.model, args.requests, args.seed, args.workers)
    print(markdown_table(HEADER, report.rows()))
    print(f"\n{report.rss_line()}; {time.monotonic() - started:.0f} s\n")
    scenarios = attacks.run(args.model, bombs(), args.slow_clients, args.slow_seconds,
                            args.bomb_rounds)
    print(markdown_table(HEADER, [[name, counts["tried"], *(counts[v] for v in VERDICTS)]
                                  for name, counts, _ in scenarios]))
    failures = report.failures + [line for *_, lines in scenarios for line in lines]
    for failure in failures[:50]:
        print(f"FAILED {failure}", file=sys.stderr)
    return 0 if report.passed() and not any(lines for *_, lines in scenarios) else 1


if __name__ == "__main__":
    sys.exit(main())
