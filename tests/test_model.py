"""The seed and plus architectures, the MAC count and the augmentation layer."""

import keras
import numpy as np
import pytest

from edgeconv.export.batchnorm import standalone_batchnorms
from edgeconv.train.augment import (
    RandomAffine,
    RandomColor,
    RandomErasing,
    label_accuracy,
    mix_batch,
)
from edgeconv.train.model import (
    ARCHITECTURES,
    FusedBatchNormalization,
    build_model,
    build_plus_model,
    count_macs,
)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_seed_model_has_the_books_parameter_count(dropout):
    model = build_model(2, dropout)
    assert model.count_params() == 3_453_121
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == bool(dropout)


def test_seed_model_layers_in_order():
    kinds = [type(layer).__name__ for layer in build_model().layers]
    assert kinds == ["Rescaling"] + ["Conv2D", "MaxPooling2D"] * 4 + ["Flatten", "Dense", "Dense"]
    filters = [layer.filters for layer in build_model().layers if hasattr(layer, "filters")]
    assert filters == [32, 64, 128, 128]


def test_more_classes_get_a_softmax_head_on_the_same_body():
    model = build_model(5)
    assert model.output_shape == (None, 5)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.count_params() == 3_453_121 - 513 + 513 * 5


def test_inputs_are_raw_pixels_scaled_inside_the_model():
    model = build_model()
    x = np.full((1, 150, 150, 3), 255.0, np.float32)
    assert np.allclose(model.layers[0](x), 1.0)


def test_macs_of_the_seed_model():
    assert count_macs(build_model()) == 236_095_488


def test_plus_model_fits_the_edge_budget():
    model = build_plus_model()
    assert count_macs(model) <= 250_000_000  # the seed: 236 M
    assert model.count_params() < 1_000_000  # int8 under 1 MB; the budget is 3.5 MB
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"SeparableConv2D", "BatchNormalization", "Add", "GlobalAveragePooling2D"} <= kinds
    assert "Flatten" not in kinds
    assert model.output_shape == (None, 1)
    assert build_plus_model(5).output_shape == (None, 5)


def test_separable_macs_are_depthwise_plus_pointwise():
    inputs = keras.Input((10, 10, 4))
    outputs = keras.layers.SeparableConv2D(8, 3, padding="same")(inputs)
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == (3 * 3 * 4 + 4 * 8) * 10 * 10


def test_plus_model_accepts_any_input_size():
    model = build_plus_model(input_shape=(96, 128, 3))
    assert model.predict(np.zeros((2, 96, 128, 3), np.float32), verbose=0).shape == (2, 1)


def test_mixed_precision_keeps_a_float32_head():
    model = build_model(dtype="mixed_bfloat16")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.layers[-1].compute_dtype == "float32"


def images(count=4, size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3)).astype(np.float32)


def test_augmentation_is_identity_at_inference():
    x = images()
    assert np.array_equal(np.asarray(RandomAffine(seed=1)(x, training=False)), x)


def test_augmentation_with_zero_ranges_is_identity_in_training():
    layer = RandomAffine(rotation=0, shift=0, shear=0, zoom=0, horizontal_flip=False, seed=1)
    assert np.allclose(np.asarray(layer(images(), training=True)), images(), atol=1e-3)


def test_flip_only_mirrors_some_images_exactly():
    layer = RandomAffine(rotation=0, shift=0, shear=0, zoom=0, horizontal_flip=True, seed=3)
    x = images(16)
    out = np.asarray(layer(x, training=True))
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, x)]
    unchanged = [np.allclose(o, i, atol=1e-3) for o, i in zip(out, x)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 0 < sum(mirrored) < 16


def test_full_augmentation_changes_images_and_keeps_their_range():
    x = images(8, 64)
    out = np.asarray(RandomAffine(seed=5)(x, training=True))
    assert out.shape == x.shape
    assert not np.allclose(out, x)
    assert out.min() >= 0 and out.max() <= 255


def test_augmentation_survives_save_and_load(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), RandomAffine(rotation=10, seed=2)])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].get_config()["rotation"] == 10


def test_random_erasing_replaces_one_box_per_image_in_training_only():
    x = np.full((16, 40, 40, 3), 128.0, np.float32)
    assert np.array_equal(np.asarray(RandomErasing(1.0, seed=0)(x, training=False)), x)
    out = np.asarray(RandomErasing(1.0, seed=0)(x, training=True))
    changed = (out != x).any(axis=-1)
    fractions = changed.mean(axis=(1, 2))
    assert (fractions > 0).all() and (fractions <= 0.26).all()
    for mask in changed:  # one axis-aligned box: its bounding box is (nearly) all changed
        rows, cols = np.nonzero(mask)
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.mean() > 0.95
    assert out.min() >= 0 and out.max() <= 255


def test_random_erasing_rate_is_the_share_of_images_erased():
    x = np.zeros((400, 8, 8, 3), np.float32)
    out = np.asarray(RandomErasing(0.25, seed=1)(x, training=True))
    assert 0.15 < (out != 0).any(axis=(1, 2, 3)).mean() < 0.35


def test_colour_jitter_scales_a_gray_image_by_its_own_brightness_in_training_only():
    x = np.full((64, 8, 8, 3), 100.0, np.float32)  # contrast and saturation leave it alone
    assert np.array_equal(np.asarray(RandomColor(0.3, seed=0)(x, training=False)), x)
    assert np.array_equal(np.asarray(RandomColor(0.0, seed=0)(x, training=True)), x)
    out = np.asarray(RandomColor(0.3, seed=0)(x, training=True))
    level = out[:, 0, 0, 0]
    np.testing.assert_allclose(out, level[:, None, None, None] * np.ones_like(x), rtol=1e-5)
    assert level.min() >= 70 - 1e-3 and level.max() <= 130 + 1e-3
    assert level.max() - level.min() > 30  # a factor of each image's own


