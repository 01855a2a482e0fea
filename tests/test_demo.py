"""The demo: lenient image reading, folder classification, and the notebook executed headless."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_classifier import demo, model_io, notebook
from emotion_classifier.cli import PipelineError
from emotion_classifier.config import Config

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["neutral", "happy", "sad"]
IMAGE_SIZE = 32
EXIF_ORIENTATION_TAG = 0x0112


def save_tiny_model(model_path: Path, classes: list[str], image_size: int = IMAGE_SIZE,
                    channels: int = 3) -> Path:
    """A small untrained classifier saved the way training saves one (model + model_info.json)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(image_size, image_size, channels))
    features = keras.layers.Rescaling(1.0 / 255)(inputs)
    features = keras.layers.Conv2D(4, 3, activation="relu")(features)
    features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(features)
    model = keras.Model(inputs, outputs)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    model_io.save_model_info(model_path, classes, image_size, channels, run_name=model_path.parent.name)
    return model_path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny_run" / "best.keras", CLASSES)


def half_black_half_white(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Left half black, right half white."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, width // 2:] = 255
    return Image.fromarray(pixels, mode="L").convert(mode)


@pytest.fixture()
def mixed_images(tmp_path) -> Path:
    """One image of every awkward kind the demo must read, and one file it cannot."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    Image.fromarray(np.full((40, 30), 90, dtype=np.uint8), mode="L").save(folder / "gray.jpg")
    rgba = np.zeros((24, 24, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :12, 3] = 255  # the right half is fully transparent
    Image.fromarray(rgba, mode="RGBA").save(folder / "transparent.png")
    Image.new("CMYK", (36, 36), (0, 255, 255, 0)).save(folder / "cmyk.jpeg")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6  # "rotate 90 degrees clockwise to display"
    half_black_half_white(60, 30).save(folder / "more" / "rotated.JPG", exif=exif, quality=95)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, ignored")
    return folder


def test_open_oriented_applies_exif_orientation(mixed_images):
    picture = np.asarray(demo.open_oriented(mixed_images / "more" / "rotated.JPG").convert("L"))
    # Stored 60 wide with the black half on the left; turned clockwise it stands with black on top.
    assert picture.shape == (60, 30)
    assert picture[:20].mean() < 40 and picture[-20:].mean() > 215


def test_classify_folder_lists_every_image_and_survives_a_corrupt_file(tiny_model, mixed_images, tmp_path):
    output = tmp_path / "out"
    predictions = demo.classify_folder(tiny_model, mixed_images, output, batch_size=2)

    assert list(predictions["file"]) == sorted(
        ["broken.jpg", "cmyk.jpeg", "gray.jpg", "more/rotated.JPG", "transparent.png"]
    )
    probability_columns = [f"probability_{name}" for name in CLASSES]
    assert demo.probability_columns(predictions) == probability_columns
    broken = predictions.set_index("file").loc["broken.jpg"]
    assert broken["predicted"] == "" and "UnidentifiedImageError" in broken["error"]
    readable = predictions[predictions["error"] == ""]
    assert len(readable) == 4
    probabilities = readable[probability_columns].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    best = [CLASSES[index] for index in probabilities.argmax(axis=1)]
    assert list(readable["predicted"]) == best
    assert np.allclose(readable["probability"], probabilities.max(axis=1))

    saved = pd.read_csv(output / demo.PREDICTIONS_NAME, keep_default_na=False)
    assert list(saved["file"]) == list(predictions["file"])
    with Image.open(output / demo.FIGURE_NAME) as figure:
        assert figure.format == "PNG" and figure.height > 400  # one line per readable image

    text = demo.format_probability_bars(predictions, width=10)
    assert "broken.jpg: unreadable" in text
    gray = readable.set_index("file").loc["gray.jpg"]
    gray_block = next(block for block in text.split("\n\n") if block.startswith("gray.jpg"))
    for name in CLASSES:
        bar_line = next(line for line in gray_block.splitlines() if line.startswith(f"  {name} "))
        assert bar_line.count("#") == round(gray[f"probability_{name}"] * 10)


def test_classify_folder_errors_are_actionable(tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match="no images"):
        demo.classify_folder(tiny_model, empty, tmp_path / "out")
    with pytest.raises(PipelineError, match="model not found"):
        demo.classify_folder(tmp_path / "missing.keras", empty, tmp_path / "out")
    with pytest.raises(PipelineError, match="images folder not found"):
        demo.classify_folder(tiny_model, tmp_path / "nowhere", tmp_path / "out")


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


def test_demo_stage_executes_the_notebook_headless(tiny_model, mixed_images, tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY_ROOT)
    config = Config()
    config.demo.model = str(tiny_model)
    config.demo.images_dir = str(mixed_images)
    config.demo.output_dir = str(tmp_path / "demo")

    assert demo.run(config) == 0
    executed_path = tmp_path / "demo" / demo.EXECUTED_NOTEBOOK_NAME
    executed = nbformat.read(executed_path, as_version=4)
    injected = [cell for cell in executed.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert str(mixed_images) in injected[0].source
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    tables = [output["data"]["text/html"] for output in outputs
              if output.get("output_type") == "display_data" and "text/html" in output.get("data", {})]
    assert tables and "more/rotated.JPG" in tables[0] and "probability_happy" in tables[0]
    assert any("image/png" in output.get("data", {}) for output in outputs)
    assert (tmp_path / "demo" / demo.PREDICTIONS_NAME).is_file()

    # Unchanged inputs: the stage does nothing (the executed notebook is not rewritten).
    modified = executed_path.stat().st_mtime_ns
    assert demo.run(config) == 0
    assert executed_path.stat().st_mtime_ns == modified
    assert json.loads(executed_path.read_text())["cells"]


def test_demo_stage_reports_missing_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY_ROOT)
    config = Config()
    config.paths.models_dir = str(tmp_path / "models")
    with pytest.raises(PipelineError, match="model_4"):
        demo.run(config)
