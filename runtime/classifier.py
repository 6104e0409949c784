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

from runtime import evaluate
from runtime.confidence import NONE, Confidence
from runtime.engines import open_engine
from runtime.metadata import ModelFileError, read_metadata
from runtime.preprocess import ImageError, ImageSource, load_image
from runtime.text import display


@dataclass
class Prediction:
    label: str  # a class; "none" for none of them; "unsure" when its score is under min score
    score: float  # the class's calibrated probability (the model's temperature applied)
    scores: dict[str, float] = field(default_factory=dict)
    ms: float = 0.0
    guess: str = ""  # the class, even when the label is "unsure" or "none" (not in as_dict)
    none: float | None = None  # P(none of these), from a model with a none head
    raw_score: float = 0.0  # the score before calibration (not in as_dict)

    def as_dict(self) -> dict:
        """The fields of a `--json` line (and of the server's answers)."""
        fields = {"label": self.label, "score": round(self.score, 6), "scores": self.scores,
                  "ms": round(self.ms, 3)}
        if self.none is not None:
            fields["none"] = round(self.none, 6)
        return fields


class Classifier:
    """`Classifier("model_int8.tflite").predict("photo.jpg")` -> Prediction(label=..., ...),
    the label being one of the model's classes, "none" or "unsure".

    Labels, input size, threshold, temperature and none head come from the model's own
    metadata (runtime/confidence.py). A model with a none head answers "none" when its
    P(none) reaches the stored threshold; else below `min_score` (default: the metadata's
    `output.min_score`, else 0) on the calibrated probability the label is "unsure"; the
    scores are kept.
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
            self.confidence = Confidence.from_output(output, len(self.labels))
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{model}: edgeconv metadata's threshold, min_score, "
                                 "temperature or none head is malformed") from None
        self.engine = open_engine(model, engine, threads)
        self._engine_lock = threading.Lock()  # engines are not thread-safe; decoding is
        expected = (*self.size, 3)
        if any(n not in (e, -1) for n, e in zip(self.engine.image_shape, expected)) or \
                len(self.engine.image_shape) != 3:
            raise ModelFileError(f"{model}: its metadata says input {list(expected)}, the model "
                                 f"itself takes {list(self.engine.image_shape)}")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Model outputs for uint8 images [N, h, w, 3], as the engine gives them: P(class 1)
        [N, 1] for a sigmoid head, class probabilities [N, k] for a softmax head, and P(none)
        in one more column for a model with a none head (decide() reads them)."""
        with self._engine_lock:
            return self.engine.run(images)

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
        """One image's output -> its label ("none" at the none threshold, "unsure" under
        min_score), calibrated score and scores."""
        outputs, none = self.confidence.split(np.reshape(output, (1, -1)))
        label = self.labels[int(evaluate.decide(outputs, self.threshold)[0])]
        scores = evaluate.scores_of(self.confidence.calibrate(outputs)[0], self.labels)
        score = scores[label]
        raw_score = evaluate.scores_of(outputs[0], self.labels)[label]
        if none is not None and self.confidence.is_none(none)[0]:
            answer = NONE
        else:
            answer = evaluate.UNSURE if score < self.min_score else label
        return Prediction(answer, score, scores, ms, guess=label,
                          none=None if none is None else float(none[0]), raw_score=raw_score)
