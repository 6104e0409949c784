"""Training recipes: the seed's two experiments and edgeconv's plus recipe, as data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

# The seed's ImageDataGenerator settings (rotation and shear in degrees, shift and zoom as
# fractions), and the gentler ones of the plus recipe.
SEED_AUGMENTATION = {"rotation": 40.0, "shift": 0.2, "shear": 0.2, "zoom": 0.2}
PLUS_AUGMENTATION = {"rotation": 15.0, "shift": 0.1, "shear": 5.0, "zoom": 0.2}


@dataclass(frozen=True)
class Recipe:
    name: str
    dropout: float
    augment: dict | None  # RandomAffine settings (horizontal flip always), or None for none
    batch_size: int
    epochs: int
    passes_per_epoch: float  # training-set passes per epoch: steps = passes * images / batch
    architecture: str = "seed"  # one of ARCHITECTURE_NAMES
    optimizer: str = "rmsprop"  # rmsprop at a constant rate, as in the seed; or adamw
    learning_rate: float = 1e-4  # adamw: the peak, reached after warmup, then cosine to 0
    weight_decay: float = 0.0  # adamw only
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    erasing: float = 0.0  # probability of random erasing per training image
    color: float = 0.0  # colour jitter: brightness, contrast, saturation x U(1 - c, 1 + c)
    # Progressive resizing: [[size, share of the epochs], ...] in order, e.g. [[112, 0.75],
    # [150, 0.25]]; None trains every epoch at the input size. Validation and the saved model
    # stay at the input size.
    sizes: list | None = None
    mixup: float = 0.0  # MixUp's Beta(a, a) parameter a; 0 is off
    # Weight averaging: the momentum of an exponential moving average of the weights (adamw
    # only), e.g. 0.998; validation and the saved model take the averages. 0 is off.
    ema: float = 0.0
    cutmix: float = 0.0  # CutMix's a; with mixup too, each batch takes one of the two
    # Distillation: trained models (.keras files or run folders) whose averaged answer on each
    # augmented batch the network learns too, with weight `distill` (1: the teachers' alone).
    teachers: list | None = None
    distill: float = 0.5
    summary: str = field(default="", compare=False)

    def steps_per_epoch(self, train_images: int, batch_size: int | None = None) -> int:
        batch = batch_size or self.batch_size
        return max(1, round(self.passes_per_epoch * train_images / batch))

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # 30 epochs of one pass over the 2,000 training images, batch 20 (100 steps).
    "baseline": Recipe(
        "baseline", dropout=0.0, augment=None, batch_size=20, epochs=30, passes_per_epoch=1.0,
        summary="the seed convnet, no augmentation, 30 epochs (the book's ~72%)"),
    # 100 epochs of 100 steps of 32 augmented images: 3,200 samples (1.6 passes) per epoch.
    "augmented": Recipe(
        "augmented", dropout=0.5, augment=SEED_AUGMENTATION, batch_size=32, epochs=100,
        passes_per_epoch=1.6,
        summary="the seed convnet + augmentation + dropout, 100 epochs (the book's ~82%)"),
    "plus": Recipe(
        "plus", dropout=0.3, augment=PLUS_AUGMENTATION, batch_size=32, epochs=120,
        passes_per_epoch=1.0, architecture="plus", optimizer="adamw", learning_rate=2e-3,
        weight_decay=0.05, warmup_epochs=3, label_smoothing=0.1, erasing=0.5,
        summary="residual separable convnet + BN, AdamW, cosine, label smoothing, "
        "random erasing"),
}


FIXED = {"name", "epochs", "batch_size", "summary"}  # names, or set by their own flags
OPTIMIZERS = ("rmsprop", "adamw")
# The keys of train.model.ARCHITECTURES (a test keeps them equal), named here so that a bad
# --set is refused before Keras starts.
ARCHITECTURE_NAMES = ("seed", "plus", "plus-foldable", "plus-lite", "plus-48")


def parse_settings(settings: list[str]) -> dict:
    """KEY=VALUE strings as a dict; VALUE is JSON (0.1, null, {"zoom": 0.3}) or a bare word."""
    parsed = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ValueError(f"--set {setting!r}: expected KEY=VALUE")
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key] = text  # a bare word such as adamw
    return parsed


def with_settings(recipe: Recipe, settings: dict) -> Recipe:
    """The recipe with `settings` applied; raises ValueError with a one-line message."""
    names = [f.name for f in fields(Recipe) if f.name not in FIXED]
    for key, value in settings.items():
        shown = f"--set {key}={json.dumps(value)}"
        if key not in names:
            raise ValueError(f"{shown}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        current = getattr(recipe, key)
        if isinstance(current, (int, float)) and not isinstance(value, (int, float)):
            raise ValueError(f"{shown}: {key} takes a number")
        if key == "augment" and not (value is None or isinstance(value, dict)):
            raise ValueError(f"{shown}: augment takes null or a JSON object such as "
                             '{"rotation": 15, "zoom": 0.2}')
        if key == "optimizer" and value not in OPTIMIZERS:
            raise ValueError(f"{shown}: optimizer is one of {', '.join(OPTIMIZERS)}")
        if key == "architecture" and value not in ARCHITECTURE_NAMES:
            raise ValueError(f"{shown}: architecture is one of {', '.join(ARCHITECTURE_NAMES)}")
        if key == "sizes" and value is not None:
            check_sizes(value, shown)
        if key in ("mixup", "cutmix", "erasing", "label_smoothing", "dropout") and value < 0:
            raise ValueError(f"{shown}: {key} cannot be negative")
        if key == "color" and not 0 <= value < 1:
            raise ValueError(f"{shown}: the colour jitter's strength is 0 (off) or in (0, 1), "
                             "e.g. 0.3")
        if key == "teachers" and value is not None:
            teacher_files(value)
    changed = replace(recipe, **settings)
    if not 0 < changed.distill <= 1:
        raise ValueError(f"--set distill={changed.distill}: the teachers' weight is in (0, 1], "
                         "e.g. 0.5")
    if not 0 <= changed.ema < 1:
        raise ValueError(f"--set ema={changed.ema}: the averaging momentum is 0 (off) or in "
                         "(0, 1), e.g. 0.998")
    if changed.ema and changed.optimizer != "adamw":
        raise ValueError("--set ema: weight averaging is made by the adamw optimizer; add "
                         "--set optimizer=adamw")
    if changed.sizes and changed.architecture == "seed":
        raise ValueError("--set sizes: the seed convnet (Flatten + Dense) takes one input size "
                         "only; progressive resizing needs a plus architecture")
    return changed


def teacher_files(teachers) -> list[str]:
    """Absolute paths of the teachers' .keras files (a run folder stands for its model.keras);
    ValueError when one is missing."""
    shown = f"--set teachers={json.dumps(teachers)}"
    if not isinstance(teachers, list) or not teachers or not all(
            isinstance(name, str) for name in teachers):
        raise ValueError(f"{shown}: teachers takes a JSON list of .keras files or run "
                         'folders, e.g. \'teachers=["runs/plus-seed0", "models/plus.keras"]\'')
    files = []
    for name in teachers:
        path = Path(name) / "model.keras" if Path(name).is_dir() else Path(name)
        if not path.is_file() or path.suffix != ".keras":
            raise ValueError(f"{shown}: {name} is not a .keras file or a finished run folder")
        files.append(str(path.resolve()))
    return files


def check_sizes(sizes, shown: str) -> None:
    """Raise ValueError unless `sizes` is [[size, share], ...] with shares summing to 1."""
    example = "[[112, 0.75], [150, 0.25]]"
    if not isinstance(sizes, list) or not sizes or not all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
            and isinstance(pair[1], (int, float)) and pair[0] >= 32 and pair[1] > 0
            for pair in sizes):
        raise ValueError(f"{shown}: sizes takes [[size, share of the epochs], ...] with sizes "
                         f"of at least 32 pixels, e.g. {example}")
    if abs(sum(pair[1] for pair in sizes) - 1) > 1e-6:
        raise ValueError(f"{shown}: the shares of the epochs add up to "
                         f"{sum(pair[1] for pair in sizes):g}, not 1, e.g. {example}")


def size_phases(sizes: list | None, epochs: int, full: int) -> list[tuple[int, int]]:
    """[(last epoch, size), ...]: the epochs 1..epochs split by `sizes`' shares (every phase
    at least one epoch while epochs allow), or one phase at `full`."""
    if not sizes:
        return [(epochs, full)]
    phases, done, share = [], 0, 0.0
    for index, (size, part) in enumerate(sizes):
        share += part
        left = len(sizes) - index - 1
        end = epochs if not left else min(max(round(share * epochs), done + 1), epochs - left)
        if end > done:
            phases.append((end, size))
            done = end
    return phases
