"""``predict``: faces found in real photos, labelled, tabulated, drawn and explained; TFLite without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pandas as pd
import pytest
from fer_data import fer_root
from PIL import Image

from emotion_classifier import annotate, ensemble, export, gradcam, images, model_io, predict
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import PredictConfig

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
CLASSES = ["anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
IMAGE_SIZE = 64
EXIF_ORIENTATION_TAG = 0x0112


def save_tiny_model(path: Path) -> Path:
    """Input -> Rescaling -> Conv2D -> ReLU -> GlobalAveragePooling -> Dense softmax (7 classes)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    features = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    features = keras.layers.Conv2D(8, 3, padding="same")(features)
    features = keras.layers.ReLU(name="last_feature_map")(features)
    features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(path)
    model_io.save_model_info(path, CLASSES, IMAGE_SIZE, 3)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("run") / "best.keras")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos in the layouts users have: subfolders, rotation tags, odd modes, a broken file."""
    folder = tmp_path_factory.mktemp("photos")
    portrait = Image.open(GRACE_HOPPER).convert("RGB")
    portrait.save(folder / "portrait.jpg")
    pair = Image.new("RGB", (portrait.width * 2, portrait.height))
    pair.paste(portrait, (0, 0))
    pair.paste(portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (portrait.width, 0))
    (folder / "group").mkdir()
    pair.resize((pair.width // 2, pair.height // 2)).save(folder / "group" / "pair.png")
    # Stored on its side; only its EXIF tag (6: turn clockwise) makes the face upright.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    portrait.rotate(90, expand=True).save(folder / "sideways.jpg", exif=exif)
    portrait.convert("CMYK").save(folder / "print.jpg")
    portrait.convert("L").save(folder / "gray.webp")
    gradient = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    Image.fromarray(gradient).convert("RGBA").save(folder / "no_face.png")
    Image.open(sorted((fer_root() / "val" / "happy").glob("*.jpg"))[0]).save(folder / "tight_crop.bmp")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def result(photos, model_path, tmp_path_factory):
    settings = PredictConfig(input=str(photos), model=str(model_path),
                             output_dir=str(tmp_path_factory.mktemp("out")), explain=True)
    return predict.predict(settings, show_progress=False)


def test_every_face_gets_a_row_with_box_confidence_and_probabilities(result):
    table = result.table
    faces_by_file = table[table["status"] == "face"].groupby("file").size().to_dict()
    assert faces_by_file == {"portrait.jpg": 1, "group/pair.png": 2, "sideways.jpg": 1, "print.jpg": 1, "gray.webp": 1}
    found = table[table["status"] == "face"]
    assert (found["detector"] == "blazeface").all() and (found["detector_confidence"] >= 0.5).all()
    # Eye landmarks inside each box; the faces were turned upright by them.
    for side in ("left_eye", "right_eye"):
        assert found[f"{side}_x"].between(found["x"], found["x"] + found["width"]).all()
        assert found[f"{side}_y"].between(found["y"], found["y"] + found["height"]).all()
    assert (found["left_eye_x"] < found["right_eye_x"]).all() and found["aligned"].all()
    probabilities = found[[predict.PROBABILITY_PREFIX + name for name in CLASSES]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (found["predicted"] == [CLASSES[index] for index in probabilities.argmax(axis=1)]).all()
    # The sideways photo's face is found in the upright picture: its box is portrait-shaped there.
    sideways = found[found["file"] == "sideways.jpg"].iloc[0]
    portrait = found[found["file"] == "portrait.jpg"].iloc[0]
    assert abs(sideways["x"] - portrait["x"]) <= 10 and abs(sideways["y"] - portrait["y"]) <= 10


def test_photos_without_faces_and_broken_files_are_listed(result):
    table = result.table.set_index("file")
    assert table.loc["no_face.png", "status"] == "no_face"
    assert pd.isna(table.loc["no_face.png", "probability"])
    assert table.loc["broken.jpg", "status"] == "unreadable"
    assert "cannot identify image file" in table.loc["broken.jpg", "error"]
    # 48x48 crops are at most face_crop_max_side: classified whole, flagged, with no box.
    assert table.loc["tight_crop.bmp", "status"] == "whole_image"
    assert table.loc["tight_crop.bmp", "predicted"] in CLASSES
    assert pd.isna(table.loc["tight_crop.bmp", "x"])
    assert result.summary["unreadable_files"] == 1 and result.summary["photos_without_faces"] == 1
    assert result.summary["faces"] == 6


def test_csv_json_and_table_agree(result):
    written = pd.read_csv(result.output_dir / predict.CSV_NAME, keep_default_na=False, na_values=[""])
    assert list(written["file"]) == list(result.table["file"])
    document = json.loads((result.output_dir / predict.JSON_NAME).read_text())
    assert document["classes"] == CLASSES
    rows = document["faces"]
    assert len(rows) == len(written)
    pair_rows = [row for row in rows if row["file"] == "group/pair.png"]
    assert [row["face"] for row in pair_rows] == [0, 1]
    first = written[written["file"] == "group/pair.png"].iloc[0]
    assert pair_rows[0]["box"] == {"x": first["x"], "y": first["y"], "width": first["width"], "height": first["height"]}
    assert pair_rows[0]["probabilities"]["happy"] == pytest.approx(first["probability_happy"])
    # Landmarks by name in the JSON, two columns each in the CSV.
    assert set(pair_rows[0]["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear"}
    assert pair_rows[0]["landmarks"]["nose"] == pytest.approx([first["nose_x"], first["nose_y"]], abs=0.11)


def test_annotated_copies_gradcam_and_contact_sheet_are_written(result, photos):
    annotated = result.output_dir / "annotated"
    assert (annotated / "group" / "pair.png.jpg").is_file()
    readable = 7  # every file but broken.jpg
    assert len(result.annotated) == readable
    portrait = np.asarray(Image.open(annotated / "portrait.jpg.jpg"), dtype=np.int16)
    original = np.asarray(Image.open(photos / "portrait.jpg"), dtype=np.int16)
    assert portrait.shape == original.shape
    assert np.abs(portrait - original).max() > 100  # a box and a label were drawn
    # Small photos are enlarged so their label can be read.
    assert min(Image.open(annotated / "tight_crop.bmp.jpg").size) >= annotate.MINIMUM_ANNOTATED_SIDE
    explained = np.asarray(Image.open(annotated / "portrait.jpg.gradcam.jpg"), dtype=np.int16)
    assert explained.shape == portrait.shape and np.abs(explained - portrait).mean() > 1
    assert len(result.gradcam) == 6  # photos with a classified region
    sheet = Image.open(result.output_dir / predict.CONTACT_SHEET_NAME)
    # Seven classified regions (six faces and the tight crop): a 3 x 3 grid of captioned tiles.
    tile = annotate.CONTACT_SHEET_TILE
    assert sheet.width == 3 * tile and sheet.height >= 3 * tile


def test_classify_whole_if_no_face_flags_the_photo(photos, model_path, tmp_path):
    settings = PredictConfig(input=str(photos / "no_face.png"), model=str(model_path),
                             output_dir=str(tmp_path), classify_whole_if_no_face=True)
    table = predict.predict(settings, show_progress=False).table
    assert list(table["status"]) == ["whole_image"] and table.loc[0, "file"] == "no_face.png"
    assert table.loc[0, "predicted"] in CLASSES


def test_command_line_writes_outputs_and_skips_an_unchanged_rerun(photos, model_path, tmp_path, capsys):
    output = tmp_path / "cli"
    arguments = [str(photos / "portrait.jpg"), "--model", str(model_path), "--output", str(output),
                 "--config", str(Path("config/default.toml")), "face_margin=0.3"]
    assert predict.main(arguments) == 0
    assert "1 photos, 1 faces" in capsys.readouterr().out
    written = (output / predict.CSV_NAME).stat().st_mtime_ns
    assert predict.main(arguments) == 0
    assert (output / predict.CSV_NAME).stat().st_mtime_ns == written
    assert predict.main([*arguments, "--force"]) == 0
    assert (output / predict.CSV_NAME).stat().st_mtime_ns != written


def test_command_line_errors_name_the_problem(photos, model_path, tmp_path, capsys):
    assert predict.main([str(tmp_path / "nowhere"), "--model", str(model_path), "--output", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err
    assert predict.main([str(photos), "--model", str(tmp_path / "none.keras"), "--output", str(tmp_path)]) == 2
    assert "model not found" in capsys.readouterr().err
    assert predict.main([str(photos), "--model", str(model_path), "--output", str(tmp_path),
                         "detector=yunet", f"yunet_model={tmp_path / 'yunet.onnx'}"]) == 2
    assert "YuNet model file not found" in capsys.readouterr().err
    assert predict.main([str(photos), "--model", str(model_path), "--output", str(tmp_path), "detectr=haar"]) == 2
    assert "unknown key predict.detectr" in capsys.readouterr().err


def test_tflite_prediction_runs_without_tensorflow_and_matches_keras(photos, model_path, result, tmp_path):
    export_dir = tmp_path / "export"
    saved_model = export.write_saved_model(keras.saving.load_model(model_path), export_dir / "saved_model")
    tflite_path = export_dir / export.tflite_name("float32")
    tflite_path.write_bytes(export.convert_to_tflite(saved_model, "float32"))
    model_io.save_model_info(tflite_path, CLASSES, IMAGE_SIZE, 3)
    output = tmp_path / "tflite_out"
    script = (
        "import sys\n"
        "from emotion_classifier import predict\n"
        f"status = predict.main([{str(photos)!r}, '--tflite', {str(tflite_path)!r}, '--output', {str(output)!r}])\n"
        # Test-time views (resized crops) without TensorFlow too.
        f"status = status or predict.main([{str(photos)!r}, '--tflite', {str(tflite_path)!r}, "
        f"'--output', {str(tmp_path / 'tflite_views')!r}, 'test_time_augmentation=flip_crops'])\n"
        "loaded = [name for name in ('tensorflow', 'keras') if name in sys.modules]\n"
        "print('loaded:', loaded)\n"
        "sys.exit(status or bool(loaded))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "loaded: []" in completed.stdout
    tflite_table = pd.read_csv(output / predict.CSV_NAME, keep_default_na=False, na_values=[""])
    columns = [predict.PROBABILITY_PREFIX + name for name in CLASSES]
    keras_rows = result.table.dropna(subset=["probability"]).reset_index(drop=True)
    tflite_rows = tflite_table.dropna(subset=["probability"]).reset_index(drop=True)
    assert list(tflite_rows["file"]) == list(keras_rows["file"])
    assert np.allclose(tflite_rows[columns].to_numpy(), keras_rows[columns].to_numpy(dtype=float), atol=1e-4)
    assert json.loads((output / predict.SUMMARY_NAME).read_text())["runtime"] == "tflite"
    views_summary = json.loads((tmp_path / "tflite_views" / predict.SUMMARY_NAME).read_text())
    assert views_summary["test_time_augmentation"] == "flip_crops" and views_summary["faces"] >= 1


def test_explain_with_tflite_needs_the_keras_model(photos, tmp_path):
    settings = PredictConfig(input=str(photos), tflite_model=str(tmp_path / "m.tflite"), output_dir=str(tmp_path),
                             explain=True)
    with pytest.raises(PipelineError, match="needs the Keras model"):
        predict.predict(settings, show_progress=False)


def _brightness_model(weight: float = 1.0, name: str = "brightness_model"):
    """Class 0's score grows with the image's brightness, class 1's falls."""
    inputs = keras.Input((8, 8, 1))
    brightness = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer="zeros")(inputs)
    brightness = keras.layers.ReLU(name="brightness")(brightness)
    pooled = keras.layers.GlobalAveragePooling2D()(brightness)
    dense = keras.layers.Dense(2, activation="softmax", name="probabilities")
    model = keras.Model(inputs, dense(pooled), name=name)
    dense.set_weights([np.array([[weight, -weight]], dtype=np.float32), np.zeros(2, dtype=np.float32)])
    return model


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_gradcam_lights_up_the_region_that_raises_the_score(kind, tmp_path):
    """Grad-CAM must point at the bright half; for an ensemble (members nested in it, loaded from a
    file) the mean of the members' maps of the ensemble's score."""
    model = _brightness_model()
    if kind == "single":
        assert gradcam.find_gradcam_layer(model) == "brightness" and gradcam.ensemble_members(model) == []
    else:
        model = ensemble.build_ensemble([model, _brightness_model(2.0, "brighter")], [np.zeros(2), np.zeros(2)])
        model.save(tmp_path / "ensemble.keras")
        model = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False, safe_mode=True)
        assert [member.name for member in gradcam.ensemble_members(model)] == ["member_0", "member_1"]
    image = np.zeros((1, 8, 8, 1), dtype=np.float32)
    image[0, :, :4] = 1.0
    heatmap = gradcam.gradcam_heatmaps(model, image, np.array([0]))
    assert heatmap.shape == (1, 8, 8)
    assert np.allclose(heatmap[0, :, :4], 1.0) and np.allclose(heatmap[0, :, 4:], 0.0)
    # The other class falls with brightness: nothing raises it, so its map is empty.
    assert np.allclose(gradcam.gradcam_heatmaps(model, image, np.array([1])), 0.0)
    overlay = gradcam.overlay_heatmap(np.zeros((16, 16, 3), dtype=np.uint8), heatmap[0])
    assert overlay.shape == (16, 16, 3) and overlay[:, :6, 0].mean() > overlay[:, 10:, 0].mean()


