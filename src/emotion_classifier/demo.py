"""The demo: classify every image of a folder with a trained model, as a table and a figure.

``classify_folder`` is what ``demo.ipynb`` calls; ``run`` is the demo stage, which executes that
notebook headless and keeps the executed copy (with its outputs) as a report.

This is whole-image classification, like the original project's demo: each picture is resized
to the model's input as it is, without looking for a face first. Pictures are decoded exactly as
for evaluation (``input_pipeline.load_image``: EXIF orientation applied; grayscale, palette,
RGBA, CMYK and 16-bit images converted), and a file that cannot be read is listed with its error
instead of stopping the run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from emotion_classifier import files, input_pipeline, model_io, notebook
from emotion_classifier.cli import PipelineError
from emotion_classifier.config import Config

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# The model the notebook uses when its MODEL_PATH parameter is empty (model_4's best model).
DEFAULT_MODEL_PATH = Path("models") / "model_4" / "best.keras"
NOTEBOOK_PATH = Path("demo.ipynb")
PREDICTIONS_NAME = "predictions.csv"
FIGURE_NAME = "demo_predictions.png"
EXECUTED_NOTEBOOK_NAME = "demo.executed.ipynb"
PROBABILITY_PREFIX = "probability_"


def find_images(images_dir: str | Path) -> list[Path]:
    """Every image file (by extension, case-insensitive) in ``images_dir`` and its subfolders."""
    images_dir = Path(images_dir)
    return sorted(
        path for path in images_dir.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def open_oriented(path: str | Path) -> Image.Image:
    """Decode an image for display, turned upright according to its EXIF orientation tag."""
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image)


def load_model(model_path: str | Path):
    """``model_io.load_trained_model`` with a missing model turned into an actionable error."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise PipelineError(
            f"model not found: {model_path}; train one first (python model_4.py or model_6.py) "
            "or point the demo at a saved .keras model"
        )
    try:
        return model_io.load_trained_model(model_path)
    except (FileNotFoundError, ValueError) as error:
        raise PipelineError(f"cannot use model {model_path}: {error}") from error


