"""export/batchnorm.py: standalone BatchNorms become per-channel depthwise convolutions."""

import keras
import numpy as np

from edgeconv.export.batchnorm import as_depthwise, standalone_batchnorms


def residual_model() -> keras.Model:
    """conv-BN (folds), then a residual sum read by a BN (cannot fold), as in pre-activation."""
    L = keras.layers
    keras.utils.set_random_seed(0)  # unseeded kernels made the outputs saturate now and then
    inputs = keras.Input((16, 16, 3))
    x = L.BatchNormalization(name="after_conv")(L.Conv2D(8, 3, padding="same")(inputs))
    x = L.Activation("relu")(x)
    y = L.Conv2D(8, 1)(x)
    x = L.BatchNormalization(name="after_add")(L.Add()([x, y]))
    x = L.Flatten()(L.Activation("relu")(x))  # pooling would average the noise images alike
    model = keras.Model(inputs, L.Dense(1)(x))  # logits: a sigmoid would hide differences
    rng = np.random.default_rng(0)
    for norm in (model.get_layer("after_conv"), model.get_layer("after_add")):
        norm.set_weights([rng.uniform(0.2, 3, 8), rng.normal(0, 1, 8), rng.normal(0, 2, 8),
                          rng.uniform(0.01, 9, 8)])  # gamma, beta, mean, variance
    return model


def test_only_batchnorms_without_their_own_convolution_are_standalone():
    assert [layer.name for layer in standalone_batchnorms(residual_model())] == ["after_add"]


def test_the_rewrite_computes_the_same_function():
    model = residual_model()
    rewritten = as_depthwise(model)
    kinds = {layer.name: type(layer).__name__ for layer in rewritten.layers}
    assert kinds["after_add"] == "DepthwiseConv2D" and kinds["after_conv"] == "BatchNormalization"
    images = np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(rewritten.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected) > 0.01  # the check has something to compare


def test_a_model_without_standalone_batchnorms_is_returned_as_it_is():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    assert as_depthwise(model) is model


def test_int8_tflite_has_no_mul_ops_left():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    images = np.random.default_rng(2).uniform(0, 1, (20, 16, 16, 3)).astype("float32")

    def int8_ops(model):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        interpreter = Interpreter(model_content=converter.convert())
        return [op["op_name"] for op in interpreter._get_ops_details()]

    model = residual_model()
    assert "MUL" in int8_ops(model)  # the BatchNorm after the sum, as MUL + ADD
    ops = int8_ops(as_depthwise(model))
    assert "MUL" not in ops and ops.count("ADD") == 1  # only the residual sum is left
