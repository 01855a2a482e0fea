"""The two model builders: exact layer order of the seed CNN, ResNet50 freezing and preprocessing."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from emotion_classifier import models
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config
from emotion_classifier.models import CaffePreprocessing, build_model, build_model_4, build_model_6


def test_model_4_seed_preset_layer_order_and_parameter_count():
    model = build_model_4((256, 256, 3), 6)
    assert model.name == "model_4"
    kinds = [type(layer).__name__ for layer in model.layers]
    conv_block = ["Conv2D", "Activation", "BatchNormalization", "MaxPooling2D"]
    second_block = ["Conv2D", "Dropout", "Activation", "BatchNormalization", "MaxPooling2D"]
    expected = (
        ["InputLayer", "Rescaling"] + conv_block + second_block + conv_block + conv_block
        + ["Flatten", "Dense", "Activation", "BatchNormalization", "Dropout",
           "Dense", "Activation", "BatchNormalization", "Dense"]
    )
    assert kinds == expected
    conv_widths = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert conv_widths == [64, 128, 256, 256]
    assert all(layer.kernel_size == (3, 3) and layer.padding == "same"
               for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == pytest.approx([0.3, 0.25])
    assert model.layers[1].scale == pytest.approx(1 / 255)
    assert model.layers[-1].activation.__name__ == "softmax"
    # Hand count: conv kernels + biases, 4 BN parameters per channel, dense weights + biases.
    convolutions = (3 * 3 * 3 * 64 + 64) + (3 * 3 * 64 * 128 + 128) + (3 * 3 * 128 * 256 + 256) \
        + (3 * 3 * 256 * 256 + 256)
    batch_norms = 4 * (64 + 128 + 256 + 256 + 128 + 64)
    denses = (16 * 16 * 256 * 128 + 128) + (128 * 64 + 64) + (64 * 6 + 6)
    assert model.count_params() == convolutions + batch_norms + denses == 9_361_862
    assert model.output_shape == (None, 6)


def test_model_4_width_and_depth_are_configurable():
    model = build_model_4((32, 32, 1), 3, conv_filters=[8, 16, 16], dense_units=[12], conv_dropout=0.0)
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [8, 16, 16]
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [12, 3]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.25]
    with pytest.raises(ValueError, match="too small"):
        build_model_4((32, 32, 3), 3, conv_filters=[8] * 6)
    with pytest.raises(ValueError):
        build_model_4((32, 32, 3), 1)


def test_model_6_freezes_the_requested_fraction_and_its_batch_norms():
    model = build_model_6((64, 64, 3), 5, weights="none", frozen_fraction=0.8)
    backbone = model.get_layer("resnet50")
    layer_count = len(backbone.layers)
    frozen_count = round(0.8 * layer_count)
    assert [layer.trainable for layer in backbone.layers] == [False] * frozen_count + [True] * (layer_count - frozen_count)
    frozen_batch_norms = [layer for layer in backbone.layers[:frozen_count]
                          if isinstance(layer, keras.layers.BatchNormalization)]
    assert frozen_batch_norms and all(not layer.trainable for layer in frozen_batch_norms)
    # A frozen BatchNormalization layer uses its moving statistics even when called in training.
    batch_norm = frozen_batch_norms[0]
    sample = np.random.default_rng(0).normal(5.0, 3.0, (4,) + batch_norm.input.shape[1:]).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(batch_norm(sample, training=True)),
        keras.ops.convert_to_numpy(batch_norm(sample, training=False)),
        rtol=1e-5,
    )
    assert model.output_shape == (None, 5)
    assert isinstance(model.get_layer("imagenet_caffe_preprocessing"), CaffePreprocessing)


def test_model_6_accepts_grayscale_and_round_trips_in_safe_mode(tmp_path):
    model = build_model_6((32, 32, 1), 3, weights="none", frozen_fraction=1.0)
    assert all(not layer.trainable for layer in model.get_layer("resnet50").layers)
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    path = tmp_path / "model_6.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(images)), keras.ops.convert_to_numpy(model(images)), atol=1e-5
    )


def test_caffe_preprocessing_matches_keras_preprocess_input():
    images = np.random.default_rng(2).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    expected = keras.applications.resnet.preprocess_input(images.copy())
    actual = keras.ops.convert_to_numpy(CaffePreprocessing()(images))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_imagenet_weights_without_cache_or_network_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(models, "download_host_reachable", lambda *args, **kwargs: False)
    started = time.monotonic()
    with pytest.raises(PipelineError, match='weights = "none"') as error:
        build_model_6((64, 64, 3), 4, weights="imagenet")
    assert time.monotonic() - started < 15
    assert models.RESNET50_NOTOP_WEIGHTS_FILE in str(error.value)


def test_unreachable_host_is_reported_within_the_timeout():
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed, so the connection cannot succeed.
    started = time.monotonic()
    assert not models.download_host_reachable("192.0.2.1", 443, timeout=1.0)
    assert time.monotonic() - started < 5


def test_model_6_loads_a_local_weights_file_and_rejects_a_missing_one(tmp_path):
    keras.utils.set_random_seed(3)
    source = build_model_6((32, 32, 3), 2, weights="none")
    weights_path = tmp_path / "backbone.weights.h5"
    source.get_layer("resnet50").save_weights(weights_path)
    keras.utils.set_random_seed(4)
    loaded = build_model_6((32, 32, 3), 2, weights=str(weights_path))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.get_layer("resnet50").get_layer("conv1_conv").kernel),
        keras.ops.convert_to_numpy(source.get_layer("resnet50").get_layer("conv1_conv").kernel),
    )
    with pytest.raises(PipelineError, match="not a file"):
        build_model_6((32, 32, 3), 2, weights=str(tmp_path / "missing.weights.h5"))


def test_build_model_dispatches_on_the_section_name():
    config = Config()
    config.model_4.conv_filters = [4, 8]
    config.model_4.dense_units = [8]
    config.model_4.image_size = 32
    assert build_model("model_4", config.model_4, 3).name == "model_4"
    config.model_6.image_size = 32
    config.model_6.weights = "none"
    model_6 = build_model("model_6", config.model_6, 3, resize_in_model=True)
    assert model_6.name == "model_6" and model_6.input_shape == (None, None, None, 3)
    with pytest.raises(ValueError):
        build_model("model_5", config.model_4, 3)


def test_a_model_that_resizes_its_inputs_computes_what_host_resizing_gives(tmp_path):
    import tensorflow as tf

    from emotion_classifier import export

    plain = models.build_vgg((64, 64, 1), 3, conv_filters=(4, 8), dense_units=(8,))
    resizing = models.build_vgg((64, 64, 1), 3, conv_filters=(4, 8), dense_units=(8,), resize_in_model=True)
    resizing.set_weights(plain.get_weights())
    assert resizing.input_shape == (None, None, None, 1)
    assert models.model_input_size(resizing) == (64, 64) == models.model_input_size(plain)
    small = np.random.default_rng(3).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    # What the input pipeline computes when it enlarges on the host.
    enlarged = tf.image.resize(small, (64, 64), method="bilinear").numpy()
    expected = keras.ops.convert_to_numpy(plain(enlarged))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resizing(small)), expected, atol=1e-5)
    # Images at the input size (evaluation, prediction) pass through unchanged.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resizing(enlarged)), expected, atol=1e-6)

    path = tmp_path / "resizing.keras"
    resizing.save(path)
    restored = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(small)), expected, atol=1e-5)
    # Exported for its input size, with BatchNormalization in inference mode (see ResizeImages).
    served = tf.saved_model.load(str(export.write_saved_model(restored, tmp_path / "saved_model")))
    signature = served.signatures["serving_default"].structured_input_signature[1]
    assert [spec.shape.as_list() for spec in signature.values()] == [[None, 64, 64, 1]]
    np.testing.assert_allclose(served.serve(enlarged).numpy(), expected, atol=1e-5)


def test_model_6_resizing_its_inputs_takes_grey_faces_of_any_size():
    model = build_model_6((32, 32, 1), 3, weights="none", frozen_fraction=1.0, resize_in_model=True)
    probabilities = keras.ops.convert_to_numpy(model(np.full((2, 24, 24, 1), 100.0, dtype="float32")))
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("preset", ["fer_vgg", "fer_vgg_cpu", "fer_vgg_wide", "fer_vgg_small"])
def test_fer_presets_build_at_fer_resolution_with_their_widths(preset):
    from emotion_classifier.config import MODEL_PRESETS, load_config

    config = load_config(None, [f'model_4.preset="{preset}"', "model_4.image_size=48", "model_4.channels=1"])
    model = build_model("model_4", config.model_4, 7)
    expected = MODEL_PRESETS[preset]
    conv_widths = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert conv_widths == [width for width in expected["conv_filters"] for _ in range(expected["convs_per_block"])]
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == \
        list(expected["dense_units"]) + [7]
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, 7)


def test_residual_vgg_adds_each_block_input_to_its_output():
    from emotion_classifier.config import load_config

    config = load_config(None, ['model_4.preset="fer_vgg_small"', 'model_4.architecture="residual_vgg"',
                                "model_4.image_size=32", "model_4.channels=1", "model_4.conv_filters=[4, 4]"])
    model = build_model("model_4", config.model_4, 3)
    assert model.name == "residual_vgg"
    names = [layer.name for layer in model.layers]
    # A projection only where the channels change (1 -> 4), an identity shortcut where they do not.
    assert [name for name in names if "shortcut_conv" in name] == ["block1_shortcut_conv"]
    assert [name for name in names if name.endswith("_add")] == ["block1_add", "block2_add"]
    # With the second block's convolutions zeroed, the block passes its (non-negative) input through.
    for layer_name in ("block2_conv1", "block2_conv2"):
        layer = model.get_layer(layer_name)
        layer.set_weights([np.zeros_like(weight) for weight in layer.get_weights()])
    probe = keras.Model(model.input, [model.get_layer("block1_pool").output, model.get_layer("block2_relu2").output])
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    block_input, block_output = (keras.ops.convert_to_numpy(tensor) for tensor in probe(images))
    np.testing.assert_allclose(block_output, block_input, atol=1e-5)
    # The plain VGG of the same configuration has no shortcut, and about the same cost.
    config.model_4.architecture = "vgg"
    plain = build_model("model_4", config.model_4, 3)
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    assert plain.count_params() < model.count_params() < 1.1 * plain.count_params()
