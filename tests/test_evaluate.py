"""train/evaluate.py: models scored alone, as an ensemble, and at other input sizes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from edgeconv.train import evaluate


def constant(path, p: float):
    """A model that answers P(class 1) = p for every photo, saved at `path`."""
    import keras

    model = keras.Sequential([
        keras.Input((150, 150, 3)), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(np.log(p / (1 - p))))])
    model.save(path)
    return path


def scored(capsys, *args) -> dict:
    assert evaluate.main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_an_ensemble_averages_its_members_probabilities(real_data, shipped, tmp_path, capsys):
    import keras

    from edgeconv.train.dataset import find_dataset, load_split

    plus = shipped / "plus.keras"
    same = scored(capsys, plus, plus, "--data", real_data, "--limit", "10")
    alone, twice, ensemble = same["rows"]
    assert alone == twice and ensemble["model"] == "ensemble of 2"
    assert [ensemble["validation"], ensemble["test"]] == [alone["validation"], alone["test"]]
    assert alone["validation"] >= 0.75  # the shipped model, on 20 photos of each split

    # A member answering c for every photo moves the ensemble's cut on the shipped model's
    # P(dogs) p from 0.5 to 1 - c: with c chosen between two dogs' p, some of them flip.
    photos, truth = load_split(find_dataset(real_data, ("validation",), limit=10), "validation")
    p = evaluate.probabilities(keras.saving.load_model(plus), photos, 1)[:, 0]
    dogs = np.sort(p[(truth == 1) & (p > 0.5)])
    cut = (dogs[len(dogs) // 2 - 1] + dogs[len(dogs) // 2]) / 2
    unsure = constant(tmp_path / "unsure.keras", 1 - cut)
    rows = scored(capsys, plus, unsure, "--data", real_data, "--limit", "10")["rows"]
    assert rows[1]["model"] == "unsure" and rows[1]["validation"] == 0.5  # all cats alone
    expected = float(((p >= cut) == truth).mean())
    assert rows[2]["validation"] == pytest.approx(expected)
    assert expected < alone["validation"]


def test_ensemble_of_softmax_rows():
    rows = [np.array([[0.6, 0.3, 0.1]]), np.array([[0.0, 0.5, 0.5]])]
    np.testing.assert_allclose(evaluate.ensemble(rows), [[0.3, 0.4, 0.3]])


def test_a_model_at_another_size_computes_what_a_network_built_at_that_size_does():
    import keras

    from edgeconv.train.model import build_plus_model

    keras.utils.set_random_seed(0)
    trained = build_plus_model(2, 0.3)
    assert evaluate.resized(trained, 150) is trained
    at_172 = evaluate.resized(trained, 172)
    built = build_plus_model(2, 0.3, input_shape=(172, 172, 3))
    built.set_weights(trained.get_weights())
    photos = np.random.default_rng(0).integers(0, 256, (2, 172, 172, 3), dtype=np.uint8)
    np.testing.assert_allclose(at_172.predict(photos, verbose=0),
                               built.predict(photos, verbose=0), atol=1e-6)


def test_user_mistakes_are_one_line_errors(real_data, class_folders, tmp_path, capsys):
    from edgeconv.train.model import build_model

    build_model(2).save(tmp_path / "seed.keras")
    assert evaluate.main([str(tmp_path / "seed.keras"), "--data", str(real_data),
                          "--limit", "2", "--sizes", "172"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "Flatten" in error and "plus" in error

    five = tmp_path / "five"  # a validation split of the recycling photos' classes
    for folder in sorted(path for path in class_folders.iterdir() if path.is_dir()):
        (five / "validation" / folder.name).mkdir(parents=True)
        photo = next(path for path in sorted(folder.iterdir()) if path.suffix.lower() == ".jpg")
        shutil.copy(photo, five / "validation" / folder.name)
    assert evaluate.main([str(tmp_path / "seed.keras"), "--data", str(five)]) == 2
    assert "answers 1 columns, not the 5 of this dataset's 5 classes" in capsys.readouterr().err

    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    assert evaluate.main([str(unfinished)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {unfinished}: holds no model.keras (an unfinished run? finish it with: "
        "edgeconv train --out RUN --resume)")
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(unfinished), "--sizes", "150,big"])
    assert exit_.value.code == 2 and "sizes are pixels" in capsys.readouterr().err


@pytest.mark.slow
def test_the_shipped_model_scores_what_its_card_says(real_data, shipped):
    """Every validation and test photo at 150 through the front door: the figures that
    models.json recorded when the model was trained."""
    card = json.loads((shipped / "models.json").read_text())["plus"]
    result = subprocess.run(
        [sys.executable, "-m", "edgeconv.cli", "evaluate", str(shipped / "plus.keras"),
         "--data", str(real_data), "--json"], cwd=REPO.parent, capture_output=True, text=True,
        timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(result.stdout)["rows"]
    assert row["size"] == 150
    assert (row["validation"], row["test"]) == (card["val_accuracy"], card["test_accuracy"])


def test_recalibration_sets_batchnorm_statistics_to_the_photos_own():
    """FixRes's re-estimate: each BatchNorm (a nested model's too) ends with the mean of its
    input's batch means and variances on the photos given; its momentum is left as it was."""
    import keras

    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.BatchNormalization()])
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.BatchNormalization(),
                              keras.layers.Rescaling(2.0), inner])
    photos = np.random.default_rng(0).integers(0, 256, (128, 8, 8, 3)).astype(np.uint8)
    assert evaluate.recalibrate(model, photos, batch_size=64) == 2
    outer_norm, inner_norm = model.layers[0], inner.layers[0]
    x = photos.astype(np.float64)
    halves = [x[:64], x[64:]]
    np.testing.assert_allclose(outer_norm.moving_mean.numpy(), x.mean(axis=(0, 1, 2)),
                               rtol=1e-4)
    np.testing.assert_allclose(outer_norm.moving_variance.numpy(),
                               np.mean([h.var(axis=(0, 1, 2)) for h in halves], axis=0),
                               rtol=1e-3)
    # The inner one reads the outer one's output in training mode (normalized by each batch's
    # own statistics, then doubled): variance 4 within every batch.
    np.testing.assert_allclose(inner_norm.moving_variance.numpy(), 4.0, rtol=1e-2)
    assert outer_norm.momentum == inner_norm.momentum == 0.99


