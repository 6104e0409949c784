"""Recipes as data, and the optimizer and loss the plus recipe compiles with."""

import keras
import numpy as np
import pytest

from edgeconv.train.model import ARCHITECTURES
from edgeconv.train.recipes import (
    ARCHITECTURE_NAMES,
    RECIPES,
    parse_settings,
    size_phases,
    with_settings,
)
from edgeconv.train.trainer import (
    AdamW,
    AveragedValidation,
    SparseCrossentropy,
    inference_model,
    new_optimizer,
    new_training_model,
)


def test_seed_recipes_are_the_books():
    baseline, augmented = RECIPES["baseline"], RECIPES["augmented"]
    assert (baseline.optimizer, baseline.learning_rate, baseline.augment) == ("rmsprop", 1e-4, None)
    assert (augmented.dropout, augmented.epochs, augmented.batch_size) == (0.5, 100, 32)
    assert augmented.augment == {"rotation": 40.0, "shift": 0.2, "shear": 0.2, "zoom": 0.2}


def test_plus_schedule_warms_up_then_decays_to_zero():
    recipe = RECIPES["plus"]
    optimizer = new_optimizer(recipe, steps_per_epoch=10, epochs=recipe.epochs)
    schedule = optimizer._learning_rate
    warmup = 10 * recipe.warmup_epochs
    rates = [float(schedule(step)) for step in (0, warmup // 2, warmup, 10 * recipe.epochs)]
    assert rates[0] == 0.0 and 0 < rates[1] < rates[2]
    assert rates[2] == pytest.approx(recipe.learning_rate)
    assert rates[3] == pytest.approx(0.0, abs=1e-9)


def test_adamw_decays_kernels_only_even_after_save_and_load():
    optimizer = AdamW.from_config(AdamW(weight_decay=0.1).get_config())
    kernel = keras.Variable(np.ones((2, 2)), name="kernel")
    gamma = keras.Variable(np.ones(2), name="gamma")
    bias = keras.Variable(np.ones(2), name="bias")
    optimizer.build([kernel, gamma, bias])
    assert optimizer._use_weight_decay(kernel)
    assert not optimizer._use_weight_decay(gamma) and not optimizer._use_weight_decay(bias)


def test_smoothed_sparse_crossentropy_matches_the_one_hot_formula():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 2])
    smoothed = 0.1 / 3 + 0.9 * np.eye(3)[labels]
    expected = -(smoothed * np.log(probabilities)).sum(axis=1).mean()
    loss = SparseCrossentropy(label_smoothing=0.1)(labels, probabilities)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.slow
def test_plus_training_model_updates_every_trainable_weight(classes):
    model = new_training_model(RECIPES["plus"], classes, "float32", seed=0,
                               input_shape=(48, 48, 3), steps_per_epoch=10, epochs=2)
    x = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 3)).astype(np.float32)
    y = np.arange(8) % classes
    before = [w.numpy().copy() for w in model.trainable_weights]
    for _ in range(3):
        loss = model.train_on_batch(x, y)[0]
    assert np.isfinite(loss) and int(model.optimizer.iterations) == 3
    after = [w.numpy().copy() for w in model.trainable_weights]
    assert all(not np.array_equal(b, a) for b, a in zip(before, after))


def test_settings_change_one_field_and_are_reported():
    settings = parse_settings(["label_smoothing=0", "augment=null", "optimizer=rmsprop"])
    assert settings == {"label_smoothing": 0, "augment": None, "optimizer": "rmsprop"}
    recipe = with_settings(RECIPES["plus"], settings)
    assert (recipe.label_smoothing, recipe.augment, recipe.optimizer) == (0, None, "rmsprop")
    assert recipe.weight_decay == RECIPES["plus"].weight_decay
    assert with_settings(RECIPES["plus"], {}) == RECIPES["plus"]
    with pytest.raises(ValueError, match="augment takes null or a JSON object"):
        with_settings(RECIPES["plus"], parse_settings(["augment=7"]))
    with pytest.raises(ValueError, match="optimizer is one of rmsprop, adamw"):
        with_settings(RECIPES["plus"], parse_settings(["optimizer=sgd"]))
    with pytest.raises(ValueError, match="architecture is one of seed, plus, plus-foldable"):
        with_settings(RECIPES["plus"], parse_settings(["architecture=resnet"]))
    assert set(ARCHITECTURE_NAMES) == set(ARCHITECTURES)


def test_progressive_sizes_are_checked_and_split_the_epochs():
    recipe = with_settings(RECIPES["plus"], parse_settings(["sizes=[[112, 0.75], [150, 0.25]]"]))
    assert recipe.sizes == [[112, 0.75], [150, 0.25]]
    assert size_phases(recipe.sizes, 120, 150) == [(90, 112), (120, 150)]
    assert size_phases(None, 7, 150) == [(7, 150)]
    # short runs keep the last phase (the input size) first, then one epoch per phase
    assert size_phases([[96, 0.5], [128, 0.3], [150, 0.2]], 1, 150) == [(1, 150)]
    assert size_phases([[96, 0.5], [128, 0.3], [150, 0.2]], 3, 150) == [
        (1, 96), (2, 128), (3, 150)]
    for value, message in [("[[112, 0.5], [150, 0.4]]", "add up to 0.9, not 1"),
                           ("[[16, 1]]", "at least 32 pixels"), ("112", "sizes takes")]:
        with pytest.raises(ValueError, match=message):
            with_settings(RECIPES["plus"], parse_settings([f"sizes={value}"]))
    with pytest.raises(ValueError, match="seed convnet .* one input size"):
        with_settings(RECIPES["augmented"], {"sizes": [[112, 1]]})
    with pytest.raises(ValueError, match="mixup cannot be negative"):
        with_settings(RECIPES["plus"], {"mixup": -1})
    for strength in (-0.1, 1.0):
        with pytest.raises(ValueError, match="colour jitter's strength"):
            with_settings(RECIPES["plus"], {"color": strength})


