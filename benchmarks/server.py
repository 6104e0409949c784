"""A real runtime/serve process on a free loopback port: the one way the serve benchmark, the
tests and the server fuzz start a server. Its stderr goes to a file, read with log(): a pipe
nobody reads would stall a server that logs a lot."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# This checkout's serve (set it to another checkout's to measure that one the same way).
SERVE = Path(importlib.util.find_spec("edgeconv.runtime").submodule_search_locations[0]) / "serve"


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, *args: str | Path, env: dict | None = None, nofile: int | None = None,
                 serve: Path | None = None):
        """`args` for serve (the model first); `nofile`: the server's file-descriptor limit
        (as systemd's default 1,024); `serve`: another runtime/serve (default: SERVE)."""
        self.port = free_port()
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop())
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, str(serve or SERVE), *map(str, args), "--port",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=self.log_file,
            env={**os.environ, **(env or {})}, preexec_fn=None if nofile is None else
            lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.log())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    def healthy_after_s(self, timeout: float = 60) -> float:
        """Seconds from the start until /healthz first answered 200 (the cold start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("/healthz", timeout=1)[0] == 200:
                return time.perf_counter() - self.started
            time.sleep(0.05)
        raise AssertionError(f"/healthz never answered 200: {self.log()[-2000:]}")

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None,
                method: str | None = None, timeout: float = 30) -> tuple[int, object, bytes]:
        """(status, headers, body) of one request; HTTP errors are answers, not exceptions.
        A body is sent as image/jpeg unless `headers` say otherwise."""
        headers = dict(headers or {})
        if data is not None and not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "image/jpeg"
        request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def json(self, path: str, **kwargs) -> tuple[int, dict]:
        status, _, body = self.request(path, **kwargs)
        return status, json.loads(body)

    def rss_mb(self) -> float:
        """The server's resident memory now (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for process {self.process.pid}")

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmHWM for process {self.process.pid}")

    def log(self) -> str:
        """Everything the server has written to stderr so far."""
        fd = self.log_file.fileno()  # pread: the server shares the file's offset
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self) -> str:
        """Stop the server; its whole log."""
        self.process.terminate()
        self.process.wait(timeout=20)
        log = self.log()
        self.log_file.close()
        return log
