"""Fit a model with a checkpoint after every epoch, and resume from the last one."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import ops

from edgeconv.common.files import atomic_path, write_json
from edgeconv.runtime.confidence import class_columns
from edgeconv.runtime.text import plural
from edgeconv.train.augment import (
    RandomAffine,
    RandomColor,
    RandomErasing,
    label_accuracy,
    mix_batch,
)
from edgeconv.train.model import ARCHITECTURES, FusedBatchNormalization
from edgeconv.train.recipes import Recipe, size_phases

STATE_FILE = "state.json"


class BatchStream(keras.utils.PyDataset):
    """Batches drawn from an endless stream of shuffled passes over (x, y).

    An epoch is `steps` batches, which need not line up with passes (the seed's augmented
    recipe draws 3,200 samples an epoch from 2,000 images). The stream depends only on the
    seed and the epoch, so a resumed run sees the batches it would have seen. `epoch` is the
    one it yields, set by fit (EpochOfStream) from Keras's own count at each epoch's start.
    `part` (index, count) of several processes training together yields that process's slice
    of each batch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, steps: int, seed: int,
                 start_epoch: int = 0, part: tuple[int, int] = (0, 1),
                 mixing: tuple[int, float, float] | None = None):
        super().__init__()
        self.x, self.y, self.batch_size, self.steps, self.seed = x, y, batch_size, steps, seed
        self.epoch, self.part = start_epoch, part
        self.mixing = mixing  # (classes, mixup, cutmix): MixUp/CutMix each batch (mix_batch)
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        local = self.batch_size // self.part[1]
        start = (self.epoch * self.steps + index) * self.batch_size + self.part[0] * local
        positions = np.arange(start, start + local)
        passes, offsets = np.divmod(positions, len(self.x))
        chosen = np.array([self._permutation(p)[o] for p, o in zip(passes, offsets)])
        if self.mixing is None:
            return self.x[chosen], self.y[chosen]
        rng = np.random.default_rng([self.seed, self.epoch, index, self.part[0], 1])
        return mix_batch(self.x[chosen], self.y[chosen], *self.mixing, rng)

    def _permutation(self, number: int) -> np.ndarray:
        if number not in self._permutations:
            rng = np.random.default_rng([self.seed, number])
            self._permutations[number] = rng.permutation(len(self.x))
        return self._permutations[number]


class Batches(keras.utils.PyDataset):
    """x (and y) in order, `batch_size` at a time, read from x (a memory map) batch by batch.

    Several devices split every batch evenly, so with `multiple` > 1 a short last batch is
    padded with copies of its last photo, given weight 0: accuracy is exact, and the loss
    counts each copy as a photo of loss 0 (at most multiple - 1 of them). `part` is as in
    BatchStream.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 64,
                 multiple: int = 1, part: tuple[int, int] = (0, 1)):
        super().__init__()
        self.x, self.y, self.batch_size, self.multiple = x, y, batch_size, multiple
        self.part = part

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        x = np.asarray(self.x[rows])
        if self.y is None:
            return (x,)
        if self.multiple == 1:
            return x, self.y[rows]
        y, padding = self.y[rows], -len(x) % self.multiple
        weights = np.repeat(np.array([1, 0], np.float32), [len(x), padding])
        local = (len(x) + padding) // self.part[1]
        mine = slice(self.part[0] * local, (self.part[0] + 1) * local)
        return (np.concatenate([x, x[-1:].repeat(padding, axis=0)])[mine],
                np.concatenate([y, y[-1:].repeat(padding)])[mine], weights[mine])


def keras_input(batches: keras.utils.PyDataset):
    """`batches` as model.fit and predict should take them: on TensorFlow, a tf.data pipeline
    without autotuning (on other backends, as they are).

    Keras makes a PyDataset a tf.data pipeline with autotuned prefetching, whose tuner sleeps
    in a background thread for up to 10.24 s at a time; the end of each epoch's pass waits
    for it to wake, which left the CPU idle 4-5 s of every plus epoch. The pipeline here
    prefetches two batches.
    """
    if keras.backend.backend() != "tensorflow":
        return batches
    import tensorflow as tf

    # The dimensions the first and last batch share are fixed (a known batch size is what
    # lets several devices split each batch evenly), the others free.
    signature = tuple(
        tf.TensorSpec([a if a == b else None for a, b in zip(first.shape, last.shape)],
                      tf.as_dtype(first.dtype))
        for first, last in zip(batches[0], batches[len(batches) - 1]))

    def one_pass():
        for index in range(len(batches)):
            yield batches[index]

    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_generator(one_pass, output_signature=signature)
    return (dataset.apply(tf.data.experimental.assert_cardinality(len(batches)))
            .prefetch(2).with_options(options))


def predictions(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's outputs for uint8 `images`, in batches of 64, as float64."""
    return np.asarray(model.predict(keras_input(Batches(images)), verbose=0), np.float64)


