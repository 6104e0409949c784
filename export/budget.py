"""int8 within an accuracy budget: try remedies in order of cost until the export agrees with
the Keras model on enough validation photos, and keep the first (cheapest) that does.

The order: the plain export; a larger calibration set (from the run's training split when the
given one is another folder); the format's other calibration methods
(ONNX Runtime: Entropy, Percentile); then the layers the per-layer report ranks worst kept in
float, 1, 2, 4 and 8 of them (size and latency grow only from here on). Each try is one line:
what, agreement, size, latency. The chosen recipe goes into the model's metadata.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeconv.export.source import ExportError, Source, calibration_set
from edgeconv.runtime.engines import open_engine
from edgeconv.runtime.evaluate import decide, labelled_images
from edgeconv.runtime.preprocess import ImageError, load_image

LARGER_CALIBRATION = 1000
FLOAT_LAYER_STEPS = (1, 2, 4, 8)
TIMED_IMAGES = 50


@dataclass(frozen=True)
class Recipe:
    """How one int8 export was made."""

    calibration_folder: Path | None = None
    calibration_size: int = 300
    method: str = "minmax"
    float_layers: tuple[str, ...] = ()

    def describe(self) -> str:
        folder = self.calibration_folder.name if self.calibration_folder else "?"
        text = f"{self.calibration_size} calibration images of {folder}, {self.method}"
        if self.float_layers:
            count = len(self.float_layers)
            text += f", {count} layer{'s' if count > 1 else ''} in float"
        return text

    def as_metadata(self, budget: float | None = None, agreement: float | None = None,
                    photos: str | None = None) -> dict:
        """What the model's metadata records (a folder's name, never its path); with a
        budget, the agreement reached on the budget photos."""
        return {"calibration_folder": self.calibration_folder and self.calibration_folder.name,
                "calibration_images": self.calibration_size, "method": self.method,
                "float_layers": list(self.float_layers), "budget": budget,
                "agreement": agreement, "budget_photos": photos}


class Calibrations:
    """The calibration sets an export draws from, each loaded once."""

    def __init__(self, source: Source, given: Path | None, size: int, method: str = "minmax"):
        self.source, self.size, self.method = source, size, method
        self.given = given or source.data_split("train")
        self.loaded: dict[tuple[Path | None, int], tuple[np.ndarray, dict]] = {}

    def first(self) -> Recipe:
        return Recipe(self.given, self.size, self.method)

    def larger(self) -> Recipe:
        """More images, from the run's training split when there is one."""
        return Recipe(self.source.data_split("train") or self.given,
                      max(self.size, LARGER_CALIBRATION), self.method)

    def images(self, recipe: Recipe) -> np.ndarray:
        return self.load(recipe)[0]

    def described(self, recipe: Recipe) -> dict:
        return self.load(recipe)[1]

    def load(self, recipe: Recipe) -> tuple[np.ndarray, dict]:
        key = (recipe.calibration_folder, recipe.calibration_size)
        if key not in self.loaded:
            self.loaded[key] = calibration_set(self.source, recipe.calibration_folder,
                                               recipe.calibration_size)
        return self.loaded[key]


@dataclass
class Outcome:
    """What a budget search chose."""

    content: bytes
    recipe: Recipe
    attempts: list[Attempt]
    photos: str  # the budget photos' folder name

    @property
    def agreement(self) -> float:
        return next(a.agreement for a in self.attempts if a.recipe == self.recipe)

    def metadata(self, budget: float) -> dict:
        return self.recipe.as_metadata(budget, self.agreement, self.photos)


@dataclass
class Attempt:
    recipe: Recipe
    agreement: float
    bytes: int
    ms: float

    def line(self, number: int) -> str:
        return (f"try {number}: {self.recipe.describe():<48} agreement {100 * self.agreement:6.2f}%"
                f"  {self.bytes / 1e6:5.2f} MB  {self.ms:6.2f} ms")


