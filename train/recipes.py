"""Training recipes: the seed's two experiments, as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    dropout: float
    augment: bool
    batch_size: int
    epochs: int
    passes_per_epoch: float  # training-set passes per epoch: steps = passes * images / batch
    learning_rate: float = 1e-4  # RMSprop, as in the seed

    def steps_per_epoch(self, train_images: int, batch_size: int | None = None) -> int:
        batch = batch_size or self.batch_size
        return max(1, round(self.passes_per_epoch * train_images / batch))

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # 30 epochs of one pass over the 2,000 training images, batch 20 (100 steps).
    "baseline": Recipe("baseline", dropout=0.0, augment=False, batch_size=20, epochs=30,
                       passes_per_epoch=1.0),
    # 100 epochs of 100 steps of 32 augmented images: 3,200 samples (1.6 passes) per epoch.
    "augmented": Recipe("augmented", dropout=0.5, augment=True, batch_size=32, epochs=100,
                        passes_per_epoch=1.6),
}