def classify_folder(
    model_path: str | Path,
    images_dir: str | Path,
    output_dir: str | Path,
    batch_size: int = 32,
    figure_limit: int = 48,
) -> pd.DataFrame:
    """Classify every image in ``images_dir`` and write ``predictions.csv`` and a figure.

    Returns one row per image file, sorted by path: ``file`` (relative to ``images_dir``),
    ``predicted`` (the class name), ``probability`` (of that class), one ``probability_<class>``
    column per model class, and ``error`` (empty, or why the file could not be read; such rows
    have no prediction). ``demo_predictions.png`` shows each readable image (the first
    ``figure_limit`` of them) beside a bar chart of its class probabilities.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    images_dir = Path(images_dir)
    output_dir = Path(output_dir)
    model, info = load_model(model_path)
    if not images_dir.is_dir():
        raise PipelineError(f"images folder not found: {images_dir}")
    # The demo's own figure is not a picture to classify when the output folder is inside.
    image_paths = [path for path in find_images(images_dir)
                   if not path.resolve().is_relative_to(output_dir.resolve())]
    if not image_paths:
        raise PipelineError(
            f"no images in {images_dir} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    class_names = list(info["classes"])
    image_size, channels = int(info["image_size"]), int(info["channels"])

    rows: list[dict[str, object]] = []
    with tqdm(total=len(image_paths), desc="classifying", unit="image") as progress:
        for start in range(0, len(image_paths), batch_size):
            batch_paths = image_paths[start:start + batch_size]
            readable_paths, arrays = [], []
            for path in batch_paths:
                relative = path.relative_to(images_dir).as_posix()
                try:
                    arrays.append(input_pipeline.load_image(path, image_size, channels))
                    readable_paths.append(relative)
                except Exception as error:  # noqa: BLE001 - any decoder failure is reported per file
                    LOGGER.warning("cannot read %s: %s", path, error)
                    rows.append(_unreadable_row(relative, class_names, error))
            if arrays:
                probabilities = np.asarray(model(np.stack(arrays), training=False), dtype=np.float64)
                for relative, image_probabilities in zip(readable_paths, probabilities):
                    rows.append(_prediction_row(relative, class_names, image_probabilities))
            progress.update(len(batch_paths))

    predictions = pd.DataFrame(rows).sort_values("file", kind="stable").reset_index(drop=True)
    files.save_csv(output_dir / PREDICTIONS_NAME, predictions)
    figure = plot_predictions(predictions, images_dir, class_names, limit=figure_limit)
    files.save_figure(output_dir / FIGURE_NAME, figure)
    return predictions


def _prediction_row(file: str, class_names: list[str], probabilities: np.ndarray) -> dict[str, object]:
    best = int(np.argmax(probabilities))
    row: dict[str, object] = {
        "file": file,
        "predicted": class_names[best],
        "probability": float(probabilities[best]),
    }
    row.update({PROBABILITY_PREFIX + name: float(value) for name, value in zip(class_names, probabilities)})
    row["error"] = ""
    return row


def _unreadable_row(file: str, class_names: list[str], error: Exception) -> dict[str, object]:
    row: dict[str, object] = {"file": file, "predicted": "", "probability": math.nan}
    row.update({PROBABILITY_PREFIX + name: math.nan for name in class_names})
    row["error"] = f"{type(error).__name__}: {error}"
    return row


def probability_columns(predictions: pd.DataFrame) -> list[str]:
    return [column for column in predictions.columns if column.startswith(PROBABILITY_PREFIX)]


def plot_predictions(predictions: pd.DataFrame, images_dir: str | Path, class_names: list[str],
                     limit: int = 48):
    """A figure with one line per readable image: the picture and its class probabilities."""
    from matplotlib.figure import Figure

    readable = predictions[predictions["error"] == ""].head(limit)
    figure = Figure(figsize=(9, 2.4 * max(1, len(readable))))
    if readable.empty:
        axis = figure.add_subplot(1, 1, 1)
        axis.axis("off")
        axis.text(0.5, 0.5, "no readable images", ha="center", va="center")
        return figure
    axes = figure.subplots(len(readable), 2, squeeze=False,
                           gridspec_kw={"width_ratios": [1, 2]})
    positions = np.arange(len(class_names))
    for (image_axis, bar_axis), (_, row) in zip(axes, readable.iterrows()):
        picture = open_oriented(Path(images_dir) / row["file"])
        picture.thumbnail((256, 256))
        image_axis.imshow(picture.convert("RGB"))
        image_axis.set_title(f"{row['file']}\n{row['predicted']} ({row['probability']:.0%})", fontsize=9)
        # A frame without ticks, so that white parts of a picture stay visible.
        image_axis.set_xticks([])
        image_axis.set_yticks([])
        values = [row[PROBABILITY_PREFIX + name] for name in class_names]
        colours = ["tab:orange" if name == row["predicted"] else "tab:blue" for name in class_names]
        bar_axis.barh(positions, values, color=colours)
        bar_axis.set_yticks(positions, class_names, fontsize=8)
        bar_axis.invert_yaxis()
        bar_axis.set_xlim(0, 1)
        bar_axis.set_xlabel("probability", fontsize=8)
    hidden = int((predictions["error"] == "").sum()) - len(readable)
    if hidden > 0:
        figure.suptitle(f"first {len(readable)} images; {hidden} more in {PREDICTIONS_NAME}")
    figure.tight_layout()
    return figure


def format_probability_bars(predictions: pd.DataFrame, width: int = 30) -> str:
    """Text bar charts of every image's class probabilities, for the notebook and the console."""
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    columns = probability_columns(predictions)
    names = [column[len(PROBABILITY_PREFIX):] for column in columns]
    name_width = max((len(name) for name in names), default=0)
    blocks: list[str] = []
    for _, row in predictions.iterrows():
        if row["error"]:
            blocks.append(f"{row['file']}: unreadable ({row['error']})")
            continue
        lines = [f"{row['file']}: {row['predicted']} ({row['probability']:.1%})"]
        for name, column in zip(names, columns):
            value = float(row[column])
            bar = "#" * int(round(value * width))
            lines.append(f"  {name:<{name_width}} {bar:<{width}} {value:6.1%}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run(config: Config, force: bool = False) -> int:
    """The demo stage: execute ``demo.ipynb`` headless and keep the executed notebook.

    The notebook gets ``demo.model`` (empty: model_4's best model), ``demo.images_dir`` and
    ``demo.output_dir``; the executed copy with its table and figure is saved as
    ``<output_dir>/demo.executed.ipynb``. Nothing is redone when the model, the images and the
    notebook are unchanged, unless ``force``.
    """
    model_path = Path(config.demo.model) if config.demo.model else (
        config.paths.models / config.model_4.run_name / "best.keras"
    )
    images_dir = Path(config.demo.images_dir)
    output_dir = Path(config.demo.output_dir) if config.demo.output_dir else config.paths.reports / "demo"
    if not NOTEBOOK_PATH.is_file():
        raise PipelineError(f"{NOTEBOOK_PATH} not found: run the demo from the project root")
    if not model_path.is_file():
        raise PipelineError(
            f"model not found: {model_path}; train it first (python model_4.py) or set demo.model"
        )
    if not images_dir.is_dir():
        raise PipelineError(f"images folder not found: {images_dir}; set demo.images_dir")

    executed_path = output_dir / EXECUTED_NOTEBOOK_NAME
    outputs = [executed_path, output_dir / PREDICTIONS_NAME, output_dir / FIGURE_NAME]
    stamp = files.StageStamp(
        output_dir / ".demo_stamp.json",
        settings={"model": str(model_path), "images_dir": str(images_dir), "output_dir": str(output_dir)},
        inputs=[model_path, model_io.model_info_path(model_path), images_dir, NOTEBOOK_PATH],
    )
    if not force and stamp.is_current():
        LOGGER.info("demo outputs in %s are up to date (use --force to redo)", output_dir)
        return 0
    notebook.execute_notebook(
        NOTEBOOK_PATH,
        executed_path,
        {"MODEL_PATH": str(model_path), "IMAGES_DIR": str(images_dir), "OUTPUT_DIR": str(output_dir)},
    )
    stamp.record(outputs)
    LOGGER.info("executed notebook: %s; predictions: %s", executed_path, output_dir / PREDICTIONS_NAME)
    return 0


if __name__ == "__main__":
    import sys

    from emotion_classifier import cli

    sys.exit(cli.main(run, "Run demo.ipynb headless on [demo] images_dir; writes reports/demo/ "
                      "(predictions.csv, demo_predictions.png, demo.executed.ipynb).", section="demo"))
