"""The connection layer of runtime/serve: uvicorn's pure-Python HTTP/1.1 (h11), with limits.

h11 parses requests (lengths, chunked bodies, header syntax) and uvicorn runs the connections
on one asyncio loop. What is added here is what a client could otherwise take without end:

- connections: at most `Limits.connections`. A newcomer beyond it takes the place of the
  connection that has waited longest for a request head (a slow or idle client); when every
  connection is busy with a request, the newcomer is closed at once. A client that sends a
  request promptly, such as a /healthz probe, is never the one dropped.
- the request head: `Limits.head_s` seconds to arrive, after connecting or after the previous
  answer; at most `Limits.head_bytes` bytes while it arrives (runtime/web.py checks the
  size and count of the whole head).
- a request h11 refuses is answered with one line of JSON, never logged.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import resource
import signal
import socket
from collections import OrderedDict
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol


@dataclass
class Limits:
    connections: int = 0  # 0: from the file-descriptor limit (see connection_cap)
    head_s: float = 10.0
    head_bytes: int = 32 * 1024
    headers: int = 100
    body_s: float = 30.0
    backlog: int = 128


def connection_cap(wanted: int = 0) -> int:
    """`wanted`, or 1,000, but always 128 descriptors under the process's file limit, so that
    accept() never fails for want of one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(16, soft - 128) if soft != resource.RLIM_INFINITY else 1000
    return min(wanted or 1000, room)


def json_bytes(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": message}).encode() + b"\n"
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), (b"connection", b"close")], body


def protocol_class(limits: Limits) -> type[H11Protocol]:
    """An H11Protocol subclass that keeps `limits`, with its own table of connections waiting
    for a request head (oldest first)."""
    waiting: OrderedDict[Connection, None] = OrderedDict()
    cap = connection_cap(limits.connections)

    class Connection(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None
        head_cycle: object = None
        refusal: h11.RemoteProtocolError | None = None
        peer_done = False  # the client has sent all it will (a half-close)

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            next_event = self.conn.next_event

            def remembered() -> object:  # the reason h11 refused, for the answer
                try:
                    return next_event()
                except h11.RemoteProtocolError as error:
                    self.refusal = error
                    raise

            self.conn.next_event = remembered
            self.await_head()
            if len(self.connections) > cap:  # the longest wait goes: this one, if all others
                next(iter(waiting)).drop()  # are busy with a request

        def await_head(self) -> None:
            self.stop_head_timer()
            self.head_cycle = self.cycle
            waiting[self] = None
            self.head_timer = self.loop.call_later(limits.head_s, self.drop)

        def stop_head_timer(self) -> None:
            waiting.pop(self, None)
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def drop(self) -> None:
            self.stop_head_timer()
            self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self in waiting and self.cycle is not self.head_cycle:  # a head came in
                self.stop_head_timer()

        def on_response_complete(self) -> None:
            self.await_head()  # before the base reads a pipelined request
            super().on_response_complete()
            if self.peer_done and self in waiting:  # answered all it sent
                self.drop()

        def eof_received(self) -> bool:
            """A client may half-close after its request: keep the connection open for the
            answer (the base closes it at once)."""
            self.peer_done = True
            return self.cycle is not None and not self.cycle.response_complete

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_head_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            error = self.refusal
            status = error.error_status_hint if error else 400
            message = str(error) if error and str(error) else "malformed request"
            headers, body = json_bytes(status, message)
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(self.conn.send(h11.Response(
                    status_code=status, headers=headers, reason=STATUS_PHRASES[status])))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.drop()

    return Connection


class _Quiet(logging.Filter):
    """uvicorn's notes on clients (a bad request, a stream a client left unread) would put
    a line per request in the journal; they are answered, or counted in /metrics."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR and "without completing response" not in \
            record.getMessage()


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt() parameters (malloc.h)


def steady_malloc() -> None:
    """Keep a long-running server's memory flat under glibc (a no-op elsewhere).

    Decoding runs in worker threads, and glibc may give each thread a malloc arena of its
    own; once a large block (a posted image) is freed, glibc also raises the size above which
    blocks are mmapped, so later large blocks land in those arenas and fragment them. Left
    alone, RSS creeps up by megabytes per thousand requests; two arenas and a fixed mmap
    threshold keep it flat (docs/reliability.md)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 2)
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (IPv6 for an address with a colon); OSError when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app, sock: socket.socket, limits: Limits, log, stopping) -> None:
    """Serve the ASGI `app` on `sock` until SIGTERM or SIGINT; `stopping()` is called as the
    server begins to stop (streams end then), `log` takes uvicorn's rare lines, one each."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.addFilter(_Quiet())
        logger.propagate = False
        logger.handlers = [_OneLine(log)]
    config = uvicorn.Config(
        app, http=protocol_class(limits), ws="none", lifespan="off", log_config=None,
        access_log=False, proxy_headers=False, server_header=False, backlog=limits.backlog,
        timeout_keep_alive=max(1, int(limits.head_s)),
        h11_max_incomplete_event_size=limits.head_bytes,
        timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: log(f"server: {context.get('message')} "
                                      f"({context.get('exception')!r})"))

        async def tell_when_stopping() -> None:
            while not server.should_exit:
                await asyncio.sleep(0.2)
            stopping()

        watcher = asyncio.create_task(tell_when_stopping())
        await server.serve(sockets=[sock])
        watcher.cancel()

    # uvicorn raises the signal it caught again once stopped; these make that a no-op, so the
    # caller returns normally.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: None)
    asyncio.run(main())


class _OneLine(logging.Handler):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        error = f" ({record.exc_info[1]!r})" if record.exc_info else ""
        self.log(f"server: {record.getMessage()}{error}".replace("\n", " "))
