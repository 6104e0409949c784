"""Labels from model outputs, and how good they are: one implementation for the device,
the parity check, the benchmark and training.

Truth comes from class folders: a photo's label is the name of the folder it sits in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.runtime.preprocess import list_images
from edgeconv.runtime.tables import markdown_table, percent

UNSURE = "unsure"


def decide(outputs: np.ndarray, threshold: float | None = 0.5) -> np.ndarray:
    """Class indices for model outputs: P(class 1) of a sigmoid head ([N] or [N, 1]) against
    `threshold` (None: 0.5), or the argmax of softmax rows [N, k], which takes none.

    Two columns are a sigmoid's P(class 1) and a none head's P(none) (runtime/confidence.py):
    two classes always end in one sigmoid, a softmax head has three or more columns."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 or outputs.shape[-1] <= 2:
        cut = 0.5 if threshold is None else threshold
        return (outputs.reshape(len(outputs), -1)[:, 0] >= cut).astype(np.int32)
    return outputs.argmax(axis=-1).astype(np.int32)


def scores_of(output: np.ndarray | float, labels: list[str]) -> dict[str, float]:
    """label -> probability for one image's output (a sigmoid's P(class 1), or a softmax row)."""
    if np.size(output) == 1:
        p = float(np.ravel(output)[0])
        return {labels[0]: 1.0 - p, labels[1]: p}
    return {name: float(v) for name, v in zip(labels, np.ravel(output))}


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    """Share of predictions equal to the truth; None when there is nothing to score."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return float((truth == predicted).mean()) if len(truth) else None


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int
                     ) -> list[list[int]]:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(truth, int), np.asarray(predicted, int)), 1)
    return matrix.tolist()


def answered(truth: np.ndarray, guessed: np.ndarray, scores: np.ndarray, min_score: float
             ) -> tuple[float, float | None]:
    """(coverage, accuracy on the answered) when a guess whose score is under `min_score` is
    "unsure": the share of photos answered, and the share of those answered right."""
    truth, guessed, scores = np.asarray(truth), np.asarray(guessed), np.asarray(scores)
    sure = scores >= min_score
    return float(sure.mean()), accuracy(truth[sure], guessed[sure])


def min_score_table(truth: np.ndarray, guessed: np.ndarray, scores: np.ndarray,
                    classes: int, also: float = 0.0) -> str:
    """Coverage and accuracy on the answered photos at a few min scores, to choose one.

    The top score is never under 1/classes (0.5 for two), so only thresholds above that cut.
    """
    steps = [0.0, *(s for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95) if s > 1 / classes)]
    rows = []
    for min_score in sorted({*steps, round(also, 4)}):
        coverage, right = answered(truth, guessed, scores, min_score)
        rows.append([f"{min_score:.2f}", percent(coverage), percent(right)])
    return markdown_table(["--min-score", "answered", "accuracy on answered"], rows)


def confusion_text(labels: list[str], matrix: list[list[int]]) -> str:
    """The matrix as aligned text, rows true, columns predicted."""
    width = max(map(len, labels)) + 2
    lines = ["confusion (rows true, columns predicted):",
             " " * width + "".join(f"{name:>{width}}" for name in labels)]
    lines += [f"{name:<{width}}" + "".join(f"{n:>{width}}" for n in row)
              for name, row in zip(labels, matrix)]
    return "\n".join(lines)


def true_class(path: Path, labels: list[str]) -> int:
    """The index of the class folder `path` sits in, or -1 when it is not one of `labels`."""
    return labels.index(path.parent.name) if path.parent.name in labels else -1


def labelled_images(folder: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image under `folder`, sorted, and the class index of each (-1: not a class)."""
    files = list_images(folder)
    return files, np.array([true_class(path, labels) for path in files], dtype=int)
