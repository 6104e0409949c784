"""A candidate model run in the shadow of the current one, on the same live frames.

Both classify every frame; only the current model's answers are printed or served. The
shadow's figures say whether the candidate may replace it: how often the two give the same
label, and how much more often the candidate answers "unsure" or "none". A fleet rollout's
canary stage (devices/fleet/) runs this on the first batch and goes on only when the figures
stay within the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeconv.runtime.classifier import Classifier, Prediction
from edgeconv.runtime.confidence import NONE
from edgeconv.runtime.evaluate import UNSURE


@dataclass(frozen=True)
class Bounds:
    min_agreement: float = 0.9  # the share of frames both label the same, at least
    max_rise: float = 0.1  # the candidate's unsure and none shares over the current's, at most
    min_frames: int = 1  # fewer frames than this decide nothing: the check fails


class Shadow:
    """Counts of the current and the candidate model's answers on the same frames."""

    def __init__(self, candidate: Classifier, bounds: Bounds = Bounds()):
        self.candidate, self.bounds = candidate, bounds
        self.frames = self.agreed = 0
        self.answers = {"current": {UNSURE: 0, NONE: 0}, "candidate": {UNSURE: 0, NONE: 0}}

    def compare(self, frame: np.ndarray, current: Prediction) -> Prediction:
        """Classify `frame` with the candidate too and count; the candidate's prediction."""
        candidate = self.candidate.predict(frame)
        self.frames += 1
        self.agreed += candidate.label == current.label
        for name, prediction in (("current", current), ("candidate", candidate)):
            if prediction.label in (UNSURE, NONE):
                self.answers[name][prediction.label] += 1
        return candidate

    def figures(self) -> dict:
        """Frames, agreement, both models' unsure and none shares, and whether the candidate
        stays within the bounds (`passed`, with the reasons it did not)."""
        frames = max(self.frames, 1)
        shares = {name: {answer: round(count / frames, 4) for answer, count in counts.items()}
                  for name, counts in self.answers.items()}
        agreement = round(self.agreed / frames, 4)
        failed = []
        if self.frames < self.bounds.min_frames:
            failed.append(f"{self.frames} frames, fewer than the {self.bounds.min_frames} "
                          "asked for")
        if agreement < self.bounds.min_agreement:
            failed.append(f"agreement {agreement:.3f} under {self.bounds.min_agreement:g}")
        for answer in (UNSURE, NONE):
            rise = shares["candidate"][answer] - shares["current"][answer]
            if rise > self.bounds.max_rise + 1e-9:
                failed.append(f"{answer} {shares['candidate'][answer]:.3f} against "
                              f"{shares['current'][answer]:.3f}, up more than "
                              f"{self.bounds.max_rise:g}")
        return {"frames": self.frames, "agreement": agreement, **shares,
                "bounds": {"min_agreement": self.bounds.min_agreement,
                           "max_rise": self.bounds.max_rise,
                           "min_frames": self.bounds.min_frames},
                "passed": not failed, "failed": failed}
