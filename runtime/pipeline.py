"""Split the cores by what each photo costs: measure, plan, run in order.

A photo costs `decode_ms` to decode and resize (one core) and `infer_ms[t]` to infer on an
interpreter of t threads. LiteRT and ONNX Runtime interpreters are not shared across threads,
so the pipeline runs several, each with its own threads: a worker takes the next photo,
decodes it, and infers on a free interpreter. With as many workers as interpreters, every
worker is decoding or inferring at every moment, so decoding takes exactly its share of the
cores whatever that share is (a fixed split, one decoding thread and the rest inferring,
idles whichever side is the cheaper). What the measured costs choose is the threads per
interpreter: n = cap // t workers give n / (decode + infer[t]) photos/s, and the plan takes
the t that gives most.

The bound on C cores is C / (decode + min over t of t * infer[t]): every core busy, each
photo costing its decode plus its cheapest core-time of inference.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Costs:
    """Measured per-photo costs: decode ms, and inference ms by threads per interpreter."""

    decode_ms: float
    infer_ms: dict[int, float]

    def bound(self, cores: int) -> float:
        """Photos/s with every core busy and none wasted."""
        cheapest = min(threads * ms for threads, ms in self.infer_ms.items())
        return cores * 1000 / (self.decode_ms + cheapest)


@dataclass
class Plan:
    interpreters: int
    threads: int  # each interpreter's
    expected: float  # photos/s the costs predict

    def line(self) -> str:
        return (f"{self.interpreters} interpreters x {self.threads} threads, each worker "
                f"decoding then inferring; {self.expected:.0f} images/s expected")


def thread_choices(cap: int) -> list[int]:
    """1, 2, 4, ... up to `cap`, and `cap` itself: the interpreter sizes worth timing."""
    return sorted({*(2 ** k for k in range(cap.bit_length()) if 2 ** k <= cap), cap})


def plan(costs: Costs, cap: int) -> Plan:
    """The interpreters and threads each that classify the most photos/s within `cap` threads
    (fewer threads on a tie: more interpreters keep a stall in one from idling the rest)."""
    best = None
    for threads, ms in sorted(costs.infer_ms.items()):
        if threads > cap:
            continue
        interpreters = cap // threads
        rate = interpreters * 1000 / (costs.decode_ms + ms)
        if best is None or rate > best.expected * 1.02:
            best = Plan(interpreters, threads, rate)
    if best is None:
        raise ValueError(f"no inference cost measured at {cap} threads or fewer")
    return best


def timed_ms(run: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    """Median ms of `run()` over `repeat` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def in_order(work: Callable[[Item], Result], items: Iterable[Item], workers: int,
             ahead: int = 4) -> Iterator[tuple[Item, Result]]:
    """(item, work(item)) for each item, in the order given, computed by `workers` threads.

    `items` is read lazily: at most workers + ahead are in flight, so a long stream never sits
    in memory as decoded images. An exception from `work` is raised at its item's turn."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="classify") as pool:
        pending: deque[tuple[Item, Future]] = deque()

        def fill() -> None:
            for item in itertools.islice(items, workers + ahead - len(pending)):
                pending.append((item, pool.submit(work, item)))

        fill()
        while pending:
            item, future = pending.popleft()
            fill()
            yield item, future.result()
