"""Classifier: a self-describing model file plus an engine, from image to label."""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from runtime.engines import open_engine
from runtime.metadata import read_metadata
from runtime.preprocess import ImageError, ImageSource, load_image


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

    def predict_each(self, sources: Iterable[ImageSource], ahead: int = 4
                     ) -> Iterator[tuple[ImageSource, Prediction | ImageError]]:
        """Predict sources one by one, in order: (source, Prediction) or (source, ImageError).

        A background thread decodes up to `ahead` images while the engine runs on the current
        one (Pillow and the engines release the GIL, so the two overlap). `sources` is read
        lazily, so a long stream of paths never sits in memory as decoded images.
        A Prediction's `ms` is its own decode plus inference time.
        """
        sources = iter(sources)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
            pending: deque[tuple[ImageSource, Future]] = deque()

            def read_ahead() -> None:
                for source in itertools.islice(sources, ahead + 1 - len(pending)):
                    pending.append((source, pool.submit(self._timed_load, source)))

            read_ahead()
            while pending:
                source, loading = pending.popleft()
                read_ahead()
                image, decode_seconds = loading.result()
                if isinstance(image, ImageError):
                    yield source, image
                    continue
                started = time.perf_counter()
                output = self.probabilities(image[None])[0]
                seconds = decode_seconds + time.perf_counter() - started
                yield source, self.decide(output, seconds * 1000)

    def _timed_load(self, source: ImageSource) -> tuple[np.ndarray | ImageError, float]:
        started = time.perf_counter()
        try:
            image = load_image(source, self.size)
        except ImageError as error:
            return error, 0.0
        return image, time.perf_counter() - started

    def decide(self, output: np.ndarray | float, ms: float = 0.0) -> Prediction:
        if np.ndim(output) == 0:
            p = float(output)
            scores = {self.labels[0]: 1.0 - p, self.labels[1]: p}
            label = self.labels[1] if p >= self.threshold else self.labels[0]
        else:
            scores = {name: float(v) for name, v in zip(self.labels, output)}
            label = self.labels[int(np.argmax(output))]
        return Prediction(label, scores[label], scores, ms)
