"""Silence what native libraries print straight to file descriptor 2.

TensorFlow, LiteRT's XNNPACK delegate and ONNX Runtime write from C++ to stderr ("INFO:
Created TensorFlow Lite XNNPACK delegate", "oneDNN custom operations are on") where Python
cannot catch it. Their real errors still arrive as Python exceptions, raised after fd 2 is back.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stderr_silenced(python_stdout: bool = False) -> Iterator[None]:
    """Send file descriptor 2 (and, if asked, Python's stdout) to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        if python_stdout:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        else:
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def one_line(text: str, limit: int = 300) -> str:
    """A native library's message as one line of at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
