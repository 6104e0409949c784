"""A model file that can be replaced while it serves: the new one is loaded and checked first.

Deploy renames a new model into place. `HotModel.poll()` notices the change (inode, size,
modification time), loads the new file in a fresh Classifier, checks it (edgeconv metadata,
the same input size, a finite answer on a blank image, its golden outputs on this engine) and
only then swaps it in; a file that
fails is refused with one log line and the old model keeps serving.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.classifier import Classifier
from runtime.engines import EngineError
from runtime.golden import self_test
from runtime.metadata import ModelFileError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class HotModel:
    """The current Classifier for `path`, reloaded when the file is replaced."""

    def __init__(self, path: str | os.PathLike, factory: Callable[[Path], Classifier],
                 interval: float = 1.0, log: Callable[[str], None] = _log):
        self.path, self.factory, self.interval, self.log = Path(path), factory, interval, log
        self.classifier = factory(self.path)  # the first load's errors are the caller's
        self.signature = self._signature()
        self.swaps = 0
        self.refused = 0
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _signature(self) -> tuple | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def poll(self, force: bool = False) -> bool:
        """Swap in a replaced model file if it passes its checks; True when swapped.
        Checks the file at most once per `interval` seconds unless `force`."""
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return False
        with self._lock:
            self._checked = now
            signature = self._signature()
            if signature is None or signature == self.signature:
                return False  # gone for a moment (mid-rename) or unchanged
            self.signature = signature
            try:
                candidate = self.factory(self.path)
                self._check(candidate)
            except (ModelFileError, EngineError, ValueError) as error:
                self.refused += 1
                self.log(f"model {self.path}: new file refused, the previous model keeps "
                         f"serving ({error})")
                return False
            self.classifier = candidate
            self.swaps += 1
            self.log(f"model {self.path}: swapped in ({candidate.metadata.get('quantization')}, "
                     f"{', '.join(candidate.labels)})")
            return True

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
    """Poll `model` every interval in a daemon thread until `stop` is set."""
    def loop() -> None:
        while not stop.wait(model.interval):
            model.poll(force=True)

    thread = threading.Thread(target=loop, name="model-watch", daemon=True)
    thread.start()
    return thread
