"""Classifier: a self-describing model file plus an engine, from image to label."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgeconv.runtime import evaluate
from edgeconv.runtime.engines import open_engine
from edgeconv.runtime.metadata import ModelFileError, read_metadata
from edgeconv.runtime.preprocess import ImageError, ImageSource, load_image
from edgeconv.runtime.text import display


@dataclass
class Prediction:
    label: str  # a class, or "unsure" when its score is under the min score
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    ms: float = 0.0
    guess: str = ""  # the class, even when the label is "unsure" (not in as_dict)

    def as_dict(self) -> dict:
        """The fields of a `--json` line (and of the server's answers)."""
        return {"label": self.label, "score": round(self.score, 6), "scores": self.scores,
                "ms": round(self.ms, 3)}


class Classifier:
    """`Classifier("model_int8.tflite").predict("photo.jpg")` -> Prediction(label=..., ...),
    the label being one of the model's classes.

    Labels, input size and threshold come from the model's own metadata. Below `min_score`
    (default: the metadata's `output.min_score`, else 0) the label is "unsure"; the scores
    are kept.
    """

    def __init__(self, model: str | os.PathLike, engine: str = "auto",
                 threads: int | None = None, min_score: float | None = None,
                 fast_jpeg: bool = True):
        self.path = model
        self.fast_jpeg = fast_jpeg  # large JPEGs decoded at a reduced DCT scale (load_image)
        self.metadata = read_metadata(model)
        try:
            self.labels: list[str] = [str(label) for label in self.metadata["labels"]]
            shape = self.metadata["input"]["shape"]
            output = dict(self.metadata["output"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{model}: edgeconv metadata lacks labels, input or output"
                                 ) from None
        if any(display(label) != label for label in self.labels):
            raise ModelFileError(f"{model}: edgeconv metadata has labels with control "
                                 f"characters: {', '.join(map(display, self.labels))}")
        if not (isinstance(shape, list) and len(shape) == 4 and shape[3] == 3 and all(
                isinstance(n, int) and n > 0 for n in shape)) or len(self.labels) < 2:
            raise ModelFileError(f"{model}: edgeconv metadata has input shape {shape!r} and "
                                 f"{len(self.labels)} labels; expected [1, h, w, 3] and two "
                                 "or more")
        self.size: tuple[int, int] = (shape[1], shape[2])
        try:
            # A sigmoid's P(class 1) cut; a softmax head has none (metadata null): argmax.
            threshold = output.get("threshold")
            self.threshold: float | None = float(threshold) if threshold is not None else (
                0.5 if len(self.labels) == 2 else None)
            self.min_score = float(min_score if min_score is not None
                                   else output.get("min_score") or 0.0)
        except (TypeError, ValueError):
            raise ModelFileError(f"{model}: edgeconv metadata's threshold or min_score is not "
                                 "a number") from None
        self.engine = open_engine(model, engine, threads)
        self._engine_lock = threading.Lock()  # engines are not thread-safe; decoding is
        expected = (*self.size, 3)
        if any(n not in (e, -1) for n, e in zip(self.engine.image_shape, expected)) or \
                len(self.engine.image_shape) != 3:
            raise ModelFileError(f"{model}: its metadata says input {list(expected)}, the model "
                                 f"itself takes {list(self.engine.image_shape)}")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Model outputs for uint8 images [N, h, w, 3]: P(class 1) [N] for a sigmoid head,
        class probabilities [N, k] for a softmax head."""
        with self._engine_lock:
            outputs = self.engine.run(images)
        return outputs[:, 0] if outputs.shape[-1] == 1 else outputs

    def predict(self, source: ImageSource) -> Prediction:
        return self.predict_batch([source])[0]

    def predict_batch(self, sources: Iterable[ImageSource]) -> list[Prediction]:
        started = time.perf_counter()
        images = np.stack([self.load(source) for source in sources])
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
            image = self.load(source)
        except ImageError as error:
            return error, 0.0
        return image, time.perf_counter() - started

    def load(self, source: ImageSource, wait: float | None = None) -> np.ndarray:
        """`source` as this model's input: uint8 RGB at its size (runtime.preprocess; `wait`:
        how long to wait for a decoding slot before ImageBusy, None for as long as it takes)."""
        return load_image(source, self.size, self.fast_jpeg, wait)

    def decide(self, output: np.ndarray | float, ms: float = 0.0) -> Prediction:
        """One image's output -> its label ("unsure" under min_score), score and scores."""
        label = self.labels[int(evaluate.decide(np.reshape(output, (1, -1)), self.threshold)[0])]
        scores = evaluate.scores_of(output, self.labels)
        score = scores[label]
        return Prediction(evaluate.UNSURE if score < self.min_score else label, score, scores, ms,
                          guess=label)