class EpochOfStream(keras.callbacks.Callback):
    """Point the stream at each epoch as it starts (initial_epoch on). Keras's own
    on_epoch_end calls are no count to rely on: the adapter of a PyDataset makes one before
    the first epoch, and a multi-device pipeline may draw a pass ahead."""

    def __init__(self, stream: BatchStream):
        super().__init__()
        self.stream = stream

    def on_epoch_begin(self, epoch, logs=None):
        self.stream.epoch = epoch


class Checkpointer(keras.callbacks.Callback):
    """After each epoch: save the training model (with optimizer) and state.json, atomically;
    keep the best epoch's checkpoint too.

    state.json names the checkpoint it belongs to and is replaced after that checkpoint is
    complete, so a run killed at any instant resumes from a whole epoch. The history also
    keeps every step's training loss ("step_loss"), to compare runs step by step.
    """

    def __init__(self, run_dir: Path, state: dict):
        super().__init__()
        self.run_dir, self.state = run_dir, state

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()
        self.step_losses, self.mean_loss = [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        # Keras logs the epoch's running mean; every batch has the same size, so this batch's
        # own loss is what it adds to the sum.
        mean = float(logs["loss"])
        self.step_losses.append((batch + 1) * mean - batch * self.mean_loss)
        self.mean_loss = mean

    def on_epoch_end(self, epoch, logs=None):
        self.state["train_seconds"] += time.monotonic() - self.started
        history, logs = self.state["history"], logs or {}
        if "val_loss" in logs:  # a phase at a smaller size validates at its end only
            history.setdefault("val_epochs", list(range(1, len(history.get("val_loss", [])) + 1)))
            history["val_epochs"].append(epoch + 1)
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        history.setdefault("step_loss", []).extend(self.step_losses)
        name = f"checkpoint-{epoch + 1:03d}.keras"
        try:
            with atomic_path(self.run_dir / name) as tmp:
                self.model.save(tmp)
        except OSError as error:  # Keras's zip writer does not name the file
            error.filename = error.filename or str(self.run_dir / name)
            raise
        before = {self.state.get("checkpoint"), (self.state.get("best") or {}).get("checkpoint")}
        score = (logs or {}).get("val_accuracy")
        best = self.state.get("best")
        if score is not None and (best is None or float(score) > best["val_accuracy"]):
            self.state["best"] = {"epoch": epoch + 1, "checkpoint": name,
                                  "val_accuracy": float(score)}
        self.state.update(epoch=epoch + 1, checkpoint=name)
        write_json(self.run_dir / STATE_FILE, self.state)
        for stale in before - set(kept_checkpoints(self.state)) - {None}:
            (self.run_dir / stale).unlink(missing_ok=True)


def kept_checkpoints(state: dict) -> list[str]:
    """The checkpoint files a run keeps: its last epoch's, to resume, and its best epoch's
    (by validation accuracy), to end early with."""
    names = [state.get("checkpoint"), (state.get("best") or {}).get("checkpoint")]
    return [name for name in dict.fromkeys(names) if name]


class Estimate(keras.callbacks.Callback):
    """Before a long run goes on: how long it will take, timed on its first steps.

    The first step is left out (it builds and compiles the model); validation is counted as
    a third of a training step per batch of photos (a forward pass against forward and back),
    times `validation_cost`, its photos' pixels over the training photos'. With progressive
    resizing, `work` counts the epochs left in epochs of this size (by their pixels) and
    `validations` the validations left (a smaller phase validates at its end only).
    """

    TIMED_STEPS = 5

    def __init__(self, steps: int, epochs: int, batch_size: int, validation_images: int,
                 work: float | None = None, validation_cost: float = 1.0,
                 validations: int | None = None):
        super().__init__()
        self.steps, self.epochs, self.batch_size = steps, epochs, batch_size
        self.work = epochs if work is None else work
        self.validations = epochs if validations is None else validations
        self.validation_images = validation_images * validation_cost
        self.last = min(self.TIMED_STEPS, steps - 1)  # a one-step epoch is never long
        self.started, self.done = 0.0, False

    def on_train_batch_end(self, batch, logs=None):
        if self.done or self.last < 1:
            return
        if batch == 0:
            self.started = time.monotonic()
        elif batch == self.last:
            per_step = (time.monotonic() - self.started) / batch
            epoch = self.steps * per_step
            validation = self.validation_images / self.batch_size / 3 * per_step
            total = self.work * epoch + self.validations * validation
            # validations == epochs: every epoch left validates (none at a smaller size)
            each = epoch + (validation if self.validations >= self.epochs else 0)
            print(f"\nexpected: about {duration(total)} for {plural(self.epochs, 'epoch')}, "
                  f"{duration(each)} each at this size "
                  f"({self.batch_size / per_step:.0f} images/s); Ctrl-C keeps every whole "
                  "epoch, and --resume --epochs N then ends the run early with its best one",
                  flush=True)
            self.done = True


def duration(seconds: float) -> str:
    """90 -> '1.5 min'; 7200 -> '2.0 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@keras.saving.register_keras_serializable(package="edgeconv")
class SparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy from integer labels (or rows of class shares), with label
    smoothing (which Keras's SparseCategoricalCrossentropy lacks)."""

    def __init__(self, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        if len(y_true.shape) == 2 and y_true.shape[-1] == y_pred.shape[-1]:
            targets = ops.cast(y_true, y_pred.dtype)  # class shares (MixUp, CutMix)
        else:
            labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            targets = ops.one_hot(labels, ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(
            targets, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return super().get_config() | {"label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="edgeconv")
class AdamW(keras.optimizers.AdamW):
    """AdamW that decays kernels only, never BatchNorm's scales and offsets or biases.

    The exclusion is made in __init__ so that it survives a checkpoint's save and load.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])

    def _update_model_variables_moving_average(self, trainable_variables):
        # The average warms up (momentum min(ema, (1 + t) / (10 + t)) at step t), so that a
        # short run's average is not still partly its random start.
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        momentum = ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                average.assign(momentum * average + (1.0 - momentum) * variable)

    def finalize_variable_values(self, var_list):
        """Leave the trained weights in place when fit() ends: a run with progressive resizing
        fits once per size, and training goes on (averaged_weights puts the averages in)."""


def averaged_weights(model: keras.Model) -> list[np.ndarray] | None:
    """Put the optimizer's moving averages of the weights (recipe.ema) into `model`; returns
    the trained values (to put back with restore_weights), or None when it keeps no averages."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return None
    variables = optimizer._trainable_variables
    trained = [np.array(variable.numpy()) for variable in variables]
    optimizer._overwrite_model_variables_with_average_value(variables)
    return trained


def restore_weights(model: keras.Model, trained: list[np.ndarray]) -> None:
    for variable, value in zip(model.optimizer._trainable_variables, trained):
        variable.assign(value)


class AveragedValidation(keras.callbacks.Callback):
    """Validate the averaged weights (recipe.ema), then train on with the trained ones."""

    def on_test_begin(self, logs=None):
        self.trained = averaged_weights(self.model)

    def on_test_end(self, logs=None):
        if self.trained is not None:
            restore_weights(self.model, self.trained)


def new_training_model(recipe: Recipe, num_classes: int, precision: str, seed: int,
                       input_shape: tuple[int, int, int], steps_per_epoch: int,
                       epochs: int, fused_norm: bool = True) -> keras.Model:
    """The model to fit: [augmentation] + the recipe's convnet, compiled with its optimizer.

    With progressive resizing (recipe.sizes) it takes any height and width. fused_norm=False
    keeps Keras's own BatchNormalization in training (to compare their speed)."""
    dtype = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    if recipe.sizes:
        input_shape = (None, None, input_shape[-1])
    layers = [keras.Input(shape=input_shape)]
    if recipe.augment is not None:
        layers.append(RandomAffine(**recipe.augment, seed=seed, name="augment"))
    if recipe.color:
        layers.append(RandomColor(recipe.color, seed=seed + 2, name="color"))
    if recipe.erasing:
        layers.append(RandomErasing(recipe.erasing, seed=seed + 1, name="erase"))
    build = ARCHITECTURES[recipe.architecture]
    if fused_norm and recipe.architecture != "seed":  # plus networks: the faster kernel
        build = functools.partial(build, norm_layer=FusedBatchNormalization)
    network = build(num_classes, recipe.dropout, input_shape, dtype=dtype)
    if recipe.teachers:
        from edgeconv.train.distill import DistillationLoss, student_accuracy, with_teachers

        model = with_teachers(layers[1:], network, recipe.teachers, num_classes, input_shape)
        loss = DistillationLoss(class_columns(num_classes), recipe.distill,
                                recipe.label_smoothing)
        metric = keras.metrics.MeanMetricWrapper(student_accuracy, name="accuracy")
    else:
        model = keras.Sequential([*layers, network], name=f"train_{recipe.name}")
        if num_classes == 2:
            loss = keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing)
        else:
            loss = SparseCrossentropy(label_smoothing=recipe.label_smoothing)
        # Mixed targets are shares, which Keras's accuracy compares for equality.
        mixed = recipe.mixup > 0 or recipe.cutmix > 0
        metric = keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy") if mixed \
            else "accuracy"
    optimizer = new_optimizer(recipe, steps_per_epoch, epochs)
    # Weighted, so that the zero-weight padding of a multi-device validation batch (Batches)
    # does not count; without weights it is the plain accuracy.
    model.compile(optimizer=optimizer, loss=loss, weighted_metrics=[metric])
    return model


def new_optimizer(recipe: Recipe, steps_per_epoch: int,
                  epochs: int) -> keras.optimizers.Optimizer:
    """RMSprop at a constant rate (the seed), or AdamW with linear warmup then cosine to 0."""
    if recipe.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=recipe.learning_rate)
    if recipe.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    total = steps_per_epoch * epochs
    warmup = min(steps_per_epoch * recipe.warmup_epochs, total // 10)  # short runs: 10%
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total - warmup),
        warmup_target=recipe.learning_rate, warmup_steps=warmup)
    return AdamW(learning_rate=schedule, weight_decay=recipe.weight_decay,
                 use_ema=recipe.ema > 0, ema_momentum=recipe.ema or 0.99)


def fit(run_dir: Path, model: keras.Model, state: dict,
        train_at: Callable[[int], tuple[np.ndarray, np.ndarray]],
        validation: tuple[np.ndarray, np.ndarray], recipe: Recipe, epochs: int,
        batch_size: int, seed: int, verbose: int | str = "auto", devices: int = 1,
        part: tuple[int, int] = (0, 1)) -> None:
    """Train from state["epoch"] to `epochs`, checkpointing each epoch into run_dir.

    train_at(size) gives the training split at size x size; the recipe's progressive resizing
    (recipe.sizes) trains one phase per size, validation stays at its own size and a phase
    at a smaller size validates only at its end: there BatchNorm's statistics are the small
    photos', so validation reads far low and cannot choose a best epoch. With several
    devices, call it inside their scope (train.distribute); with several processes, each passes
    its `part` (index, count) and feeds its slice of every batch.
    """
    full = validation[0].shape[1]
    phases = size_phases(recipe.sizes, epochs, full)
    mixing, outputs = None, network_of(model).output_shape[-1]  # teachers add columns
    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixing = (2 if outputs == 1 else outputs, recipe.mixup, recipe.cutmix)
    validation_batches = Batches(*validation, batch_size=64, multiple=devices, part=part)
    starts = [0] + [end for end, _ in phases]
    every_epoch = [size == full or end == epochs for end, size in phases]
    validations = sum(end - max(begin, state["epoch"]) if every else 1
                      for begin, (end, _), every in zip(starts, phases, every_epoch)
                      if end > state["epoch"])
    for first, (end, size), every in zip(starts, phases, every_epoch):
        if state["epoch"] >= end:
            continue
        x, y = train_at(size)
        steps = recipe.steps_per_epoch(len(x), batch_size)
        # The time estimate counts the later phases' epochs by their pixels.
        work = sum((last - max(begin, state["epoch"])) * (later / size) ** 2
                   for begin, (last, later) in zip(starts, phases) if last > state["epoch"])
        if len(phases) > 1:
            begin = max(first, state["epoch"]) + 1
            span = f"epochs {begin}-{end}" if end > begin else f"epoch {end}"
            print(f"{span} at {size}x{size}", flush=True)
        stream = BatchStream(x, y, batch_size, steps, seed, start_epoch=state["epoch"],
                             part=part, mixing=mixing)
        model.fit(
            keras_input(stream),
            epochs=end,
            initial_epoch=state["epoch"],
            # The stream is shuffled already; Keras's own shuffle of the batch order would
            # draw from Python's global random state, which a multi-device start draws from.
            shuffle=False,
            validation_data=keras_input(validation_batches),
            validation_freq=1 if every else end,  # end: this phase's last epoch only
            callbacks=[EpochOfStream(stream), AveragedValidation(), Checkpointer(run_dir, state),
                       Estimate(steps, epochs - state["epoch"], batch_size,
                                len(validation[0]), work, (full / size) ** 2, validations)],
            verbose=verbose,
        )


def inference_model(trained: keras.Model, recipe: Recipe, num_classes: int,
                    input_shape: tuple[int, int, int]) -> keras.Model:
    """The recipe's convnet alone, in float32, carrying the trained weights (no augmentation),
    or their moving averages when the recipe keeps them (recipe.ema)."""
    averaged_weights(trained)  # the training model is done with
    build = ARCHITECTURES[recipe.architecture]
    model = build(num_classes, recipe.dropout, input_shape, dtype="float32")
    model.set_weights(network_of(trained).get_weights())
    return model


def network_of(trained: keras.Model) -> keras.Model:
    """The recipe's convnet inside a training model (after augmentation, beside teachers)."""
    return next(layer for layer in trained.layers if layer.name.endswith("_convnet"))