def test_flip_scores_each_photo_by_its_answer_averaged_with_its_mirror_images(
        real_data, tmp_path, capsys):
    """A model that sees only the left half of a photo answers differently for its mirror
    image; --flip's row is the accuracy of the two answers' mean, the plain row unchanged."""
    import keras

    from edgeconv.runtime.evaluate import accuracy, decide
    from edgeconv.train.dataset import find_dataset, load_split

    photos, truth = load_split(find_dataset(real_data, ("validation",), limit=10), "validation")
    weights = np.array([[0.04], [-0.05], [0.01]])

    def left_logit(images):  # what the model below computes before its sigmoid, bias aside
        return images[:, :, :75].astype(np.float64).mean(axis=(1, 2)) @ weights[:, 0]

    bias = -np.median(left_logit(photos))  # half the photos each side of the cut
    model = keras.Sequential([
        keras.Input((150, 150, 3)), keras.layers.Cropping2D(((0, 0), (0, 75))),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid",
                           kernel_initializer=keras.initializers.Constant(weights),
                           bias_initializer=keras.initializers.Constant(bias))])
    model.save(tmp_path / "left.keras")

    def sigmoid(z):
        return 1 / (1 + np.exp(-(z + bias)))

    plain = sigmoid(left_logit(photos))
    averaged = (plain + sigmoid(left_logit(photos[:, :, ::-1]))) / 2
    expected = {False: accuracy(truth, decide(plain[:, None])),
                True: accuracy(truth, decide(averaged[:, None]))}
    assert expected[False] != expected[True]  # else these photos could not tell them apart

    rows = scored(capsys, tmp_path / "left.keras", "--data", real_data, "--limit", "10",
                  "--flip")["rows"]
    assert [(row["model"], row.get("flip", False)) for row in rows] == [
        ("left", False), ("left", True)]
    for row in rows:
        assert row["validation"] == pytest.approx(expected[row.get("flip", False)], abs=1e-9)

    assert evaluate.main([str(tmp_path / "left.keras"), "--data", str(real_data), "--limit",
                          "10", "--flip"]) == 0
    table = capsys.readouterr().out
    assert "| left + flip | 150 |" in table and "| left | 150 |" in table
