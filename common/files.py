"""Atomic file writes: readers see the old file or the whole new one, never half of it."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_PARTIAL = re.compile(r"\.[^/]+\.[a-z0-9_]{8}(\.[^./]+)?")  # mkstemp's names below


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds.

    The temporary name keeps `final`'s suffix, since some writers (Keras) insist on it.
    """
    final = Path(final)
    if not final.parent.is_dir():
        raise FileNotFoundError(f"{final.parent}: folder does not exist")
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=final.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; others (a service user) read these
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete what atomic_path left in `folder` when its process was killed mid-write (a
    SIGKILL runs no cleanup); the files they would have become are untouched."""
    partial = [path for path in Path(folder).glob(".*")
               if path.is_file() and _PARTIAL.fullmatch(path.name)]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
