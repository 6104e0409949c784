"""Import Keras without TensorFlow's native start-up chatter.

TensorFlow's C++ side prints "oneDNN custom operations are on" and an absl warning before
its log level (TF_CPP_MIN_LOG_LEVEL) is read, so the variable alone cannot hide them. Real
import errors still surface: they are Python exceptions, raised after stderr is restored.
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


def import_keras():
    """`import keras`, quietly; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        with native_stderr_silenced():
            import keras  # noqa: F401
    return sys.modules["keras"]
