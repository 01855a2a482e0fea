"""The demo: a folder of real pictures labelled through ``predict``, and the notebook executed headless."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
from model_fixtures import save_tiny_model
from PIL import Image

from emotion_classifier import demo, model_io, notebook, predict, runs
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
FER_CROP = REPOSITORY_ROOT / "images" / "happy_PublicTest_10181609.jpg"
CLASSES = ["neutral", "happy", "sad"]
EXPECTED_STATUS = {
    "portrait.jpg": predict.FACE,
    "gray_portrait.jpg": predict.FACE,
    "transparent_portrait.png": predict.FACE,
    "fer/happy_crop.jpg": predict.WHOLE_IMAGE,
    "cmyk_wall.jpeg": predict.NO_FACE,
    "broken.jpg": predict.UNREADABLE,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny_run" / "best.keras", CLASSES)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """A real portrait in several colour modes, a FER2013 face crop, a faceless CMYK picture, a broken
    file and a short clip of two moving portraits."""
    folder = tmp_path_factory.mktemp("pictures")
    (folder / "fer").mkdir()
    portrait = Image.open(GRACE_HOPPER).convert("RGB")
    portrait.save(folder / "portrait.jpg")
    portrait.convert("L").resize((portrait.width // 2, portrait.height // 2)).save(folder / "gray_portrait.jpg")
    transparent = portrait.convert("RGBA")
    alpha = np.full((portrait.height, portrait.width), 255, dtype=np.uint8)
    alpha[:, :40] = 0  # a transparent stripe down the left edge, away from the face
    transparent.putalpha(Image.fromarray(alpha, mode="L"))
    transparent.save(folder / "transparent_portrait.png")
    shutil.copy(FER_CROP, folder / "fer" / "happy_crop.jpg")
    Image.new("CMYK", (160, 120), (0, 255, 255, 0)).save(folder / "cmyk_wall.jpeg")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not a picture, ignored")
    demo.make_demo_clip(folder / "clip.mp4", seconds=1.0, fps=6)
    return folder


@pytest.fixture(scope="module")
def folder_result(tiny_model, pictures, tmp_path_factory) -> predict.PredictionResult:
    return demo.predict_folder(tiny_model, pictures, tmp_path_factory.mktemp("demo") / "out")


def test_predict_folder_labels_every_face_and_flags_the_rest(folder_result):
    table = folder_result.table
    assert {path.parent.name for path in folder_result.annotated} == {"annotated", "fer"}
    statuses = table.groupby("file")["status"].agg(set).to_dict()
    assert statuses == {file: {status} for file, status in EXPECTED_STATUS.items()}
    (clip,) = folder_result.videos
    assert clip["frames_analysed"] == 6 and [face["face_id"] for face in clip["faces"]] == [0, 1]
    assert list(demo.video_faces_table(clip)["face_id"]) == [0, 1]

    faces = table[table["status"] == predict.FACE]
    assert set(faces["file"]) == {"portrait.jpg", "gray_portrait.jpg", "transparent_portrait.png"}
    assert (faces["face"] >= 0).all() and (faces["width"] >= 48).all()
    assert faces["detector_confidence"].notna().all()
    probabilities = table[[f"probability_{name}" for name in CLASSES]]
    classified = table[table["status"].isin([predict.FACE, predict.WHOLE_IMAGE])]
    assert np.allclose(probabilities.loc[classified.index].sum(axis=1), 1.0, atol=1e-4)
    assert set(classified["predicted"]) <= set(CLASSES)
    unclassified = table[~table.index.isin(classified.index)]
    assert (unclassified["predicted"] == "").all()
    broken = table.set_index("file").loc["broken.jpg"]
    assert "UnidentifiedImageError" in broken["error"]

    output = folder_result.output_dir
    assert demo.probability_classes(table) == CLASSES
    # Every readable picture has an annotated copy; the broken file has none.
    assert sorted(path.relative_to(output / predict.ANNOTATED_FOLDER).as_posix()
                  for path in folder_result.annotated) == sorted(
        f"{file}.jpg" for file, status in EXPECTED_STATUS.items() if status != predict.UNREADABLE)
    assert all(path.is_file() for path in folder_result.annotated)
    saved = pd.read_csv(output / predict.CSV_NAME, keep_default_na=False)
    assert list(saved["file"]) == list(table["file"])
    with Image.open(output / predict.CONTACT_SHEET_NAME) as sheet:
        assert sheet.format == "PNG" and sheet.width >= 112


def test_plot_face_probabilities_draws_one_chart_per_classified_face(folder_result, tmp_path):
    table = folder_result.table
    classified = int(table["status"].isin([predict.FACE, predict.WHOLE_IMAGE]).sum())
    every_face = demo.plot_face_probabilities(table, CLASSES, tmp_path / "all.png")
    first_face = demo.plot_face_probabilities(table, CLASSES, tmp_path / "one.png", limit=1)
    with Image.open(every_face) as every, Image.open(first_face) as first:
        assert every.format == first.format == "PNG"
        # Charts are laid out four to a row, so more faces make a wider or taller figure.
        assert classified > 1 and every.width * every.height > 1.5 * first.width * first.height
    faceless = demo.plot_face_probabilities(table[table["status"] == predict.NO_FACE], CLASSES,
                                            tmp_path / "none.png")
    assert faceless.stat().st_size > 1000
    with pytest.raises(ValueError, match="angry"):
        demo.plot_face_probabilities(table, ["angry"], tmp_path / "wrong.png")
    with pytest.raises(ValueError, match="limit"):
        demo.plot_face_probabilities(table, CLASSES, tmp_path / "wrong.png", limit=0)


def test_predict_folder_errors_are_actionable(tiny_model, pictures, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match="no images"):
        demo.predict_folder(tiny_model, empty, tmp_path / "out")
    with pytest.raises(PipelineError, match="model not found"):
        demo.predict_folder(tmp_path / "missing.keras", pictures, tmp_path / "out")
    with pytest.raises(PipelineError, match="images folder not found"):
        demo.predict_folder(tiny_model, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(PipelineError, match="inside the images folder"):
        demo.predict_folder(tiny_model, pictures, pictures / "out")
    with pytest.raises(ValueError, match="face_margn"):
        demo.predict_folder(tiny_model, pictures, tmp_path / "out", face_margn=0.3)
    with pytest.raises(ValueError, match="own arguments"):
        demo.predict_folder(tiny_model, pictures, tmp_path / "out", model="other.keras")


def test_default_model_is_the_shipped_one_when_it_exists(tiny_model, tmp_path, monkeypatch):
    config = Config()
    config.paths.models_dir = str(tmp_path / "models")
    monkeypatch.setattr(model_io, "SHIPPED_MODEL_PATH", tmp_path / "shipped" / "model.keras")
    assert runs.default_model_path(config) == tmp_path / "models" / config.model_4.run_name / "best.keras"
    monkeypatch.setattr(model_io, "SHIPPED_MODEL_PATH", tiny_model)
    assert runs.default_model_path(config) == tiny_model


def test_inject_parameters_replaces_defaults_and_refuses_unknown_names():
    source = nbformat.read(REPOSITORY_ROOT / "demo.ipynb", as_version=4)
    injected = notebook.inject_parameters(source, {"IMAGES_DIR": "/data/pictures"})
    position = next(index for index, cell in enumerate(injected.cells)
                    if "parameters" in cell.metadata.get("tags", []))
    assert injected.cells[position + 1].source.endswith("IMAGES_DIR = '/data/pictures'")
    again = notebook.inject_parameters(injected, {"IMAGES_DIR": "other"})
    assert len(again.cells) == len(injected.cells)  # replaced, not stacked
    with pytest.raises(ValueError, match="IMAGE_DIR"):
        notebook.inject_parameters(source, {"IMAGE_DIR": "typo"})


def test_committed_notebook_has_no_outputs():
    source = nbformat.read(REPOSITORY_ROOT / "demo.ipynb", as_version=4)
    code_cells = [cell for cell in source.cells if cell.cell_type == "code"]
    assert code_cells and all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    assert any("demo.predict_folder" in cell.source for cell in code_cells)


def test_failing_cell_raises_pipeline_error_naming_the_cell(tmp_path):
    failing = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("VALUE = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"),
        nbformat.v4.new_code_cell("raise KeyError('boom')"),
    ])
    path = tmp_path / "failing.ipynb"
    nbformat.write(failing, str(path))
    output = tmp_path / "failing.executed.ipynb"
    with pytest.raises(PipelineError, match=r"cell 3 \(\"raise KeyError\('boom'\)\"\) raised KeyError"):
        notebook.execute_notebook(path, output, {"VALUE": 2}, timeout=60)
    executed = nbformat.read(output, as_version=4)
    # The kernel is this interpreter, so the notebook sees this package's environment.
    assert executed.cells[2].outputs[0]["text"].strip() == sys.executable


def test_demo_stage_executes_the_notebook_headless(tiny_model, pictures, tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY_ROOT)
    config = Config()
    config.demo.model = str(tiny_model)
    config.demo.images_dir = str(pictures)
    config.paths.reports_dir = str(tmp_path / "reports")

    assert demo.run(config) == 0
    output = tmp_path / "reports" / "demo"
    executed_path = output / demo.EXECUTED_NOTEBOOK_NAME
    executed = nbformat.read(executed_path, as_version=4)
    injected = [cell for cell in executed.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert str(pictures) in injected[0].source
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    tables = [output["data"]["text/html"] for output in outputs
              if output.get("output_type") == "display_data" and "text/html" in output.get("data", {})]
    assert tables and all(file in tables[0] for file in EXPECTED_STATUS)
    assert "detector_confidence" in tables[0] and predict.WHOLE_IMAGE in tables[0]
    # Five annotated pictures, the contact sheet, the probability chart and the clip's two timelines.
    pictures_shown = [output for output in outputs if "image/png" in output.get("data", {})
                      or "image/jpeg" in output.get("data", {})]
    assert len(pictures_shown) == 9
    assert "dominant_emotion" in tables[-1] and "share_happy" in tables[-1]
    for name in (predict.CSV_NAME, predict.JSON_NAME, predict.CONTACT_SHEET_NAME, demo.PROBABILITY_CHART_NAME):
        assert (output / name).is_file(), name

    # Unchanged inputs: the stage does nothing (the executed notebook is not rewritten).
    modified = executed_path.stat().st_mtime_ns
    assert demo.run(config) == 0
    assert executed_path.stat().st_mtime_ns == modified
    assert json.loads(executed_path.read_text())["cells"]


def test_demo_stage_reports_missing_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY_ROOT)
    monkeypatch.setattr(model_io, "SHIPPED_MODEL_PATH", tmp_path / "shipped" / "model.keras")
    config = Config()
    config.paths.models_dir = str(tmp_path / "models")
    with pytest.raises(PipelineError, match="model_4"):
        demo.run(config)
