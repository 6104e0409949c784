"""Classifier: a self-describing model file plus an engine, from image to label."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from runtime.engines import open_engine
from runtime.metadata import read_metadata
from runtime.preprocess import ImageSource, load_image


@dataclass
class Prediction:
    label: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    ms: float = 0.0


class Classifier:
    """`Classifier("model_int8.tflite").predict("cat.jpg")` -> Prediction(label="cats", ...).

    Labels, input size and threshold come from the model's own metadata.
    """

    def __init__(self, model: str | os.PathLike, engine: str = "auto",
                 threads: int | None = None):
        self.path = model
        self.metadata = read_metadata(model)
        self.engine = open_engine(model, engine, threads)
        self.labels: list[str] = self.metadata["labels"]
        self.size: tuple[int, int] = tuple(self.metadata["input"]["shape"][1:3])
        self.threshold: float = self.metadata["output"].get("threshold", 0.5)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Model outputs for uint8 images [N, h, w, 3]: P(class 1) [N] for a sigmoid head,
        class probabilities [N, k] for a softmax head."""
        outputs = self.engine.run(images)
        return outputs[:, 0] if outputs.shape[-1] == 1 else outputs

    def predict(self, source: ImageSource) -> Prediction:
        return self.predict_batch([source])[0]

    def predict_batch(self, sources: Iterable[ImageSource]) -> list[Prediction]:
        started = time.perf_counter()
        images = np.stack([load_image(source, self.size) for source in sources])
        outputs = self.probabilities(images)
        ms = (time.perf_counter() - started) * 1000 / len(images)
        return [self.decide(output, ms) for output in outputs]

    def decide(self, output: np.ndarray | float, ms: float = 0.0) -> Prediction:
        if np.ndim(output) == 0:
            p = float(output)
            scores = {self.labels[0]: 1.0 - p, self.labels[1]: p}
            label = self.labels[1] if p >= self.threshold else self.labels[0]
        else:
            scores = {name: float(v) for name, v in zip(self.labels, output)}
            label = self.labels[int(np.argmax(output))]
        return Prediction(label, scores[label], scores, ms)
