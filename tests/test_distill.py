"""Distillation (--set teachers=[...]): the loss, the frozen teachers, what a run ships."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import run_script

from edgeconv.train.distill import DistillationLoss
from edgeconv.train.model import build_plus_model
from edgeconv.train.recipes import RECIPES, with_settings
from edgeconv.train.trainer import inference_model, network_of, new_training_model


def bce(target, p):
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def test_the_loss_weighs_the_labels_against_the_teachers():
    y_true = np.array([1.0, 0.0])
    y_pred = np.array([[0.8, 0.6], [0.3, 0.1]], np.float32)  # [student, teachers]
    loss = DistillationLoss(1, 0.25, label_smoothing=0.1)(y_true, y_pred)
    smoothed = y_true * 0.9 + 0.05
    expected = 0.75 * bce(smoothed, y_pred[:, 0]) + 0.25 * bce(y_pred[:, 1], y_pred[:, 0])
    assert float(loss) == pytest.approx(expected.mean(), rel=1e-4)

    student = np.array([[0.7, 0.2, 0.1]], np.float32)
    teachers = np.array([[0.5, 0.5, 0.0]], np.float32)
    loss = DistillationLoss(3, 1.0)(np.array([2]), np.concatenate([student, teachers], 1))
    assert float(loss) == pytest.approx(-(teachers * np.log(student)).sum(), rel=1e-4)


@pytest.fixture
def teacher(tmp_path):
    keras.utils.set_random_seed(1)
    path = tmp_path / "teacher.keras"
    build_plus_model(2, 0.0, (32, 32, 3)).save(path)
    return path


@pytest.mark.slow
def test_a_student_learns_the_frozen_teachers_answer_on_its_own_batch(teacher, tmp_path):
    recipe = with_settings(RECIPES["plus"], {"teachers": [str(teacher)], "distill": 1.0,
                                             "dropout": 0.0, "augment": None, "erasing": 0.0,
                                             "label_smoothing": 0.0})
    model = new_training_model(recipe, 2, "float32", seed=0, input_shape=(32, 32, 3),
                               steps_per_epoch=2, epochs=2)
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    y = np.array([0, 1] * 4)
    taught = keras.saving.load_model(teacher).predict(x, verbose=0)[:, 0]
    student = network_of(model).predict(x, verbose=0)[:, 0]
    loss, _ = model.test_on_batch(x, y)  # distill=1: the labels do not count
    assert loss == pytest.approx(bce(taught, student).mean(), rel=1e-4)

    before = [w.numpy().copy() for w in model.get_layer("teachers").weights]
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    after = model.get_layer("teachers").weights
    assert before and all(np.array_equal(b, a.numpy()) for b, a in zip(before, after))
    assert network_of(model).trainable_weights  # the student trained, its teachers not

    model.save(tmp_path / "checkpoint.keras")  # a checkpoint resumes with its teachers
    again = keras.saving.load_model(tmp_path / "checkpoint.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    final = inference_model(model, recipe, 2, (32, 32, 3))  # the student alone ships
    assert not any(layer.name == "teachers" for layer in final.layers)
    np.testing.assert_allclose(final.predict(x, verbose=0)[:, 0], network_of(model).predict(
        x, verbose=0)[:, 0], atol=1e-6)


def test_teachers_and_their_weight_are_checked(teacher, tmp_path):
    with pytest.raises(ValueError, match="missing.keras is not a .keras file"):
        with_settings(RECIPES["plus"], {"teachers": [str(tmp_path / "missing.keras")]})
    with pytest.raises(ValueError, match="teachers takes a JSON list"):
        with_settings(RECIPES["plus"], {"teachers": str(teacher)})
    with pytest.raises(ValueError, match=r"distill=0: the teachers' weight is in \(0, 1\]"):
        with_settings(RECIPES["plus"], {"teachers": [str(teacher)], "distill": 0})


@pytest.mark.slow
def test_a_teacher_of_other_classes_is_a_one_line_error(real_data, shipped, tmp_path):
    result = run_script("train/run.py", "--data", real_data, "--recipe", "plus", "--limit",
                        "4", "--set", 'teachers=["models/augmented_int8.tflite"]', "--out",
                        tmp_path / "bad")
    assert result.returncode == 2 and "is not a .keras file" in result.stderr
    keras.utils.set_random_seed(3)
    build_plus_model(3, 0.0, (150, 150, 3)).save(tmp_path / "three.keras")
    result = run_script("train/run.py", "--data", real_data, "--recipe", "plus", "--limit",
                        "4", "--set", f'teachers=["{tmp_path / "three.keras"}"]', "--out",
                        tmp_path / "run")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: teacher {tmp_path / 'three.keras'}: answers 3 columns, not the 1 of 2 classes")


@pytest.mark.slow
def test_a_distilled_run_records_its_teachers_and_ships_the_student(real_data, shipped,
                                                                    tmp_path):
    out = tmp_path / "run"
    result = run_script("train/run.py", "--data", real_data, "--recipe", "plus", "--limit",
                        "8", "--epochs", "1", "--set", 'teachers=["models/plus.keras"]',
                        "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["teachers"] == [str(shipped.resolve() / "plus.keras")]
    model = keras.saving.load_model(out / "model.keras")
    assert model.name == "plus_convnet" and model.input_shape == (None, 150, 150, 3)


@pytest.mark.slow
def test_mixed_batches_of_three_classes_train_a_distilled_run(tmp_path):
    """CutMix/MixUp shares are the classes' (3), not the training model's columns (3 + 3)."""
    from edgeconv.train import trainer

    keras.utils.set_random_seed(2)
    build_plus_model(3, 0.0, (32, 32, 3)).save(tmp_path / "teacher3.keras")
    recipe = with_settings(RECIPES["plus"], {"teachers": [str(tmp_path / "teacher3.keras")],
                                             "mixup": 0.2, "cutmix": 1.0})
    model = new_training_model(recipe, 3, "float32", seed=0, input_shape=(32, 32, 3),
                               steps_per_epoch=3, epochs=1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    y = np.array([0, 1, 2] * 4, np.int32)
    state = {"epoch": 0, "checkpoint": None, "history": {}, "train_seconds": 0.0}
    trainer.fit(tmp_path, model, state, lambda size: (x, y), (x, y), recipe, 1, 4, 0,
                verbose=0)
    assert state["epoch"] == 1 and np.isfinite(state["history"]["loss"][0])
    assert 0 <= state["history"]["val_accuracy"][0] <= 1


def test_resuming_a_run_whose_teacher_is_gone_is_a_one_line_error(real_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    gone = tmp_path / "gone.keras"
    (run / "run.json").write_text(json.dumps({
        "recipe": "plus", "settings": {"teachers": [str(gone)]}, "epochs": 2,
        "data": str(real_data)}))
    result = run_script("train/run.py", "--out", run, "--resume")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {run}: --set teachers=") and "gone.keras is not a .keras file" in result.stderr
    assert "Traceback" not in result.stderr
