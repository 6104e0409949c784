"""The network attacker's scenarios against runtime/serve that a request mix cannot show: each
on a fresh server, each one row (case, tried, crashes, hangs, wrong answers, data lost).

- decoding bombs posted 4 at a time: each refused, the server's peak RSS under PEAK_RSS_MB;
- slow clients under systemd's default file limit (1,024): a header line every 3 s from each,
  reconnecting when dropped, while GET /healthz must answer every second within 1 s;
- the model file: overwritten in place while clients classify, made a FIFO, /dev/zero, a
  model whose metadata nests deeply, a truncated one; then a good one must still swap in;
- an empty or blank token at start: exit 2 with one line; a new token is never printed.

Run from tests/reliability/fuzz_serve.py (its table goes to docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import edgeconv.benchmarks.server as serve_process
from edgeconv.benchmarks.server import Server

ROOT = Path(__file__).resolve().parents[2]
PEAK_RSS_MB = 300
PHOTO = ROOT / "devices" / "selftest" / "cat.jpg"

Row = tuple[str, Counter, list[str]]  # name, tried and verdicts, failures


def status_of(reply: bytes) -> int | None:
    words = reply.split(None, 2)
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else None


def ask(port: int, raw: bytes, timeout: float = 30) -> bytes:
    """One request's whole reply (the server closes or sends Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
        return reply


def post(port: int, body: bytes, content_type: str = "image/jpeg") -> bytes:
    return ask(port, (f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
               .encode() + body)


def bombs_four_at_a_time(model: Path, bombs: dict[str, bytes], rounds: int) -> Row:
    name = f"decoding bombs posted 4 at a time ({rounds} rounds): peak RSS < {PEAK_RSS_MB} MB"
    counts, failures = Counter(), []
    peak = float("nan")
    server = Server(model, "--max-body", "20")
    try:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(rounds):
                for kind, reply in zip(bombs, pool.map(lambda body: post(server.port, body),
                                                       bombs.values())):
                    counts["tried"] += 1
                    if status_of(reply) != 400:
                        counts["wrong"] += 1
                        failures.append(f"{name}: {kind}: {reply[:200]!r}")
        peak = server.peak_rss_mb()
        if peak >= PEAK_RSS_MB:
            counts["wrong"] += 1
            failures.append(f"{name}: peak RSS {peak:.0f} MB")
    finally:
        counts["crash"] += crashed(server, failures, name)
    return f"{name} (measured: {peak:.0f} MB)", counts, failures


def crashed(server: Server, failures: list[str], name: str) -> int:
    """Stop the server; 1 (and why) if it had died or logged a traceback."""
    died = server.process.poll() is not None
    log = server.log() if died else server.stop()
    if died or "Traceback" in log:
        failures.append(f"{name}: {'died' if died else 'traceback'}: {log[-1500:]}")
        return 1
    return 0


def slow_clients(model: Path, clients: int, seconds: float, within: float = 1.0) -> Row:
    """`clients` connections, each sending a header line every 3 s and, as slowloris does,
    reconnecting at that tick when dropped, against a server limited to 1,024 descriptors;
    /healthz each second, answered `within` seconds."""
    name = (f"{clients:,} slow clients (a header line every 3 s) under a 1,024 file limit: "
            f"GET /healthz every second within {within:g} s")
    counts, failures = Counter(), []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, clients + 512)), hard))
    server = Server(model, nofile=1024)
    selector = selectors.DefaultSelector()
    stats = Counter()

    def connect() -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            sock.setblocking(False)
            sock.send(b"GET /api/info HTTP/1.1\r\n")
            selector.register(sock, selectors.EVENT_READ)
            stats["connected"] += 1
        except OSError:
            stats["refused"] += 1

    done = threading.Event()

    def probe() -> None:
        while not done.wait(1.0):
            started = time.monotonic()
            counts["tried"] += 1
            try:
                reply = ask(server.port, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:"
                            f"{server.port}\r\n\r\n".encode(), timeout=within)
                took = time.monotonic() - started
                if status_of(reply) != 200 or took >= within:
                    counts["wrong"] += 1
                    failures.append(f"{name}: /healthz {reply[:80]!r} in {took:.2f} s")
            except OSError as error:
                counts["hang"] += 1
                failures.append(f"{name}: /healthz: {error!r} after "
                                f"{time.monotonic() - started:.2f} s")

    try:
        for _ in range(clients):
            connect()
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        end, next_line = time.monotonic() + seconds, time.monotonic() + 3
        lost = [0]
        while time.monotonic() < end:
            for key, _ in selector.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:  # dropped: the attacker comes back at its next tick
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    stats["dropped"] += 1
                    lost[0] += 1
            if time.monotonic() >= next_line:  # as slowloris: a line on each, then reconnect
                next_line += 3
                for key in list(selector.get_map().values()):
                    with contextlib.suppress(OSError):
                        key.fileobj.send(b"X-Slow: 1\r\n")
                for _ in range(lost[0]):
                    connect()
                lost[0] = 0
        done.set()
        prober.join()
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        counts["crash"] += crashed(server, failures, name)
    return (f"{name} ({stats['connected']:,} connections, {stats['dropped']:,} dropped by "
            f"the server)"), counts, failures


def deep_metadata(model: bytes) -> bytes:
    """`model` with its metadata JSON replaced, byte for byte, by [[[...]]] nested as deep as
    it is long: the same file layout, a parser's recursion limit many times over."""
    start = model.find(b'{"format": "edgeconv-model/1"')
    end = model.find(b"}", model.find(b'"created"', start)) + 1
    half = (end - start) // 2
    return model[:start] + b"[" * half + b"]" * (end - start - half) + model[end:]


