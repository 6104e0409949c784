"""Every export format in one registry, and one wrapper that exports what a run lacks.

Each format has a name ("TFLite int8"), the file it writes beside the model
(model_int8.tflite) and an exporter with one signature:
`export(source, out=None, *, calibration=None, calibration_size=300) -> Path`.
`export_missing` records each format's outcome (time, size, ok or the error), so one broken
format never stops the others.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeconv.export import to_onnx, to_tflite
from edgeconv.export.artifacts import ARTIFACTS
from edgeconv.export.source import Source


@dataclass(frozen=True)
class Format:
    name: str
    file_name: str
    export: Callable[..., Path]


EXPORTERS = {"tflite": to_tflite.export, "onnx": to_onnx.export}
FORMATS: list[Format] = [
    Format(artifact.name, artifact.file_name,
           functools.partial(EXPORTERS[artifact.kind], quantize=artifact.quantize))
    for artifact in ARTIFACTS]
INT8 = [f for f in FORMATS if f.name in ("TFLite int8", "ONNX int8")]


def select(names: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Format names from a comma-separated, case-insensitive list ("all": every one). A
    short name picks every format it describes: "tflite", "onnx", "int8", "tflite-int8"
    (or "TFLite int8"). `extra` are names the caller handles itself (the benchmark's "Keras")."""
    known = [*extra, *(f.name for f in FORMATS)]
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if [name.lower() for name in wanted] == ["all"]:
        return known
    chosen: set[str] = set()
    for name in wanted:
        words = set(re.split(r"[-_\s]+", name.lower()))
        matches = {known_name for known_name in known
                   if words <= set(known_name.lower().split())}
        if not matches:
            raise ValueError(f"unknown format {name!r}; choose from tflite, onnx, int8, all, "
                             f"or one of: {', '.join(_short(n) for n in known)}")
        chosen |= matches
    return [name for name in known if name in chosen]  # registry order


def _short(name: str) -> str:
    return name.lower().replace(" ", "-")


@dataclass
class Outcome:
    format: Format
    path: Path
    status: str  # "exists", "exported" or "failed"
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def size_mb(self) -> float | None:
        return self.path.stat().st_size / 1e6 if self.ok else None


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def export_missing(source: Source, names: list[str], force: bool = False,
                   budget: float | None = None) -> list[Outcome]:
    """Export each named format the run lacks (all of them with `force`); one Outcome each;
    int8 formats within `budget` when given (export/budget.py). An unreadable model.keras
    raises ExportError once, before any format is tried."""
    outcomes = []
    wanted = [f for f in FORMATS if f.name in names]
    if any(force or not (source.run_dir / f.file_name).exists() for f in wanted):
        source.model  # noqa: B018  an unreadable model.keras fails here, not once per format
    for fmt in wanted:
        path = source.run_dir / fmt.file_name
        if path.exists() and not force:
            outcomes.append(Outcome(fmt, path, "exists"))
            continue
        print(f"exporting {fmt.file_name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            fmt.export(source, **({"budget": budget} if budget and fmt in INT8 else {}))
            outcomes.append(Outcome(fmt, path, "exported", time.monotonic() - started))
        except Exception as error:  # noqa: BLE001  one broken format never stops the others
            outcomes.append(Outcome(fmt, path, "failed", time.monotonic() - started,
                                    one_line(error)))
    return outcomes
