"""Distillation: the network learns the averaged answer of trained models (its teachers) on
the very batch it trains on, augmented, mixed and erased as it sees it, besides the labels.

The training model outputs the student's columns followed by the teachers' (one model, so
that both see one augmentation draw); the loss and the accuracy read them apart. The teachers
are frozen, run in inference mode, and take any input size (progressive resizing).
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from edgeconv.runtime.confidence import class_columns
from edgeconv.train.augment import label_accuracy
from edgeconv.train.dataset import DataError
from edgeconv.train.model import any_size


@keras.saving.register_keras_serializable(package="edgeconv")
class Teachers(keras.layers.Layer):
    """The teachers' class columns (a none column left out), averaged; no gradient flows."""

    def __init__(self, paths: list[str], num_classes: int, **kwargs):
        kwargs.pop("trainable", None)  # frozen, also when loaded from a checkpoint
        super().__init__(trainable=False, **kwargs)
        self.paths, self.num_classes = list(paths), num_classes
        self.columns = class_columns(num_classes)
        self.models = []
        for path in self.paths:
            model = keras.saving.load_model(path, compile=False)
            if model.output_shape[-1] not in (self.columns, self.columns + 1):
                raise DataError(f"teacher {path}: answers {model.output_shape[-1]} columns, "
                                f"not the {self.columns} of {num_classes} classes")
            with contextlib.suppress(ValueError):  # a Flatten teacher: its own size only
                model = any_size(model)
            model.trainable = False
            self.models.append(model)

    def call(self, images):
        answers = [model(images, training=False)[:, :self.columns] for model in self.models]
        return ops.stop_gradient(ops.mean(ops.stack(answers), axis=0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.columns)

    def get_config(self):
        return super().get_config() | {"paths": self.paths, "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="edgeconv")
class DistillationLoss(keras.losses.Loss):
    """(1 - weight) x the labels' cross-entropy (with label smoothing) + weight x the
    cross-entropy against the teachers' answer, on y_pred = [student columns, teachers']."""

    def __init__(self, columns: int, weight: float, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.columns, self.weight, self.label_smoothing = columns, weight, label_smoothing

    def call(self, y_true, y_pred):
        student, teachers = y_pred[:, :self.columns], y_pred[:, self.columns:]
        if self.columns == 1:
            labels = keras.losses.binary_crossentropy(
                ops.reshape(ops.cast(y_true, student.dtype), (-1, 1)), student,
                label_smoothing=self.label_smoothing)
            taught = keras.losses.binary_crossentropy(teachers, student)
        else:
            from edgeconv.train.trainer import SparseCrossentropy

            labels = SparseCrossentropy(self.label_smoothing).call(y_true, student)
            taught = keras.losses.categorical_crossentropy(teachers, student)
        return (1.0 - self.weight) * labels + self.weight * taught

    def get_config(self):
        return super().get_config() | {"columns": self.columns, "weight": self.weight,
                                       "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="edgeconv")
def student_accuracy(y_true, y_pred):
    """label_accuracy of the student's columns: the first half of [student, teachers]."""
    return label_accuracy(y_true, y_pred[:, :y_pred.shape[-1] // 2])


def with_teachers(augmentation: list, network: keras.Model, paths: list[str],
                  num_classes: int, input_shape: tuple) -> keras.Model:
    """inputs -> augmentation -> [network's answer, the teachers' answer], one model."""
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for layer in augmentation:
        x = layer(x)
    answers = [network(x), Teachers(paths, num_classes, name="teachers")(x)]
    return keras.Model(inputs, keras.layers.Concatenate(name="student_teachers")(answers))
