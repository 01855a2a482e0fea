"""The model's augmentation layer (keras.ops), the on-device batches of input_mode = "device", and training with them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from emotion_classifier import in_memory, model_io, training
from emotion_classifier.config import GeneratorConfig
from emotion_classifier.augmentation import AugmentationLayer, bilinear_affine
from jax_environment import run_folders_trained_without_tensorflow
from test_training import tiny_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def smooth_faces(count: int, size: int = 48) -> np.ndarray:
    """Images whose neighbouring pixels differ little (OpenCV's fixed-point bilinear weights are
    then within a fraction of a grey level of the exact ones)."""
    rows, columns = np.mgrid[0:size, 0:size].astype("float32")
    images = [127 + 100 * np.sin(rows / (5 + index)) * np.cos(columns / (7 + index)) for index in range(count)]
    return np.stack(images)[..., None].astype("float32")


def test_the_affine_map_matches_opencv_rotation_zoom_and_shift_with_reflected_borders():
    images = smooth_faces(3)
    angles, scales = np.array([10.0, -25.0, 0.0]), np.array([1.2, 0.8, 1.0])
    shifts_x, shifts_y = np.array([3.0, -5.5, 9.0]), np.array([-4.0, 2.0, -8.0])
    output = np.asarray(bilinear_affine(images, angles * math.pi / 180.0, scales, shifts_x, shifts_y))
    for index in range(3):
        matrix = cv2.getRotationMatrix2D((23.5, 23.5), angles[index], scales[index])
        matrix[:, 2] += (shifts_x[index], shifts_y[index])
        expected = cv2.warpAffine(images[index, :, :, 0], matrix, (48, 48), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(output[index, :, :, 0], expected, atol=1.0)


def test_a_zoom_in_is_a_crop_inside_the_face_resized_back():
    images = smooth_faces(2)
    # A scale of 48/40 crops 40 pixels: centred, and shifted by 4 pixels to the top-left corner.
    scale = np.full(2, 48 / 40)
    output = np.asarray(bilinear_affine(images, np.zeros(2), scale, np.array([0.0, 4.0 * scale[0]]),
                                        np.array([0.0, 4.0 * scale[0]])))
    for index, (top, left) in enumerate([(4, 4), (0, 0)]):
        crop = images[index, top:top + 40, left:left + 40, 0]
        expected = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_LINEAR)
        # The outermost output pixels sample a twelfth of a pixel outside the crop, where
        # cv2.resize repeats the crop's edge and the affine map reads the face around it.
        np.testing.assert_allclose(output[index, 1:-1, 1:-1, 0], expected[1:-1, 1:-1], atol=1e-3)


def test_flip_flips_about_half_the_batch_and_changes_nothing_else():
    images = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 1)).astype("float32")
    output = np.asarray(AugmentationLayer(flip=True, seed=1)(images, training=True))
    flipped = [np.array_equal(output[index], images[index, :, ::-1]) for index in range(64)]
    kept = [np.array_equal(output[index], images[index]) for index in range(64)]
    assert all(a or b for a, b in zip(flipped, kept))
    assert 16 <= sum(flipped) <= 48


def test_erasing_fills_one_rectangle_with_noise_and_values_stay_in_range():
    images = np.full((16, 24, 24, 1), 100.0, dtype="float32")
    output = np.asarray(AugmentationLayer(flip=False, random_erasing=1.0, seed=2)(images, training=True))
    for image in output[..., 0]:
        changed_rows, changed_columns = np.nonzero(image != 100.0)
        assert len(changed_rows) > 0
        # One rectangle of 2-33% of the area (a noise pixel may hit 100 by chance: at most a few).
        box = image[changed_rows.min():changed_rows.max() + 1, changed_columns.min():changed_columns.max() + 1]
        assert 0.02 * 576 - 2 <= box.size <= 0.33 * 576 + 50 and (box != 100.0).mean() > 0.95
    everything = AugmentationLayer(rotation_degrees=15, zoom=0.2, translation=0.1, contrast=0.5,
                                    random_erasing=0.5, seed=3)
    batch = np.random.default_rng(1).uniform(0, 255, (32, 24, 24, 3)).astype("float32")
    augmented = np.asarray(everything(batch, training=True))
    assert augmented.shape == batch.shape and augmented.min() >= 0.0 and augmented.max() <= 255.0
    assert not np.allclose(augmented, batch)


def test_same_seed_same_output_and_inference_passes_images_through():
    settings = {"rotation_degrees": 10, "zoom": 0.15, "translation": 0.1, "contrast": 0.2, "random_erasing": 0.5}
    images = np.random.default_rng(2).uniform(0, 255, (8, 16, 16, 1)).astype("float32")
    first = np.asarray(AugmentationLayer(**settings, seed=5)(images, training=True))
    np.testing.assert_array_equal(first, np.asarray(AugmentationLayer(**settings, seed=5)(images, training=True)))
    assert not np.array_equal(first, np.asarray(AugmentationLayer(**settings, seed=6)(images, training=True)))
    np.testing.assert_array_equal(np.asarray(AugmentationLayer(**settings)(images, training=False)), images)


def test_generator_settings_become_the_layer_and_augment_false_gives_none():
    layer = AugmentationLayer.from_config_section(GeneratorConfig(rotation_degrees=7, random_erasing=0.3), seed=4)
    assert (layer.rotation_degrees, layer.random_erasing, layer.seed) == (7.0, 0.3, 4)
    assert AugmentationLayer.from_config_section(GeneratorConfig(augment=False)) is None
    again = AugmentationLayer.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_the_training_step_is_traced_once_across_batches_and_epochs():
    layer = AugmentationLayer(rotation_degrees=10, zoom=0.1, translation=0.1, random_erasing=0.5)
    inputs = keras.Input((16, 16, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(3).integers(0, 256, (40, 16, 16, 1)).astype("uint8")
    batches = in_memory.DeviceBatches(images, np.arange(40) % 3, batch_size=8, seed=1)
    model.fit(batches, epochs=3, verbose=0)
    # Building the model runs the layer symbolically in inference mode; the training function is traced once.
    assert layer.traces == 1


def test_a_saved_model_carries_the_layers_random_state_so_a_resumed_run_draws_on(tmp_path):
    layer = AugmentationLayer(rotation_degrees=10, zoom=0.1, random_erasing=0.5, seed=3)
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(layer(inputs))))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(4).integers(0, 256, (16, 16, 16, 1)).astype("float32")
    model.fit(images, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    model.save(tmp_path / "checkpoint.keras")
    loaded = keras.saving.load_model(tmp_path / "checkpoint.keras")
    loaded_layer = next(found for found in loaded.layers if isinstance(found, AugmentationLayer))
    fresh = AugmentationLayer(rotation_degrees=10, zoom=0.1, random_erasing=0.5, seed=3)
    # The next draws are those the trained layer makes, not those of a layer just seeded.
    following = np.asarray(layer(images, training=True))
    np.testing.assert_array_equal(np.asarray(loaded_layer(images, training=True)), following)
    assert not np.array_equal(np.asarray(fresh(images, training=True)), following)


def test_device_batches_are_full_distinct_within_an_epoch_and_reshuffled():
    images = (np.arange(10, dtype="uint8") * 10).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 1), dtype="uint8")
    batches = in_memory.DeviceBatches(images, np.arange(10), batch_size=4, seed=3)
    assert len(batches) == 2  # the remainder of 2 images waits for a later epoch

    def one_epoch():
        labels = []
        for index in range(len(batches)):
            batch_images, batch_labels = (np.asarray(part) for part in batches[index])
            assert batch_images.shape == (4, 2, 2, 1) and batch_images.dtype == np.float32
            np.testing.assert_array_equal(batch_images[:, 0, 0, 0], batch_labels * 10)
            labels.extend(batch_labels.tolist())
        batches.on_epoch_end()
        return labels

    first, second = one_epoch(), one_epoch()
    assert len(set(first)) == 8 and first != second
    # A resumed run starts at its next epoch: the order it would have had.
    resumed = in_memory.DeviceBatches(images, np.arange(10), batch_size=4, seed=3)
    resumed.start_at_epoch(2)
    np.testing.assert_array_equal(resumed.batch_rows(1), batches.batch_rows(1))
    # Fewer images than a batch: repeated to fill it, so the step keeps its shape.
    small = in_memory.DeviceBatches(images[:3], np.arange(3), batch_size=8)
    assert len(small) == 1 and np.asarray(small[0][0]).shape == (8, 2, 2, 1)
    with pytest.raises(ValueError, match="as many labels"):
        in_memory.DeviceBatches(images, np.arange(9), batch_size=4)


def test_device_input_mode_trains_and_saves_a_classifier_that_loads_and_predicts(tmp_path):
    config = tiny_config(tmp_path, input_mode="device", epochs=2)
    config.generator.rotation_degrees = 10.0
    config.generator.random_erasing = 0.5
    run_dir = training.train(config, "model_4")
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["input_mode"] == "device" and summary["epochs_run"] == 2
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 2
    model, info = model_io.load_trained_model(run_dir / "best.keras")
    assert model.input_shape == (None, 32, 32, 1) and info["classes"] == ["happy", "sad", "angry"]
    faces = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    # At inference the augmentation layer passes faces through: predictions are deterministic.
    np.testing.assert_array_equal(model.predict(faces, verbose=0), model.predict(faces, verbose=0))


JAX_CHILD = textwrap.dedent("""
    import sys
    import keras
    assert keras.backend.backend() == "jax"
    sys.path.insert(0, sys.argv[2])
    from test_training import tiny_config
    from emotion_classifier import training
    import pathlib
    config = tiny_config(pathlib.Path(sys.argv[1]) / "run", input_mode="device", epochs=2)
    config.generator.rotation_degrees = 10.0
    config.generator.random_erasing = 0.5
    run_dir = training.train(config, "model_4")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print("RUN", run_dir)
""")


def test_device_training_runs_on_the_jax_backend_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    # As on a GPU machine without TensorFlow.
    (run_dir,) = run_folders_trained_without_tensorflow(JAX_CHILD, tmp_path)
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["keras_backend"] == "jax" and summary["input_mode"] == "device"
    model, _ = model_io.load_trained_model(run_dir / "best.keras")
    probabilities = model.predict(np.full((2, 32, 32, 1), 100.0, dtype="float32"), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_augmentation_benchmark_quick_times_every_place():
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    finished = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "training.py"), "--augmentation",
                               "--quick", "--output", "test_augmentation_quick"],
                              cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report_path = PROJECT_ROOT / "reports" / "bench" / "test_augmentation_quick.json"
    report = json.loads(report_path.read_text())
    report_path.unlink()
    assert report["quick"] is True
    assert {row["augmentation"] for row in report["results"]} == {"none", "memory", "device", "tf_data"}
    assert all(row["images_per_second"] > 0 for row in report["results"])
