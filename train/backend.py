"""Import Keras without TensorFlow's native start-up chatter.

TensorFlow's C++ side prints "oneDNN custom operations are on" and an absl warning before
its log level (TF_CPP_MIN_LOG_LEVEL) is read, so the variable alone cannot hide them. Real
import errors still surface: they are Python exceptions, raised after stderr is restored.
"""

from __future__ import annotations

import os
import sys

from edgeconv.runtime.quiet import native_stderr_silenced


def import_keras():
    """`import keras`, quietly; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        with native_stderr_silenced():
            import keras  # noqa: F401
    return sys.modules["keras"]


def tensorflow_runs_onednn() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process: its default on CPUs with
    AVX512-VNNI, AVX512-BF16 or AMX, and whatever TF_ENABLE_ONEDNN_OPTS says elsewhere. With
    them comes oneDNN's CPU allocator, which pools large buffers whatever
    TF_CPU_ALLOCATOR_USE_BFC says (train/__init__.py)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # no TensorFlow, or a build without oneDNN
        return False
