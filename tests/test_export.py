"""Export: SavedModel and TFLite (float32, float16, int8) agree with the Keras model; int8 is small."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from emotion_classifier import export, files, model_io
from emotion_classifier.augmentation import AugmentationLayer
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

from fer_data import SHARED_FER_ROOT
IMAGE_SIZE = 32
TRAIN_PER_CLASS = 40
VERIFY_PER_CLASS = 20

# More validation faces than the shipped sample holds.
pytestmark = pytest.mark.shared_data


def fer_images(split: str, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(path.name for path in (SHARED_FER_ROOT / split).iterdir() if path.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((SHARED_FER_ROOT / split / name).glob("*.jpg"))[:per_class]:
            picture = Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            images.append(np.asarray(picture, dtype=np.float32))
            labels.append(index)
    return np.stack(images), np.array(labels), classes


def build_small_cnn(num_classes: int) -> keras.Model:
    """A small CNN of about 390,000 parameters, with BatchNormalization like the pipeline's model_4,
    and like it augmenting its training images itself (an AugmentationLayer that exports as nothing)."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    features = AugmentationLayer(flip=True, seed=1)(inputs)
    features = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(features)
    for filters, stride, pool in ((32, 2, False), (64, 1, True), (128, 1, True), (256, 1, False)):
        features = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(features)
        # A fast-moving average, so that a few dozen steps leave usable inference statistics.
        features = keras.layers.BatchNormalization(momentum=0.7)(features)
        features = keras.layers.ReLU()(features)
        if pool:
            features = keras.layers.MaxPooling2D()(features)
    features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(features)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small CNN trained briefly on real FER2013 faces.

    Training matters: an untrained network gives nearly equal probabilities to every class, so
    its top-1 class flips under any rounding and agreement would measure nothing.
    """
    train_images, train_labels, classes = fer_images("train", TRAIN_PER_CLASS)
    verify_images, _, _ = fer_images("val", VERIFY_PER_CLASS)
    keras.utils.set_random_seed(0)
    model = build_small_cnn(len(classes))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(train_images, train_labels, epochs=6, batch_size=32, verbose=0)
    # Saved as a model is kept for inference, weights only: the optimizer's state would triple
    # the file and make the size comparison meaningless.
    inference_model = build_small_cnn(len(classes))
    inference_model.set_weights(model.get_weights())
    model_path = tmp_path_factory.mktemp("run") / "best.keras"
    inference_model.save(model_path)
    # As calibration.py records it (the offsets themselves are in the model's output layer).
    model_io.save_model_info(model_path, classes, IMAGE_SIZE, 3, decision_calibration={
        "method": "prior_matching", "test_time_augmentation": "flip_crops", "crop_fraction": 0.9})
    return model_path, train_images, verify_images


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    model_path, train_images, verify_images = trained
    output_dir = tmp_path_factory.mktemp("export")
    return export.export_model(model_path, output_dir, train_images, verify_images, image_source="fer2013"), output_dir


def test_every_export_agrees_with_the_keras_model_and_int8_is_small(report, trained):
    report, output_dir = report
    model_path, _, verify_images = trained
    print()
    print(export.format_report(report))
    keras_predictions = keras.saving.load_model(model_path).predict(verify_images, verbose=0)
    # The check means something only if the model's decisions vary from face to face.
    assert len(np.unique(keras_predictions.argmax(axis=1))) >= 3
    assert report["verification_images"] == len(verify_images) == 140
    assert 300_000 < report["parameters"] < 500_000
    tflite = report["tflite"]
    assert set(tflite) == {"float32", "float16", "int8"}
    assert tflite["float32"]["top1_agreement"] >= 0.99 and tflite["float16"]["top1_agreement"] >= 0.99
    assert tflite["int8"]["top1_agreement"] >= 0.95
    assert all(entry["meets_requirement"] for entry in tflite.values())
    assert tflite["float32"]["max_probability_difference"] < 1e-4
    assert tflite["int8"]["bytes"] <= model_path.stat().st_size / 3
    assert tflite["float16"]["bytes"] < 0.6 * tflite["float32"]["bytes"]
    assert files.read_json(output_dir / export.REPORT_NAME) == report
    exported_info = model_io.read_model_info(output_dir / "model_int8.tflite")
    keras_info = model_io.read_model_info(model_path)
    assert exported_info["classes"] == keras_info["classes"]
    # predict --tflite averages over the views the decisions were calibrated with, as with Keras.
    assert exported_info["decision_calibration"] == keras_info["decision_calibration"]


def test_saved_model_serves_the_same_probabilities(report, trained):
    import tensorflow as tf

    _, output_dir = report
    model_path, _, verify_images = trained
    served = tf.saved_model.load(str(output_dir / export.SAVED_MODEL_FOLDER))
    probabilities = served.serve(tf.constant(verify_images[:16])).numpy()
    expected = keras.saving.load_model(model_path).predict(verify_images[:16], verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_int8_without_calibration_images_and_unknown_variants_are_refused(report, trained, tmp_path):
    _, output_dir = report
    model_path, train_images, verify_images = trained
    with pytest.raises(ValueError, match="calibration images"):
        export.convert_to_tflite(output_dir / export.SAVED_MODEL_FOLDER, "int8", None)
    with pytest.raises(PipelineError, match="unknown"):
        export.export_model(model_path, tmp_path, train_images, verify_images, variants=["int4"])
    with pytest.raises(PipelineError, match="verification images"):
        export.export_model(model_path, tmp_path, train_images, verify_images[:, :16, :16], variants=["float32"])


def test_stage_reads_a_folder_of_images_and_skips_an_unchanged_rerun(trained, tmp_path, capsys, monkeypatch):
    model_path, _, _ = trained
    folder = tmp_path / "faces"
    folder.mkdir()
    for path in sorted((SHARED_FER_ROOT / "train" / "happy").glob("*.jpg"))[:20]:
        (folder / path.name).write_bytes(path.read_bytes())
    config = Config()
    config.export.model = str(model_path)
    config.export.output_dir = str(tmp_path / "out")
    config.export.representative_images = str(folder)
    monkeypatch.setattr(export, "REPRESENTATIVE_COUNT", 12)
    monkeypatch.setattr(export, "VERIFICATION_COUNT", 8)
    config.export.tflite_variants = ["float32"]
    assert export.run(config) == 0
    assert "model_float32.tflite" in capsys.readouterr().out
    written = files.read_json(tmp_path / "out" / export.REPORT_NAME)
    assert (written["calibration_images"], written["verification_images"]) == (12, 8)
    stamp_time = (tmp_path / "out" / export.REPORT_NAME).stat().st_mtime_ns
    assert export.run(config) == 0
    assert (tmp_path / "out" / export.REPORT_NAME).stat().st_mtime_ns == stamp_time


def test_command_line_reports_a_missing_model(tmp_path, capsys):
    assert export.main(["--model", str(tmp_path / "none.keras"), "--output", str(tmp_path)]) == 2
    assert "model_info.json" in capsys.readouterr().err
