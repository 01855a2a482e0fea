"""Model info and the float32 copy used for inference and export."""

import keras
import numpy as np

from emotion_classifier import model_io


def test_mixed_precision_model_becomes_float32_with_the_same_predictions():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((16, 16, 1))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(3, activation="softmax", dtype="float32")(x)
        model = keras.Model(inputs, outputs)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.layers[2].compute_dtype == "bfloat16"
    copy = model_io.as_float32(model)
    assert all(layer.compute_dtype == "float32" for layer in copy.layers if hasattr(layer, "compute_dtype"))
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(copy.predict(images, verbose=0), model.predict(images, verbose=0), atol=2e-2)
