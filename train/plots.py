"""Figures as PNG files: matplotlib on its file-only backend, written atomically."""

from __future__ import annotations

from pathlib import Path

from runtime.files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend, so no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, dpi: int = 90) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(figure)
