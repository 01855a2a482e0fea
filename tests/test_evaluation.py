"""Evaluation reports: metrics against scikit-learn, class matching by name, outputs, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as sklearn_metrics

from emotion_classifier import evaluation, images, manifest, model_io
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config
from model_fixtures import save_tiny_model

from fer_data import fer_root
# The model knows "surprise", which the folder dataset below lacks; the dataset has "disgust",
# which the model does not know.
MODEL_CLASSES = ["neutral", "happy", "sad", "anger", "surprise"]
SPLIT_CLASSES = ["neutral", "happy", "sad", "anger"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "model_4" / "best.keras",
                           MODEL_CLASSES, image_size=32, channels=1)


def make_config(root: Path, model_path: Path | str = "") -> Config:
    config = Config()
    config.paths.data_dir = str(root / "data")
    config.paths.models_dir = str(root / "models")
    config.paths.reports_dir = str(root / "reports")
    config.model_evaluation_4.model = str(model_path)
    return config


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """Several batches of the tests' few images, so that batching is exercised."""
    monkeypatch.setattr(evaluation, "BATCH_SIZE", 4)


def write_split_manifest(config: Config, images_per_class: int = 4) -> pd.DataFrame:
    """A split manifest with generated images: every class in train, valid and test."""
    rows = []
    generator = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for class_index, label in enumerate(SPLIT_CLASSES):
            for number in range(images_per_class):
                filename = f"{split}/{label}_{number}.png"
                path = config.paths.images_root / filename
                path.parent.mkdir(parents=True, exist_ok=True)
                brightness = 40 + 50 * class_index
                pixels = np.clip(generator.normal(brightness, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(path)
                has_box = number % 2 == 0
                rows.append({
                    "filename": filename, "label": label, "label_id": class_index,
                    "source_label": label, "source_split": "", "source_file": "generated",
                    "face_x": 4.0 if has_box else np.nan, "face_y": 4.0 if has_box else np.nan,
                    "face_width": 30.0 if has_box else np.nan, "face_height": 30.0 if has_box else np.nan,
                    "valence": np.nan, "arousal": np.nan, "landmarks": "",
                    "image_width": 40, "image_height": 40, "split": split, "class_index": class_index,
                })
    frame = pd.DataFrame(rows, columns=[*manifest.MANIFEST_COLUMNS, "split", "class_index"])
    config.paths.split_manifest.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(config.paths.split_manifest, index=False)
    return frame


@pytest.fixture()
def fer_folder(tmp_path) -> Path:
    """Real FER2013 images in its own layout: train/ and val/ folders of class folders."""
    root = tmp_path / "fer"
    for split, per_class in (("train", 1), ("val", 3)):
        for folder in ("angry", "disgust", "happy", "neutral", "sad"):
            target = root / split / folder
            target.mkdir(parents=True)
            for source in sorted((fer_root() / split / folder).iterdir())[:per_class]:
                shutil.copy(source, target / source.name)
    (root / "val" / "README.txt").write_text("not an image")
    return root


def read_report(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def sklearn_scores(predictions: pd.DataFrame, class_names: list[str]) -> dict:
    """The scores recomputed from predictions.csv, independently of the evaluation module."""
    true = predictions["true"].map(class_names.index).to_numpy()
    predicted = predictions["predicted"].map(class_names.index).to_numpy()
    present = sorted(set(true))
    return {
        "accuracy": sklearn_metrics.accuracy_score(true, predicted),
        "balanced_accuracy": sklearn_metrics.balanced_accuracy_score(true, predicted),
        "macro_f1": sklearn_metrics.f1_score(true, predicted, labels=present, average="macro", zero_division=0),
        "weighted_f1": sklearn_metrics.f1_score(true, predicted, labels=present, average="weighted",
                                                zero_division=0),
        "cohen_kappa": sklearn_metrics.cohen_kappa_score(true, predicted),
        "confusion": sklearn_metrics.confusion_matrix(true, predicted, labels=range(len(class_names))),
    }


def test_split_evaluation_matches_sklearn_and_writes_every_output(tiny_model, tmp_path, capsys):
    config = make_config(tmp_path, tiny_model)
    frame = write_split_manifest(config)
    assert evaluation.run(config) == 0

    report_dir = config.paths.reports / "model_4"  # the run name from model_info.json
    report = read_report(report_dir / evaluation.EVALUATION_NAME)
    predictions = pd.read_csv(report_dir / evaluation.PREDICTIONS_NAME)
    expected_files = frame.loc[frame["split"] == "test", "filename"].tolist()
    assert predictions["filename"].tolist() == expected_files
    assert report["images"] == len(expected_files)
    probabilities = predictions[[f"probability_{name}" for name in MODEL_CLASSES]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert predictions["predicted"].tolist() == [MODEL_CLASSES[i] for i in probabilities.argmax(axis=1)]

    expected = sklearn_scores(predictions, MODEL_CLASSES)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa"):
        assert report["metrics"][key] == pytest.approx(expected[key]), key
    assert np.array_equal(report["confusion_matrix"]["counts"], expected["confusion"])
    assert report["per_class"]["happy"]["support"] == 4
    assert report["model_classes_absent_from_data"] == ["surprise"]
    assert "happy" in report["classification_report"]
    with Image.open(report_dir / evaluation.CONFUSION_NAME) as figure:
        assert figure.format == "PNG" and figure.width > 1.5 * figure.height  # two panels
    printed = capsys.readouterr().out
    assert "balanced_accuracy" in printed and "surprise" in printed


def test_folder_evaluation_excludes_unknown_classes_and_comparison_has_two_rows(tiny_model, fer_folder,
                                                                                 tmp_path):
    config = make_config(tmp_path, tiny_model)
    write_split_manifest(config)
    assert evaluation.run(config) == 0
    config.model_evaluation_4.dataset = str(fer_folder)
    config.model_evaluation_4.name = "model_4_on_fer2013"
    assert evaluation.run(config) == 0

    report = read_report(config.paths.reports / "model_4_on_fer2013" / evaluation.EVALUATION_NAME)
    # Only the val/ part is evaluated; disgust is counted and left out; "angry" means anger.
    assert report["dataset_description"].startswith("validation part of")
    assert report["excluded_per_class"] == {"disgust": 3}
    assert report["images"] == 12
    assert report["per_class"]["anger"]["support"] == 3
    assert report["model_classes_absent_from_data"] == ["surprise"]
    assert sum(report["rejected_files"].values()) == 1
    predictions = pd.read_csv(config.paths.reports / "model_4_on_fer2013" / evaluation.PREDICTIONS_NAME)
    assert set(predictions["true"]) == {"anger", "happy", "neutral", "sad"}
    assert all(name.startswith("val/") for name in predictions["filename"])
    assert report["metrics"]["macro_f1"] == pytest.approx(sklearn_scores(predictions, MODEL_CLASSES)["macro_f1"])

    table = (config.paths.reports / evaluation.COMPARISON_NAME).read_text().splitlines()
    rows = [line for line in table if line.startswith("| model_4")]
    assert len(rows) == 2
    assert rows[1].split(" | ")[2] == "12"  # name, dataset, images, ...


def test_unchanged_inputs_do_nothing_unless_forced(tiny_model, tmp_path):
    config = make_config(tmp_path, tiny_model)
    write_split_manifest(config, images_per_class=1)
    evaluation.run(config)
    report_path = config.paths.reports / "model_4" / evaluation.EVALUATION_NAME
    first = report_path.stat().st_mtime_ns
    evaluation.run(config)
    assert report_path.stat().st_mtime_ns == first
    evaluation.run(config, force=True)
    assert report_path.stat().st_mtime_ns != first


def test_unreadable_image_is_listed_and_left_out(tiny_model, tmp_path):
    config = make_config(tmp_path, tiny_model)
    frame = write_split_manifest(config, images_per_class=2)
    broken = frame.loc[frame["split"] == "test", "filename"].iloc[0]
    (config.paths.images_root / broken).write_bytes(b"truncated")
    evaluation.run(config)
    report = read_report(config.paths.reports / "model_4" / evaluation.EVALUATION_NAME)
    assert [entry["filename"] for entry in report["unreadable_images"]] == [broken]
    assert report["images"] == 7


def test_missing_run_falls_back_to_the_shipped_model(tiny_model, tmp_path, monkeypatch):
    config = make_config(tmp_path)
    monkeypatch.setattr(model_io, "SHIPPED_MODEL_PATH", Path(tiny_model))
    assert evaluation.resolve_model_path(config, "model_evaluation_4", "model_4") == Path(tiny_model)


def test_missing_inputs_say_which_stage_to_run(tiny_model, tmp_path, monkeypatch):
    config = make_config(tmp_path)
    # Without a shipped model to fall back to, a missing run names the stage that trains it.
    monkeypatch.setattr(model_io, "SHIPPED_MODEL_PATH", tmp_path / "no_shipped_model.keras")
    with pytest.raises(PipelineError, match=r"model_4\.py"):
        evaluation.run(config)
    with pytest.raises(PipelineError, match=r"model_6\.py"):
        evaluation.run(config, section="model_evaluation_6", model_section="model_6")
    config.model_evaluation_4.model = str(tiny_model)
    with pytest.raises(PipelineError, match=r"train_valid_test_clean\.py"):
        evaluation.run(config)
    config.model_evaluation_4.dataset = str(tmp_path / "nowhere")
    with pytest.raises(PipelineError, match="neither 'test', 'valid' nor an existing dataset folder"):
        evaluation.run(config)


def test_compute_metrics_averages_over_classes_present():
    # Class 2 has no images but is predicted once: an error for class 0, not a zero in the average.
    scores = evaluation.compute_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), ["a", "b", "c"])
    assert scores["balanced_accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert scores["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    with pytest.raises(ValueError):
        evaluation.compute_metrics(np.array([], dtype=int), np.array([], dtype=int), ["a"])


def test_test_time_views_flip_and_crop_geometry():
    batch = np.zeros((2, 10, 10, 1), dtype=np.float32)
    batch[:, :, :5, :] = 255.0  # left half white
    assert len(images.test_time_views(batch, "none")) == 1
    flipped = images.test_time_views(batch, "flip")
    assert len(flipped) == 2
    assert flipped[1][0, 0, 9, 0] == 255.0 and flipped[1][0, 0, 0, 0] == 0.0
    views = images.test_time_views(batch, "flip_crops", crop_fraction=0.8)
    assert len(views) == 12
    assert all(view.shape == batch.shape for view in views)
    assert all(view.min() >= 0.0 and view.max() <= 255.0 for view in views)
    # The top-left crop (first crop view) keeps more white than the top-right crop.
    assert views[1].mean() > views[2].mean()
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        images.test_time_views(batch, "rotate")
