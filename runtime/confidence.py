"""Calibrated scores and the "none of these" answer, as a model's metadata describes them.

A model may carry, in its metadata's `output`:

- `temperature`: T fitted on validation photos after training. A sigmoid's P(class 1) becomes
  sigmoid(logit(p) / T), a softmax row softmax(log(p) / T): the label never changes, the
  score becomes a probability that matches how often the label is right.
- `none`: {"column": c, "threshold": t}: the model's output has one more column than its
  classes need, P(none of these) from a head trained on negative photos; at or over t the
  answer is "none".

A model without them (exported before, or trained without negatives) gives its raw scores and
never answers "none".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE = "none"
EPSILON = 1.0 / 1024  # int8 outputs step by 1/256: 0 and 1 are reachable, logit(0) is not
ECE_BINS = 15


@dataclass(frozen=True)
class Confidence:
    temperature: float = 1.0
    none_column: int | None = None
    none_threshold: float | None = None

    @classmethod
    def from_output(cls, output: dict, classes: int) -> Confidence:
        """From metadata's `output` for a model of `classes` classes; ValueError if malformed."""
        temperature = float(output.get("temperature") or 1.0)
        if not 0.01 <= temperature <= 100:
            raise ValueError(f"temperature {temperature} out of range")
        none = output.get("none")
        if none is None:
            return cls(temperature)
        column, threshold = int(none["column"]), float(none["threshold"])
        if column != class_columns(classes) or not 0 <= threshold <= 1:
            raise ValueError(f"none column {column} / threshold {threshold} do not fit")
        return cls(temperature, column, threshold)

    def split(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Outputs [N, k(+1)] -> (class outputs [N, k], P(none) [N] or None)."""
        outputs = np.asarray(outputs)
        if self.none_column is None:
            return outputs, None
        return outputs[:, :self.none_column], outputs[:, self.none_column]

    def calibrate(self, class_outputs: np.ndarray) -> np.ndarray:
        """Class outputs [N, k] (or a sigmoid's [N]) with the temperature applied."""
        return calibrated(class_outputs, self.temperature)

    def is_none(self, none_scores: np.ndarray) -> np.ndarray:
        """Which P(none) [N] answer "none"."""
        return np.asarray(none_scores) >= self.none_threshold


def class_columns(classes: int) -> int:
    """Output columns a model of `classes` classes has before any none column."""
    return 1 if classes == 2 else classes


def calibrated(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """Sigmoid P(class 1) ([N] or [N, 1]) or softmax rows [N, k] at `temperature`."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if temperature == 1.0:
        return outputs
    clipped = np.clip(outputs, EPSILON, 1 - EPSILON)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        logits = np.log(clipped) - np.log1p(-clipped)
        return 1.0 / (1.0 + np.exp(-logits / temperature))
    logits = np.log(clipped) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_scores(outputs: np.ndarray) -> np.ndarray:
    """The score of the label each row gets: max(p, 1 - p) for a sigmoid, the top softmax."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        p = outputs.reshape(len(outputs))
        return np.maximum(p, 1 - p)
    return outputs.max(axis=-1)


def expected_calibration_error(scores: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: over equal-width bins of the top score, the gap between mean score and accuracy,
    weighted by the share of photos in the bin."""
    points = reliability_bins(scores, correct, bins)
    total = sum(count for _, _, count in points)
    return float(sum(count / total * abs(mean - right) for mean, right, count in points))


def reliability_bins(scores: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
                     ) -> list[tuple[float, float, int]]:
    """(mean score, accuracy, photos) per non-empty bin of equal width: a reliability
    diagram's points."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, np.float64)
    which = np.clip((scores * bins).astype(int), 0, bins - 1)
    return [(float(scores[which == b].mean()), float(correct[which == b].mean()),
             int((which == b).sum())) for b in range(bins) if (which == b).any()]
