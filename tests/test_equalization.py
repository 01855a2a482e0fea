"""Histogram equalisation: one definition (OpenCV's) on every path, carried by the model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from emotion_classifier import equalization, faces, host_batches, model_io, predict, runs, tf_dataset, training
from emotion_classifier.images import load_image
from emotion_classifier.config import ConfigError, validate
from fer_data import fer_root
from split_fixtures import copy_fer_images, manifest_frame, no_augmentation
from test_training import tiny_config


def assert_spread(images: np.ndarray) -> None:
    """Every image spans 0..255 after equalisation, except one of a single grey level (FER2013
    has a few blank frames), which is left as it is."""
    low, high = images.min(axis=(1, 2, 3)), images.max(axis=(1, 2, 3))
    assert ((low == 0) & (high == 255) | (low == high)).all()
    assert (high == 255).sum() >= len(images) - 1


def test_numpy_and_tensorflow_equalisation_give_opencvs_pixels():
    import tensorflow as tf

    random = np.random.default_rng(3)
    real = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted((fer_root() / "train" / "sad").iterdir())[:20]]
    images = np.stack([
        *real,
        np.full((48, 48), 77, dtype=np.uint8),                                  # one grey level: unchanged
        random.integers(100, 140, size=(48, 48)).astype(np.uint8),              # a narrow range: spread out
        (random.random((48, 48)) * 20 + 3).round().astype(np.uint8),           # dark, low contrast
    ])
    expected = np.stack([cv2.equalizeHist(image) for image in images]).astype(np.float32)[..., np.newaxis]
    # Float inputs (as after resizing) are rounded to 8 bits first.
    floats = images[..., np.newaxis].astype(np.float32) + random.uniform(-0.4, 0.4, size=(*images.shape, 1))
    np.testing.assert_array_equal(equalization.equalize_histogram(floats), expected)
    np.testing.assert_array_equal(equalization.equalize_histogram(floats[0]), expected[0])
    np.testing.assert_array_equal(equalization.equalize_histogram_tf(tf.constant(floats, tf.float32)).numpy(), expected)
    assert expected[-3].min() == expected[-3].max() == 77
    assert expected[-2].min() == 0 and expected[-2].max() == 255
    with pytest.raises(ValueError, match="one-channel"):
        equalization.equalize_histogram(np.zeros((2, 8, 8, 3)))


def test_equalisation_undoes_a_contrast_change_that_the_raw_pixels_keep():
    face = cv2.imread(str(sorted((fer_root() / "train" / "happy").iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    dimmed = (face * 0.4 + 20).astype(np.uint8)
    plain, dimmed_plain = (faces.model_input(np.dstack([image] * 3), 48, 1) for image in (face, dimmed))
    equalised, dimmed_equalised = (faces.model_input(np.dstack([image] * 3), 48, 1, equalize_histogram=True)
                                   for image in (face, dimmed))
    assert np.abs(plain - dimmed_plain).mean() > 30
    assert np.abs(equalised - dimmed_equalised).mean() < 0.25 * np.abs(plain - dimmed_plain).mean()
    with pytest.raises(ValueError, match="channels = 1"):
        faces.model_input(np.dstack([face] * 3), 48, 3, equalize_histogram=True)


def test_tf_data_and_pillow_paths_equalise_alike(tmp_path):
    filenames, labels = copy_fer_images(tmp_path, per_class=4)
    boxes = [(5, 6, 30, 36) if position % 2 else None for position in range(len(filenames))]
    frame = manifest_frame(filenames, labels, boxes=boxes)
    dataset = tf_dataset.make_dataset(frame, tmp_path, 40, 1, 64, False, no_augmentation(), equalize_histogram=True)
    tf_images = next(iter(dataset))[0].numpy()
    pillow_images, _ = host_batches.load_arrays(frame, tmp_path, 40, 1, equalize_histogram=True)
    plain_images, _ = host_batches.load_arrays(frame, tmp_path, 40, 1)
    # Each path equalises its own resized pixels, exactly as equalize_histogram does...
    np.testing.assert_array_equal(pillow_images, equalization.equalize_histogram(plain_images))
    for images in (tf_images, pillow_images):
        assert_spread(images)
    # ...and the two paths, whose resized pixels differ by under a grey level, stay close.
    assert np.abs(tf_images - pillow_images).mean() < 2.0
    single = load_image(tmp_path / filenames[0], 40, 1, equalize_histogram=True)
    np.testing.assert_array_equal(single, pillow_images[0])
    with pytest.raises(ValueError, match="channels = 1"):
        tf_dataset.make_dataset(frame, tmp_path, 40, 3, 8, False, no_augmentation(), equalize_histogram=True)


def test_the_setting_trains_travels_with_the_model_and_is_refused_for_colour(tmp_path):
    config = tiny_config(tmp_path, input_mode="memory", epochs=1)
    plain_fingerprint = runs.run_fingerprint(config, "model_4", resize_in_model=False)
    config.model_4.equalize_histogram = True
    assert runs.run_fingerprint(config, "model_4", resize_in_model=False) != plain_fingerprint
    run_dir = training.train(config, "model_4")
    info = model_io.read_model_info(run_dir / "best.keras")
    assert info["equalize_histogram"] is True
    arrays = sorted((tmp_path / "data" / "processed" / "arrays").glob("train_*.json")) or \
        sorted(tmp_path.rglob("arrays/train_*.json"))
    assert json.loads(arrays[0].read_text())["equalize_histogram"] is True
    images = np.load(str(arrays[0]).replace(".json", "_images.npy"))
    assert_spread(images)
    assert predict.KerasFaceClassifier(run_dir / "best.keras").equalize_histogram is True

    config.model_4.channels = 3
    with pytest.raises(ConfigError, match="equalize_histogram"):
        validate(config)


@pytest.mark.slow
def test_contrast_check_tool_reports_raw_and_equalised_scores(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from model_fixtures import save_tiny_model

    project_root = Path(__file__).resolve().parents[1]
    dataset = tmp_path / "val"
    copy_fer_images(dataset, per_class=3, classes=("happy", "sad", "angry"), subset="val")
    model_path = save_tiny_model(tmp_path / "run" / "best.keras", ["happy", "sad", "anger"], channels=1)
    output = tmp_path / "contrast.json"
    finished = subprocess.run(
        [sys.executable, str(project_root / "tools" / "contrast_check.py"), "--model", str(model_path),
         "--dataset", str(dataset), "--output", str(output)],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(output.read_text())
    # angry/ is FER's name for the model's "anger": all nine faces are scored.
    assert report["images"] == 9 and len(report["results"]) == 5
    for row in report["results"]:
        for key in ("raw_accuracy", "equalised_accuracy", "raw_macro_f1", "equalised_macro_f1"):
            assert 0.0 <= row[key] <= 1.0
