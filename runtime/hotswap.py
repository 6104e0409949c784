"""A model file that can be replaced while it serves: the new one is loaded and checked first.

Deploy renames a new model into place; `cp new.tflite current.tflite` overwrites it in place.
Either way the engines never see the file itself: its bytes are copied into an anonymous
in-memory file (memfd) that only this process holds, and the model is loaded from there. An
engine maps its model file, and a file overwritten under a mapping ends the process with
SIGBUS. `HotModel.poll()` notices a change (inode, size, modification time), loads the new
file in a fresh Classifier, checks it (edgeconv metadata, the same input size, a finite answer
on a blank image, its golden outputs on this engine) and only then swaps it in; a file that
fails for any reason is refused with one log line and the old model keeps serving.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.engines import EngineError
from edgeconv.runtime.golden import self_test
from edgeconv.runtime.metadata import ModelFileError, read_model_file
from edgeconv.runtime.quiet import one_line


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def private_copy(path: Path) -> tuple[int, str]:
    """A memfd holding the bytes of the model file at `path` (metadata.read_model_file: a
    regular file within the size limit, read without blocking), and their SHA-256."""
    data = read_model_file(path)
    memory = os.memfd_create("edgeconv-model", os.MFD_CLOEXEC)
    view, written = memoryview(data), 0
    while written < len(data):  # os.write may write less than asked
        written += os.write(memory, view[written:])
    return memory, hashlib.sha256(data).hexdigest()


def load_private(path: Path, factory: Callable[[Path], Classifier]) -> tuple[Classifier, str]:
    """`factory` run on a private in-memory copy of `path`, and the SHA-256 of the bytes it
    loaded; errors name `path`, not the copy."""
    memory, sha256 = private_copy(path)
    copy = f"/proc/self/fd/{memory}"
    try:
        return factory(Path(copy)), sha256
    except (ModelFileError, EngineError) as error:
        raise type(error)(str(error).replace(copy, str(path))) from None
    finally:
        os.close(memory)  # an engine that mapped the copy keeps its own reference


class HotModel:
    """The current Classifier for `path`, reloaded when the file is replaced."""

    def __init__(self, path: str | os.PathLike, factory: Callable[[Path], Classifier],
                 interval: float = 1.0, log: Callable[[str], None] = _log):
        self.path, self.factory, self.interval, self.log = Path(path), factory, interval, log
        self.signature = self._signature()
        # the first load's errors are the caller's; sha256: of the file the model came from
        self.classifier, self.sha256 = load_private(self.path, factory)
        self.swaps = 0
        self.refused = 0
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _signature(self) -> tuple | None:
        try:
            stat_ = self.path.stat()
        except OSError:
            return None
        return stat_.st_ino, stat_.st_size, stat_.st_mtime_ns

    def poll(self, force: bool = False) -> bool:
        """Swap in a replaced model file if it passes its checks; True when swapped.
        Checks the file at most once per `interval` seconds unless `force`. Never waits: while
        another thread is loading a file, this returns False at once."""
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._checked = now
            signature = self._signature()
            if signature is None or signature == self.signature:
                return False  # gone for a moment (mid-rename) or unchanged
            self.signature = signature
            try:
                candidate, sha256 = load_private(self.path, self.factory)
                self._check(candidate)
            except Exception as error:  # noqa: BLE001  no file may stop the watcher
                self.refused += 1
                self.log(f"model {self.path}: new file refused, the previous model keeps "
                         f"serving ({type(error).__name__}: {one_line(error)})")
                return False
            self.classifier, self.sha256 = candidate, sha256
            self.swaps += 1
            self.log(f"model {self.path}: swapped in ({candidate.metadata.get('quantization')}, "
                     f"{', '.join(candidate.labels)})")
            return True
        finally:
            self._lock.release()

    def _check(self, candidate: Classifier) -> None:
        if candidate.size != self.classifier.size:
            raise ValueError(f"input {candidate.size} differs from the serving model's "
                             f"{self.classifier.size}")
        blank = np.full((1, *candidate.size, 3), 128, dtype=np.uint8)
        output = candidate.engine.run(blank)
        if not np.all(np.isfinite(output)):
            raise ValueError("its output on a test image is not finite")
        check = self_test(candidate.engine, candidate.metadata)  # GoldenError is a ValueError
        if check is not None and not check.passed:
            raise ValueError(check.line())


def watch(model: HotModel, stop: threading.Event) -> threading.Thread:
    """Poll `model` every interval in a daemon thread until `stop` is set; whatever a poll
    raises is logged in one line and the watch goes on."""
    def loop() -> None:
        while not stop.wait(model.interval):
            try:
                model.poll(force=True)
            except Exception as error:  # noqa: BLE001
                model.log(f"model {model.path}: watch: {type(error).__name__}: "
                          f"{one_line(error)}")

    thread = threading.Thread(target=loop, name="model-watch", daemon=True)
    thread.start()
    return thread