def test_colour_jitter_keeps_the_range_and_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 12, 12, 3)).astype(np.float32)
    out = np.asarray(RandomColor(0.5, seed=1)(x, training=True))
    assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, x)
    saturated = np.zeros((1, 4, 4, 3), np.float32)
    saturated[..., 0] = 200.0  # pure red: saturation mixes in its gray, never another hue
    red = np.asarray(RandomColor(0.5, seed=2)(np.repeat(saturated, 32, 0), training=True))
    assert (red[..., 0] >= red[..., 1] - 1e-3).all()
    np.testing.assert_allclose(red[..., 1], red[..., 2], atol=1e-3)
    model = keras.Sequential([keras.Input((12, 12, 3)), RandomColor(0.2, seed=3)])
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").layers[0].get_config()["strength"] == 0.2


@pytest.mark.parametrize("name, unfoldable",
                         [("plus", 5), ("plus-foldable", 0), ("plus-lite", 5), ("plus-48", 5)])
def test_batchnorms_that_cannot_fold_into_a_convolution(name, unfoldable):
    model = ARCHITECTURES[name]()
    # pre-activation: the stem (also read by a shortcut) and the four after a residual Add;
    # export rewrites these five as depthwise convolutions (export/batchnorm.py)
    assert len(standalone_batchnorms(model)) == unfoldable
    assert count_macs(model) <= 250_000_000


@pytest.mark.parametrize("name, first_width, macs_at_most", [("plus-lite", 32, 0.8),
                                                             ("plus-48", 48, 0.9)])
def test_narrow_variants_narrow_the_first_stage_only(name, first_width, macs_at_most):
    plus, narrow = ARCHITECTURES["plus"](), ARCHITECTURES[name]()
    widths = [[layer.filters for layer in model.layers
               if isinstance(layer, keras.layers.SeparableConv2D)] for model in (plus, narrow)]
    assert widths[0][:2] == [64, 64] and widths[1][:2] == [first_width, first_width]
    assert widths[0][2:] == widths[1][2:]
    assert count_macs(narrow) < macs_at_most * count_macs(plus)


def test_fused_batchnorm_trains_like_keras_and_infers_with_its_weights():
    import tensorflow as tf

    x = np.random.default_rng(0).normal(2, 3, (4, 9, 9, 5)).astype("float32")
    keras_norm = keras.layers.BatchNormalization(momentum=0.9)
    fused = FusedBatchNormalization(momentum=0.9)
    for layer in (keras_norm, fused):
        layer.build(x.shape)
    fused.set_weights([w * 1.5 + 0.1 for w in keras_norm.get_weights()])
    keras_norm.set_weights(fused.get_weights())
    results = []
    for layer in (keras_norm, fused):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(y ** 3)
        gradients = tape.gradient(loss, [inputs, *layer.trainable_weights])
        results.append((y, gradients, layer.get_weights(), layer(x, training=False)))
    (y, gradients, weights, inferred), (fused_y, fused_gradients, fused_weights,
                                        fused_inferred) = results
    np.testing.assert_allclose(fused_y, y, atol=1e-5)
    for ours, theirs in zip(fused_gradients, gradients):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)
    for ours, theirs in zip(fused_weights, weights):  # the moving statistics moved alike
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert not np.allclose(weights[2], 0.0)
    np.testing.assert_allclose(fused_inferred, inferred, atol=1e-5)


def test_mixup_and_cutmix_give_targets_in_the_shares_of_the_pixels():
    rng = np.random.default_rng(1)
    images = np.zeros((6, 20, 20, 3), np.uint8)
    images[::2] = 255  # class 1 white, class 0 black
    labels = np.array([1, 0, 1, 0, 1, 0])
    mixed, targets = mix_batch(images, labels, 2, mixup=0.0, cutmix=1.0, rng=rng)
    assert mixed.dtype == np.uint8 and targets.shape == (6,)
    np.testing.assert_allclose(targets, (mixed == 255).mean(axis=(1, 2, 3)), atol=1e-6)
    assert np.abs(targets - labels).max() > 0
    mixed, targets = mix_batch(images, labels, 2, mixup=0.4, cutmix=0.0, rng=rng)
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(targets, mixed.mean(axis=(1, 2, 3)) / 255, atol=1e-5)
    shares = mix_batch(images, labels, 3, mixup=1.0, cutmix=1.0, rng=rng)[1]
    assert shares.shape == (6, 3) and np.allclose(shares.sum(axis=1), 1) and shares[:, 2].max() == 0


def test_label_accuracy_reads_plain_and_mixed_targets():
    sigmoid = np.array([[0.9], [0.2], [0.6]], np.float32)
    assert list(np.asarray(label_accuracy(np.array([0.7, 0.4, 0.1]), sigmoid))) == [1, 1, 0]
    assert list(np.asarray(label_accuracy(np.array([1, 0, 0], np.int32), sigmoid))) == [1, 1, 0]
    softmax = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    assert list(np.asarray(label_accuracy(np.array([1, 2]), softmax))) == [1, 0]
    shares = np.array([[0.2, 0.8, 0.0], [0.6, 0.0, 0.4]], np.float32)
    assert list(np.asarray(label_accuracy(shares, softmax))) == [1, 1]
