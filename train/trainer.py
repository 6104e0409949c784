"""Fit a model with a checkpoint after every epoch, and resume from the last one."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from runtime.files import atomic_path, write_json
from train.augment import RandomAffine
from train.model import build_model
from train.recipes import Recipe

STATE_FILE = "state.json"


class BatchStream(keras.utils.PyDataset):
    """Batches drawn from an endless stream of shuffled passes over (x, y).

    An epoch is `steps` batches, which need not line up with passes (the seed's augmented
    recipe draws 3,200 samples an epoch from 2,000 images). The stream depends only on the
    seed and the epoch, so a resumed run sees the batches it would have seen.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, steps: int, seed: int,
                 start_epoch: int = 0):
        super().__init__()
        self.x, self.y, self.batch_size, self.steps, self.seed = x, y, batch_size, steps, seed
        self.epoch = start_epoch
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        start = (self.epoch * self.steps + index) * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        passes, offsets = np.divmod(positions, len(self.x))
        chosen = np.array([self._permutation(p)[o] for p, o in zip(passes, offsets)])
        return self.x[chosen], self.y[chosen]

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _permutation(self, number: int) -> np.ndarray:
        if number not in self._permutations:
            rng = np.random.default_rng([self.seed, number])
            self._permutations[number] = rng.permutation(len(self.x))
        return self._permutations[number]


class Checkpointer(keras.callbacks.Callback):
    """After each epoch: save the training model (with optimizer) and state.json, atomically.

    state.json names the checkpoint it belongs to and is replaced after that checkpoint is
    complete, so a run killed at any instant resumes from a whole epoch.
    """

    def __init__(self, run_dir: Path, state: dict):
        super().__init__()
        self.run_dir, self.state = run_dir, state

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.state["train_seconds"] += time.monotonic() - self.started
        for key, value in (logs or {}).items():
            self.state["history"].setdefault(key, []).append(float(value))
        name = f"checkpoint-{epoch + 1:03d}.keras"
        with atomic_path(self.run_dir / name) as tmp:
            self.model.save(tmp)
        previous = self.state.get("checkpoint")
        self.state.update(epoch=epoch + 1, checkpoint=name)
        write_json(self.run_dir / STATE_FILE, self.state)
        if previous and previous != name:
            (self.run_dir / previous).unlink(missing_ok=True)


def new_training_model(recipe: Recipe, num_classes: int, precision: str, seed: int,
                       input_shape: tuple[int, int, int]) -> keras.Model:
    """The model to fit: [augmentation] + the seed convnet, compiled with RMSprop."""
    dtype = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    layers = [keras.Input(shape=input_shape)]
    if recipe.augment:
        layers.append(RandomAffine(seed=seed, name="augment"))
    layers.append(build_model(num_classes, recipe.dropout, input_shape, dtype=dtype))
    model = keras.Sequential(layers, name=f"train_{recipe.name}")
    binary = num_classes == 2
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=recipe.learning_rate),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def fit(run_dir: Path, model: keras.Model, state: dict, train: tuple[np.ndarray, np.ndarray],
        validation: tuple[np.ndarray, np.ndarray], recipe: Recipe, epochs: int,
        batch_size: int, seed: int, verbose: int | str = "auto") -> None:
    """Train from state["epoch"] to `epochs`, checkpointing each epoch into run_dir."""
    x, y = train
    steps = recipe.steps_per_epoch(len(x), batch_size)
    stream = BatchStream(x, y, batch_size, steps, seed, start_epoch=state["epoch"])
    model.fit(
        stream,
        epochs=epochs,
        initial_epoch=state["epoch"],
        validation_data=validation,
        validation_batch_size=64,
        callbacks=[Checkpointer(run_dir, state)],
        verbose=verbose,
    )


def inference_model(trained: keras.Model, recipe: Recipe, num_classes: int,
                    input_shape: tuple[int, int, int]) -> keras.Model:
    """The seed convnet alone, in float32, carrying the trained weights (no augmentation)."""
    model = build_model(num_classes, recipe.dropout, input_shape, dtype="float32")
    model.set_weights(trained.layers[-1].get_weights())
    return model
