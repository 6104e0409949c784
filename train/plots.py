"""Figures as PNG files: matplotlib on its file-only backend, written atomically."""

from __future__ import annotations

from pathlib import Path

from edgeconv.common.files import atomic_path


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


def draw_curves(axes_pair, history: dict, title: str = "") -> None:
    """Training (dots) against validation (line) accuracy and loss per epoch, as in the book."""
    epochs = range(1, len(history.get("loss", [])) + 1)
    for axes, key in zip(axes_pair, ("accuracy", "loss")):
        axes.plot(epochs, history.get(key, []), "bo", markersize=3, label=f"training {key}")
        axes.plot(history.get("val_epochs", epochs), history.get(f"val_{key}", []), "b",
                  label=f"validation {key}")
        axes.set_xlabel("epoch")
        axes.set_title(f"{title}: {key}" if title else f"training and validation {key}")
        axes.legend()


def plot_curves(history: dict, path: Path, title: str = "") -> None:
    """One run's accuracy and loss curves, side by side."""
    figure, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    draw_curves(axes, history)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
