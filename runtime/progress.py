"""A dependency-free progress bar on stderr: redrawn in place on a terminal, else (a log file,
a pipe) a plain line every PLAIN_EVERY_S seconds, so a long run piped to a file is not silent."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
PLAIN_EVERY_S = 5.0


class ProgressBar:
    """`label [#####.....] done/total rate eta`, redrawn at most ten times a second.

    `scale` divides the counts for display (e.g. 2**20 with unit "MB" for bytes).
    """

    def __init__(self, total: float | None, label: str = "", unit: str = "it",
                 scale: float = 1.0, done: float = 0.0):
        self.total, self.label, self.unit, self.scale = total, label, unit, scale
        self.done, self.start_done = done, done
        self.enabled = sys.stderr.isatty()
        self.started = self.last_draw = time.monotonic()

    def update(self, amount: float = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self.last_draw >= 0.1 or self.done == self.total):
            self.last_draw = now
            sys.stderr.write("\r" + self.line(now - self.started))
            sys.stderr.flush()
        elif not self.enabled and now - self.last_draw >= PLAIN_EVERY_S:
            self.last_draw = now  # a log file or a pipe: a plain line every few seconds
            print(self.line(now - self.started), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        shown = f"{self.done / self.scale:.0f}"
        speed = f"{rate / self.scale:.1f} {self.unit}/s"
        if not self.total:
            return f"{self.label} {shown} {self.unit} {speed}"
        width = 30
        filled = int(width * min(self.done / self.total, 1.0))
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {shown}/"
                f"{self.total / self.scale:.0f} {speed} eta {eta:.0f}s")

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def progress(items: Iterable[T], total: int | None = None, label: str = "",
             unit: str = "it") -> Iterator[T]:
    """Yield from `items`, showing a progress bar on an interactive stderr."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    bar = ProgressBar(total, label, unit)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