@dataclass
class Judge:
    """Keras's labels on the budget photos, and how often an export's labels agree."""

    source: Source
    photos: Path
    images: np.ndarray = field(init=False)
    reference: np.ndarray = field(init=False)
    threshold: float = 0.5

    @classmethod
    def for_source(cls, source: Source, photos: Path | None) -> Judge:
        """Judge on `photos`, by default the run's validation split."""
        photos = photos or source.data_split("validation")
        if photos is None:
            raise ExportError("--budget needs photos to measure agreement on: pass "
                              "--budget-data DIR (the run records no validation split)")
        return cls(source, photos)

    def __post_init__(self) -> None:
        if not self.photos.is_dir():
            raise ExportError(f"{self.photos}: budget photos not found (pass --budget-data DIR)")
        files, _ = labelled_images(self.photos, self.source.labels)
        images = []
        for path in files:
            try:
                images.append(load_image(path, self.source.input_size))
            except ImageError as error:
                print(f"budget: skipped {error}", file=sys.stderr)
        if not images:
            raise ExportError(f"{self.photos}: no readable images for the budget")
        self.images = np.stack(images)
        self.reference = decide(self.source.predict(self.images), self.threshold)

    def attempt(self, recipe: Recipe, content: bytes, suffix: str) -> Attempt:
        with tempfile.TemporaryDirectory(prefix="edgeconv-budget-") as work:
            path = Path(work) / f"try{suffix}"
            path.write_bytes(content)
            engine = open_engine(path, threads=1)
            outputs, times = [], []
            for index in range(len(self.images)):
                started = time.perf_counter()
                outputs.append(engine.run(self.images[index:index + 1]))
                if index < TIMED_IMAGES:
                    times.append(time.perf_counter() - started)
        labels = decide(np.concatenate(outputs), self.threshold)
        return Attempt(recipe, float((labels == self.reference).mean()), len(content),
                       1000 * float(np.median(times)))


def search(build: Callable[[Recipe], bytes], rank_layers: Callable[[Recipe], list[str]],
           judge: Judge, budget: float, suffix: str, calibrations: Calibrations,
           methods: tuple[str, ...] = ("minmax",), say: Callable[[str], None] | None = None
           ) -> Outcome:
    """The cheapest export whose agreement reaches `budget`, else the most faithful one."""
    attempts: list[Attempt] = []
    best: tuple[Attempt, bytes] | None = None

    def attempt(recipe: Recipe) -> bytes | None:
        """The export's bytes when it meets the budget, else None."""
        nonlocal best
        content = build(recipe)
        found = judge.attempt(recipe, content, suffix)
        attempts.append(found)
        (say or stderr_line)(found.line(len(attempts)))
        if best is None or found.agreement > best[0].agreement:
            best = (found, content)
        return content if found.agreement >= budget else None

    for recipe in dict.fromkeys([calibrations.first(), calibrations.larger()]):
        if (content := attempt(recipe)) is not None:
            return Outcome(content, recipe, attempts, judge.photos.name)
    base = best[0].recipe
    for method in (method for method in methods if method != calibrations.method):
        recipe = replace(base, method=method)
        if (content := attempt(recipe)) is not None:
            return Outcome(content, recipe, attempts, judge.photos.name)
    ranked = rank_layers(best[0].recipe)
    base = best[0].recipe
    for count in (count for count in FLOAT_LAYER_STEPS if count <= len(ranked)):
        recipe = replace(base, float_layers=tuple(ranked[:count]))
        if (content := attempt(recipe)) is not None:
            return Outcome(content, recipe, attempts, judge.photos.name)
    (say or stderr_line)(f"budget {100 * budget:.2f}% not met: keeping the most faithful try "
                         f"({100 * best[0].agreement:.2f}%)")
    return Outcome(best[1], best[0].recipe, attempts, judge.photos.name)


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