def test_colour_jitter_is_a_training_layer_only():
    recipe = with_settings(RECIPES["plus"], {"color": 0.3})
    model = new_training_model(recipe, 2, "float32", seed=0, input_shape=(32, 32, 3),
                               steps_per_epoch=1, epochs=1)
    names = [layer.name for layer in model.layers]
    assert names.index("augment") < names.index("color") < names.index("erase")
    plain = new_training_model(RECIPES["plus"], 2, "float32", seed=0, input_shape=(32, 32, 3),
                               steps_per_epoch=1, epochs=1)
    assert "color" not in [layer.name for layer in plain.layers]
    final = inference_model(model, recipe, 2, (32, 32, 3))
    assert not any("color" in layer.name for layer in final.layers)


@pytest.mark.slow
def test_a_progressive_training_model_takes_every_size_and_hands_its_weights_on():
    recipe = with_settings(RECIPES["plus"], {"sizes": [[64, 0.5], [96, 0.5]]})
    model = new_training_model(recipe, 2, "float32", seed=0, input_shape=(96, 96, 3),
                               steps_per_epoch=2, epochs=2)
    rng = np.random.default_rng(0)
    for size in (64, 96):
        x = rng.integers(0, 256, (4, size, size, 3)).astype(np.uint8)
        assert np.isfinite(model.train_on_batch(x, np.array([0, 1, 0, 1]))[0])
    final = inference_model(model, recipe, 2, (96, 96, 3))
    x = rng.integers(0, 256, (3, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(final.predict(x, verbose=0),
                               model.layers[-1].predict(x, verbose=0), atol=1e-6)
    assert final.input_shape == (None, 96, 96, 3)


@pytest.mark.parametrize("classes", [2, 3])
def test_crossentropy_takes_mixed_targets_as_class_shares(classes):
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    shares = np.array([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]], np.float32)
    expected = -(shares * np.log(probabilities)).sum(axis=1).mean()
    assert float(SparseCrossentropy()(shares, probabilities)) == pytest.approx(expected, rel=1e-5)
    if classes == 2:  # a sigmoid's share of class 1: Keras's binary cross-entropy as it is
        loss = keras.losses.BinaryCrossentropy()(np.array([0.3, 1.0]), np.array([[0.4], [0.9]]))
        assert float(loss) == pytest.approx(
            -np.mean([0.3 * np.log(0.4) + 0.7 * np.log(0.6), np.log(0.9)]), rel=1e-4)


@pytest.mark.slow
def test_weight_averages_are_validated_saved_and_shipped_while_training_goes_on(tmp_path):
    recipe = with_settings(RECIPES["plus"], {"ema": 0.9, "dropout": 0.0})
    model = new_training_model(recipe, 2, "float32", seed=0, input_shape=(32, 32, 3),
                               steps_per_epoch=4, epochs=2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    y = np.array([0, 1] * 4)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # fit() leaves the trained weights
    trained = [w.numpy().copy() for w in model.trainable_weights]
    averages = [a.numpy().copy() for a in model.optimizer._model_variables_moving_average]
    assert not all(np.allclose(t, a) for t, a in zip(trained, averages))
    callback = AveragedValidation()
    callback.set_model(model)
    callback.on_test_begin()
    assert all(np.array_equal(w.numpy(), a) for w, a in zip(model.trainable_weights, averages))
    callback.on_test_end()
    assert all(np.array_equal(w.numpy(), t) for w, t in zip(model.trainable_weights, trained))
    model.save(tmp_path / "checkpoint.keras")  # a resumed run keeps its averages
    loaded = keras.saving.load_model(tmp_path / "checkpoint.keras")
    final = inference_model(loaded, recipe, 2, (32, 32, 3))
    assert len(final.trainable_weights) == len(averages)  # the same layers, in order
    for weight, average in zip(final.trainable_weights, averages):
        np.testing.assert_array_equal(weight.numpy(), average)
    with pytest.raises(ValueError, match="made by the adamw optimizer"):
        with_settings(RECIPES["augmented"], {"ema": 0.99})


@pytest.mark.parametrize("validations, total, each", [(120, "4.8 h", "2.4 min"),
                                                      (31, "4.3 h", "2.1 min")])
def test_the_time_estimate_counts_only_the_validations_left(monkeypatch, capsys, validations,
                                                            total, each):
    from edgeconv.train import trainer

    clock = iter([0.0, 10.0])  # five timed steps of 2 s
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    estimate = trainer.Estimate(62, 120, 32, 1000, validations=validations)
    for batch in range(6):
        estimate.on_train_batch_end(batch)
    # an epoch: 62 steps x 2 s = 124 s; a validation: 1000 photos / 32 / 3 x 2 s = 20.8 s
    assert f"expected: about {total} for 120 epochs, {each} each at this size (16 images/s)" \
        in capsys.readouterr().out