class RecordingClassifier:
    """A stand-in model: probability of class 0 = the image's mean / 255; records what it saw."""

    classes = ["bright", "dark"]
    image_size = 16
    channels = 1
    equalize_histogram = False

    def __init__(self, calibrated_views=("none", 0.9)):
        self.calibrated_views = calibrated_views
        self.batches: list[np.ndarray] = []

    def probabilities(self, images):
        self.batches.append(images)
        bright = images.reshape(len(images), -1).mean(axis=1) / 255.0
        return np.stack([bright, 1.0 - bright], axis=1).astype(np.float32)


def test_faces_are_classified_as_the_mean_over_the_models_calibrated_views():
    rng = np.random.default_rng(4)
    crops = [rng.uniform(0, 255, (16, 16, 1)).astype("float32") for _ in range(5)]
    results = [predict.PhotoResult(Path(f"{index}.jpg"), f"{index}.jpg", predict.FACE, crops=crops[index:index + 1])
               for index in range(5)]
    classifier = RecordingClassifier(("flip_crops", 0.8))
    views = predict.prediction_views(PredictConfig(test_time_augmentation="model"), classifier)
    assert views == ("flip_crops", 0.8)
    predict._classify(results, classifier, batch_size=2, stopwatch=predict.Stopwatch(), views=views)
    # 12 views of each face, all views of a batch of faces in one call.
    assert [len(batch) for batch in classifier.batches] == [24, 24, 12]
    expected = np.mean([view.reshape(5, -1).mean(axis=1) / 255.0
                        for view in images.test_time_views(np.stack(crops), "flip_crops", 0.8)], axis=0)
    np.testing.assert_allclose([result.probabilities[0, 0] for result in results], expected, rtol=1e-5)
    # An explicit setting wins (the default is the mirror); an uncalibrated model with "model"
    # gets no views.
    assert predict.prediction_views(PredictConfig(), classifier) == ("flip", 0.8)
    assert predict.prediction_views(PredictConfig(test_time_augmentation="model"), RecordingClassifier()) == ("none", 0.9)
    assert predict.calibrated_views(model_io.read_model_info(model_io.SHIPPED_MODEL_PATH)) == ("flip_crops", 0.9)
    with pytest.raises(PipelineError, match="test_time_augmentation"):
        predict.check_settings(PredictConfig(test_time_augmentation="crops"))


@pytest.mark.slow
def test_margin_check_tool_scores_each_margin_on_detected_faces(tmp_path):
    import os

    from model_fixtures import save_tiny_model
    from split_fixtures import copy_fer_images

    project_root = Path(__file__).resolve().parents[1]
    dataset = tmp_path / "val"
    copy_fer_images(dataset, per_class=4, classes=("happy", "sad", "angry"), subset="val")
    model_path = save_tiny_model(tmp_path / "run" / "best.keras", ["happy", "sad", "anger"], image_size=48, channels=1)
    output = tmp_path / "margins.json"
    finished = subprocess.run(
        [sys.executable, str(project_root / "tools" / "margin_check.py"), "--model", str(model_path),
         "--dataset", str(dataset), "--margins", "0.05", "0.2", "--output", str(output)],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["faces"] == 12 and 1 <= report["faces_scored"] <= 12
    assert [row["face_margin"] for row in report["results"]] == [None, 0.05, 0.2]
    assert all(0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0 for row in report["results"])
    # FER's crops are about the detector's box.
    assert 0.8 < report["crop_to_box_ratio"]["median"] < 1.3
