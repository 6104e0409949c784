"""Evaluate a trained model and write what a run leaves behind: metrics and curves."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import keras
import numpy as np

from train.plots import pyplot, save_figure


def predict_labels(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels, probabilities); probabilities are P(class 1) for a sigmoid head."""
    scores = np.asarray(model.predict(images, batch_size=64, verbose=0), dtype=np.float64)
    if scores.shape[-1] == 1:
        scores = scores[:, 0]
        return (scores >= 0.5).astype(np.int32), scores
    return scores.argmax(axis=-1).astype(np.int32), scores


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> list:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix.tolist()


def environment() -> dict:
    """Backend, versions and hardware, for metrics.json."""
    backend = keras.backend.backend()
    info = {"backend": backend, "keras_version": keras.__version__,
            "python": platform.python_version(), "cpu": _cpu_name(), "cores": os.cpu_count()}
    if backend == "tensorflow":
        import tensorflow as tf

        info["backend_version"] = tf.__version__
        info["device"] = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    elif backend == "jax":
        import jax

        info["backend_version"] = jax.__version__
        info["device"] = jax.devices()[0].device_kind
    elif backend == "torch":
        import torch

        info["backend_version"] = torch.__version__
        info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plot_curves(history: dict, path: Path, title: str = "") -> None:
    """Training vs validation accuracy and loss per epoch, as in the book's figures."""
    plt = pyplot()

    epochs = range(1, len(history.get("loss", [])) + 1)
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, key in ((accuracy_axes, "accuracy"), (loss_axes, "loss")):
        axes.plot(epochs, history.get(key, []), "bo", markersize=3, label=f"Training {key}")
        axes.plot(epochs, history.get(f"val_{key}", []), "b", label=f"Validation {key}")
        axes.set_xlabel("epoch")
        axes.set_title(f"Training and validation {key}")
        axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
