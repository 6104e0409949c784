"""The seed and plus architectures, the MAC count and the augmentation layer."""

import keras
import numpy as np
import pytest

from edgeconv.export.batchnorm import standalone_batchnorms
from edgeconv.train.augment import RandomAffine, RandomErasing
from edgeconv.train.model import ARCHITECTURES, build_model, build_plus_model, count_macs


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