def model_file(model: Path, seconds_each: float = 8.0) -> Row:
    name = ("the model file: overwritten in place while classifying, a FIFO, /dev/zero, deep "
            "metadata, truncated; then a good one swaps in")
    counts, failures = Counter(), []
    work = Path(tempfile.mkdtemp(prefix="edgeconv-attack-"))
    current = work / "current.tflite"
    shutil.copy(model, current)
    other = model.with_name("augmented_int8.tflite")
    other = other if other.is_file() else model
    server = Server(current)
    photo = PHOTO.read_bytes()

    def info() -> dict:
        import json

        reply = ask(server.port, f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{server.port}"
                    f"\r\n\r\n".encode())
        return json.loads(reply.partition(b"\r\n\r\n")[2])

    def refused_within(step: str, before: int) -> None:
        counts["tried"] += 1
        deadline = time.monotonic() + seconds_each
        while time.monotonic() < deadline:
            if info()["model_refused"] > before:
                if status_of(post(server.port, photo)) != 200:
                    counts["lost"] += 1
                    failures.append(f"{name}: {step}: no answer with the old model")
                return
            time.sleep(0.2)
        counts["hang"] += 1
        failures.append(f"{name}: {step}: not refused within {seconds_each:.0f} s")

    try:
        stop = threading.Event()

        def classify() -> None:
            while not stop.is_set():
                counts["tried"] += 1
                if status_of(post(server.port, photo)) != 200:
                    counts["lost"] += 1
                    failures.append(f"{name}: an image was not answered during an overwrite")

        with ThreadPoolExecutor(2) as pool:
            clients = [pool.submit(classify) for _ in range(2)]
            for source in (other, model) * 5:  # cp: the same inode, rewritten
                shutil.copyfile(source, current)
                counts["tried"] += 1
                time.sleep(1.2)
            stop.set()
            for client in clients:
                client.result()
        for step, make in (("a FIFO", lambda: os.mkfifo(current)),
                           ("/dev/zero", lambda: current.symlink_to("/dev/zero")),
                           ("deep metadata", lambda: current.write_bytes(
                               deep_metadata(model.read_bytes()))),
                           ("truncated", lambda: current.write_bytes(
                               model.read_bytes()[:5000]))):
            before = info()["model_refused"]
            current.unlink()
            make()
            refused_within(step, before)
        swaps = info()["model_swaps"]
        current.unlink()
        shutil.copy(other, current)
        counts["tried"] += 1
        deadline = time.monotonic() + seconds_each
        while info()["model_swaps"] == swaps and time.monotonic() < deadline:
            time.sleep(0.2)
        if info()["model_swaps"] == swaps:
            counts["hang"] += 1
            failures.append(f"{name}: the watcher swapped nothing in after the attacks")
    finally:
        counts["crash"] += crashed(server, failures, name)
        shutil.rmtree(work, ignore_errors=True)
    return name, counts, failures


def tokens_at_start(model: Path) -> Row:
    name = ("an empty or blank token at start (--token, token file): exit 2, one line; a new "
            "token is never printed")
    counts, failures = Counter(), []
    work = Path(tempfile.mkdtemp(prefix="edgeconv-token-"))
    (work / "empty").write_text("")
    (work / "blank").write_text("  \n")
    serve = [sys.executable, str(serve_process.SERVE), str(model)]
    for args in (["--token", ""], ["--token", "   "], ["--host", "0.0.0.0", "--token-file",
                                                       str(work / "empty")],
                 ["--host", "0.0.0.0", "--token-file", str(work / "blank")]):
        counts["tried"] += 1
        result = subprocess.run([*serve, *args, "--port", "1"], capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 2 or result.stderr.count("\n") != 1 or \
                not result.stderr.startswith("error: "):
            counts["wrong" if "Traceback" not in result.stderr else "crash"] += 1
            failures.append(f"{name}: {args}: exit {result.returncode}: {result.stderr[-300:]}")
    counts["tried"] += 1
    server = Server(model, "--host", "0.0.0.0", "--token-file", work / "new")
    log = server.stop()
    token = (work / "new").read_text().strip()
    if token in log or (work / "new").stat().st_mode & 0o077 or len(token) < 24:
        counts["wrong"] += 1
        failures.append(f"{name}: the new token was printed or is readable by others")
    shutil.rmtree(work, ignore_errors=True)
    return name, counts, failures


def run(model: Path, bombs: dict[str, bytes], slow: int, seconds: float, rounds: int,
        within: float = 1.0) -> list[Row]:
    """Every scenario; one that fails outright is a crash (a server that died under it) or a
    hang (one that stopped answering)."""
    rows = []
    for name, scenario, args in (
            ("decoding bombs posted 4 at a time", bombs_four_at_a_time, (bombs, rounds)),
            (f"{slow:,} slow clients under a 1,024 file limit", slow_clients,
             (slow, seconds, within)),
            ("the model file attacks", model_file, ()),
            ("an empty or blank token at start", tokens_at_start, ())):
        try:
            rows.append(scenario(model, *args))
        except Exception as error:  # noqa: BLE001  a server that gave way: its row says so
            verdict = "hang" if isinstance(error, (TimeoutError, subprocess.TimeoutExpired)) \
                else "crash"
            rows.append((f"{name}: ended by {type(error).__name__}",
                         Counter({"tried": 1, verdict: 1}), [f"{name}: {error!r}"]))
    return rows
