"""Classifier: a self-describing model file plus an engine, from image to label."""

from __future__ import annotations

import itertools
import os
import queue
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edgeconv.runtime import evaluate
from edgeconv.runtime.confidence import NONE, Confidence
from edgeconv.runtime.engines import default_threads, open_engine
from edgeconv.runtime.metadata import ModelFileError, read_metadata
from edgeconv.runtime.pipeline import Costs, Plan, in_order, plan, thread_choices, timed_ms
from edgeconv.runtime.preprocess import ImageError, ImageSource, load_image
from edgeconv.runtime.text import display


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

    It starts with one interpreter of `threads` threads (default: all cores); `split()`
    measures what a photo costs and replaces it with the interpreters that classify the most
    photos/s within those threads (runtime.pipeline). Interpreters are not thread-safe: each
    call takes a free one, so as many images infer at once as there are interpreters.
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
        self.cap = threads or default_threads()  # threads of all interpreters together
        self.engine = open_engine(model, engine, self.cap)  # the first; its name and checks
        self.plan = Plan(1, self.cap, 0.0)
        self.costs: Costs | None = None
        self._free: queue.SimpleQueue = queue.SimpleQueue()  # interpreters not running now
        self._free.put(self.engine)
        expected = (*self.size, 3)
        if any(n not in (e, -1) for n, e in zip(self.engine.image_shape, expected)) or \
                len(self.engine.image_shape) != 3:
            raise ModelFileError(f"{model}: its metadata says input {list(expected)}, the model "
                                 f"itself takes {list(self.engine.image_shape)}")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Model outputs for uint8 images [N, h, w, 3], as the engine gives them: P(class 1)
        [N, 1] for a sigmoid head, class probabilities [N, k] for a softmax head, and P(none)
        in one more column for a model with a none head (decide() reads them)."""
        engine = self._free.get()
        try:
            outputs = engine.run(images)
        finally:
            self._free.put(engine)
        return outputs

    def predict(self, source: ImageSource) -> Prediction:
        return self.predict_batch([source])[0]

    def predict_batch(self, sources: Iterable[ImageSource]) -> list[Prediction]:
        started = time.perf_counter()
        images = np.stack([self.load(source) for source in sources])
        outputs = self.probabilities(images)
        ms = (time.perf_counter() - started) * 1000 / len(images)
        return [self.decide(output, ms) for output in outputs]

    def split(self) -> Plan:
        """Open the interpreters that infer the most images/s where something else decodes
        (serve's requests, camera frames): planned from inference ms on a blank image.
        Call it before the classifier is shared between threads."""
        engines = self._sizes()
        blank = np.full((1, *self.size, 3), 128, np.uint8)
        return self._use(Costs(0.0, {threads: timed_ms(lambda e=engine: e.run(blank), 3)
                                     for threads, engine in engines.items()}), engines)

    def predict_each(self, sources: Iterable[ImageSource], ahead: int = 4, split: bool = False
                     ) -> Iterator[tuple[ImageSource, Prediction | ImageError]]:
        """Predict sources in order: (source, Prediction) or (source, ImageError).

        One worker per interpreter decodes a source and infers on it (Pillow and the engines
        release the GIL, so they overlap); `sources` is read lazily, at most `ahead` beyond
        the workers' own, so a long stream never sits in memory as decoded images. With
        `split`, the first photos are classified one at a time, two on each interpreter size,
        and what they cost chooses the interpreters for the rest (runtime.pipeline).
        A Prediction's `ms` is its own decode plus inference time.
        """
        sources = iter(sources)
        if split:
            yield from self._measured(list(itertools.islice(
                sources, 2 * len(thread_choices(self.cap)))))
        yield from in_order(self._predict_or_error, sources, self.plan.interpreters, ahead)

    def _measured(self, first: list[ImageSource]
                  ) -> Iterator[tuple[ImageSource, Prediction | ImageError]]:
        """Classify `first` one at a time, timing decode and inference at each interpreter
        size in turn; then open the interpreters their costs choose."""
        engines = self._sizes()
        decode: list[float] = []
        infer: dict[int, list[float]] = {threads: [] for threads in engines}
        for source in first:
            image, decode_seconds = self._timed_load(source)
            if isinstance(image, ImageError):
                yield source, image
                continue
            threads = min(infer, key=lambda size: len(infer[size]))  # each size in turn
            started = time.perf_counter()
            output = engines[threads].run(image[None])
            infer[threads].append(time.perf_counter() - started)
            decode.append(decode_seconds)
            output = output[:, 0] if output.shape[-1] == 1 else output
            yield source, self.decide(output[0], (decode_seconds + infer[threads][-1]) * 1000)
        blank = np.full((1, *self.size, 3), 128, np.uint8)
        for threads, times in infer.items():  # too few photos (or good ones): a blank image
            times += [timed_ms(lambda e=engines[threads]: e.run(blank), 1, 0) / 1000
                      for _ in range(2 - len(times))]
        self._use(Costs(statistics.median(decode) * 1000 if decode else 0.0,
                        {threads: min(times) * 1000 for threads, times in infer.items()}),
                  engines)

    def _sizes(self) -> dict[int, object]:
        """An interpreter of each size worth timing (1, 2, 4... threads, and all of them)."""
        engines = {self.cap: self.engine}
        for threads in thread_choices(self.cap)[:-1]:
            engines[threads] = open_engine(self.path, self.engine.name, threads)
        return engines

    def _use(self, costs: Costs, engines: dict[int, object]) -> Plan:
        """Plan from `costs` and open its interpreters (the timed one of its size among them)."""
        self.costs, self.plan = costs, plan(costs, self.cap)
        chosen = [engines[self.plan.threads]] + [
            open_engine(self.path, self.engine.name, self.plan.threads)
            for _ in range(self.plan.interpreters - 1)]
        self.engine, self._free = chosen[0], queue.SimpleQueue()
        for engine in chosen:
            self._free.put(engine)
        return self.plan

    def _predict_or_error(self, source: ImageSource) -> Prediction | ImageError:
        image, decode_seconds = self._timed_load(source)
        if isinstance(image, ImageError):
            return image
        started = time.perf_counter()
        output = self.probabilities(image[None])[0]
        return self.decide(output, (decode_seconds + time.perf_counter() - started) * 1000)

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
