"""The demo: every face in a folder of pictures, labelled by the ``predict`` command's own code.

``predict_folder`` is what ``demo.ipynb`` calls. It runs ``predict.predict``, the same code as
``emotion-predict images/``: each face is found by the detector, turned upright by its eyes and
classified with the model's own preprocessing; pictures that are already tight face crops (such
as FER2013's 48x48 images in ``images/``) are classified whole and flagged ``whole_image``, and
videos are analysed frame by frame. It writes the annotated copies, ``faces.csv``/``faces.json``,
the contact sheet and each video's outputs. ``plot_face_probabilities`` draws every face's class
probabilities as bar charts, ``video_faces_table`` tabulates a video's faces. ``run`` is the demo
stage: it executes the notebook headless and keeps the executed copy, with its outputs, as a
report. ``make_demo_clip`` made ``images/demo_clip.mp4``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import faces, files, model_io, notebook, predict, runs
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config, PredictConfig

LOGGER = logging.getLogger(__name__)

NOTEBOOK_PATH = Path("demo.ipynb")
EXECUTED_NOTEBOOK_NAME = "demo.executed.ipynb"
PROBABILITY_CHART_NAME = "face_probabilities.png"
STAMP_NAME = ".demo_stamp.json"
# The columns of predict's table that the notebook shows: where each face is, how sure the
# detector was, and what the model said (the per-class probabilities are in the bar charts).
FACE_TABLE_COLUMNS: list[str] = [
    "file", "face", "x", "y", "width", "height", "detector_confidence", "status", "predicted",
    "probability", "error",
]
# Bar charts per row of the probability figure.
CHART_COLUMNS = 4
# The demo clip (make_demo_clip): small enough to ship, long enough for a timeline.
CLIP_SIZE = (640, 360)
CLIP_SECONDS = 4.0
CLIP_FPS = 15
# The settings that predict_folder takes as its own arguments, not as overrides.
FOLDER_SETTINGS = frozenset({"input", "model", "output_dir"})


def predict_folder(
    model_path: str | Path,
    images_dir: str | Path,
    output_dir: str | Path,
    **predict_overrides: object,
) -> predict.PredictionResult:
    """Find, classify and draw every face in the pictures below ``images_dir``.

    The settings are ``[predict]``'s defaults with ``input``, ``model`` and ``output_dir`` set;
    ``predict_overrides`` changes any other ``PredictConfig`` field (``face_margin=0.3``,
    ``detector="yunet"``, ...). An empty ``model_path`` means ``runs.default_model_path()``. Returns
    ``predict.predict``'s result: ``table`` has one row per face (or per picture without one),
    ``annotated`` the annotated copies, and ``output_dir`` also holds the contact sheet.
    """
    known_fields = {field.name for field in dataclasses.fields(PredictConfig)}
    unknown = sorted(set(predict_overrides) - known_fields)
    if unknown:
        raise ValueError(f"unknown predict settings {', '.join(unknown)}; PredictConfig has "
                         f"{', '.join(sorted(known_fields - FOLDER_SETTINGS))}")
    repeated = sorted(set(predict_overrides) & FOLDER_SETTINGS)
    if repeated:
        raise ValueError(f"give {', '.join(repeated)} as predict_folder's own arguments, not as overrides")
    model_path = Path(model_path) if model_path else runs.default_model_path()
    images_dir = Path(images_dir)
    output_dir = Path(output_dir)
    if not model_path.is_file():
        raise PipelineError(
            f"model not found: {model_path}; train one first (python model_4.py) or point MODEL_PATH "
            "at a saved .keras model"
        )
    if not images_dir.is_dir():
        raise PipelineError(f"images folder not found: {images_dir}")
    # Annotated copies written inside the pictures' folder would be labelled again on the next run.
    if output_dir.resolve().is_relative_to(images_dir.resolve()):
        raise PipelineError(f"the output folder {output_dir} is inside the images folder {images_dir}; "
                            "choose one outside it")
    if not any(faces.find_inputs(images_dir)):
        raise PipelineError(
            f"no images or videos in {images_dir} (looked for "
            f"{', '.join(sorted(faces.PHOTO_SUFFIXES | faces.VIDEO_SUFFIXES))})"
        )
    settings = PredictConfig(input=str(images_dir), model=str(model_path), output_dir=str(output_dir),
                             **predict_overrides)
    return predict.predict(settings)


def probability_classes(table: pd.DataFrame) -> list[str]:
    """The class names of a predict table, in the model's order (from its probability columns)."""
    prefix = predict.PROBABILITY_PREFIX
    return [column[len(prefix):] for column in table.columns if column.startswith(prefix)]


def plot_face_probabilities(table: pd.DataFrame, classes: list[str], path: str | Path,
                            limit: int = 24) -> Path:
    """Save a PNG with one horizontal bar chart of class probabilities per classified face.

    Each chart is titled with the file, the face's index (or "whole image") and the predicted
    emotion, whose bar is highlighted. Only the first ``limit`` classified rows are drawn; the
    figure says how many more the table holds. Returns ``path``.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if not classes:
        raise ValueError("classes must name at least one class")
    missing = [name for name in classes if predict.PROBABILITY_PREFIX + name not in table.columns]
    if missing:
        raise ValueError(f"the table has no probability column for {', '.join(missing)}")
    from matplotlib.figure import Figure

    # Rows without a prediction (no face found, unreadable file) have nothing to draw.
    classified = table[table["predicted"].fillna("").astype(str) != ""]
    shown = classified.head(limit)
    columns = max(1, min(CHART_COLUMNS, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure = Figure(figsize=(3.4 * columns, (0.9 + 0.22 * len(classes)) * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[len(shown):]:
        axis.axis("off")
    if shown.empty:
        axes[0].text(0.5, 0.5, "no faces classified", ha="center", va="center")
    positions = np.arange(len(classes))
    for axis, (_, row) in zip(axes, shown.iterrows()):
        values = [float(row[predict.PROBABILITY_PREFIX + name]) for name in classes]
        colours = ["tab:orange" if name == row["predicted"] else "tab:blue" for name in classes]
        axis.barh(positions, values, color=colours)
        axis.set_yticks(positions, classes, fontsize=7)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.tick_params(axis="x", labelsize=7)
        which = "whole image" if row["status"] == predict.WHOLE_IMAGE else f"face {int(row['face'])}"
        axis.set_title(f"{row['file']}, {which}\n{row['predicted']} ({float(row['probability']):.0%})",
                       fontsize=8)
    hidden = len(classified) - len(shown)
    if hidden > 0:
        figure.suptitle(f"first {len(shown)} faces; {hidden} more in {predict.CSV_NAME}")
    figure.tight_layout()
    path = Path(path)
    files.save_figure(path, figure)
    return path


def video_faces_table(video_summary: dict) -> pd.DataFrame:
    """One row per face of an analysed video: id, first and last time, analysed frames,
    dominant emotion and the share of time in each emotion (from its summary)."""
    rows = [{key: face[key] for key in ("face_id", "first_time", "last_time", "frames", "dominant_emotion")}
            | {f"share_{name}": share for name, share in face["share_of_time"].items()}
            for face in video_summary.get("faces", [])]
    return pd.DataFrame(rows)


def run(config: Config, force: bool = False) -> int:
    """The demo stage: execute ``demo.ipynb`` headless and keep the executed notebook.

    The notebook gets ``demo.model`` (empty: the shipped model, or model_4's best model when none
    is shipped), ``demo.images_dir``, and writes to ``<reports_dir>/demo``; the
    executed copy with its table and figures is saved as ``<output_dir>/demo.executed.ipynb``.
    Nothing is redone when the model, the images and the notebook are unchanged, unless ``force``.
    """
    if config.demo.model:
        model_path = Path(config.demo.model)
    else:
        model_path = runs.default_model_path(config)
        if model_path == model_io.SHIPPED_MODEL_PATH:
            LOGGER.info("demo.model is empty: using the shipped model %s", model_path)
        else:
            LOGGER.info("demo.model is empty and no model is shipped at %s: using model_4's best model %s",
                        model_io.SHIPPED_MODEL_PATH, model_path)
    images_dir = Path(config.demo.images_dir)
    output_dir = config.paths.reports / "demo"
    if not NOTEBOOK_PATH.is_file():
        raise PipelineError(f"{NOTEBOOK_PATH} not found: run the demo from the project root")
    if not model_path.is_file():
        raise PipelineError(
            f"model not found: {model_path}; train it first (python model_4.py), ship one at "
            f"{model_io.SHIPPED_MODEL_PATH}, or set demo.model"
        )
    if not images_dir.is_dir():
        raise PipelineError(f"images folder not found: {images_dir}; set demo.images_dir")

    executed_path = output_dir / EXECUTED_NOTEBOOK_NAME
    outputs = [executed_path, output_dir / predict.CSV_NAME, output_dir / predict.CONTACT_SHEET_NAME,
               output_dir / PROBABILITY_CHART_NAME]
    stamp = files.StageStamp(
        output_dir / STAMP_NAME,
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
    LOGGER.info("executed notebook: %s; faces: %s", executed_path, output_dir / predict.CSV_NAME)
    return 0


def make_demo_clip(path: str | Path, seconds: float = CLIP_SECONDS, fps: int = CLIP_FPS) -> Path:
    """Write the demo's short video: two public-domain portraits (scikit-image's astronaut, Eileen
    Collins, NASA; matplotlib's Grace Hopper, US Navy) gliding across a 640x360 frame, the second
    one tilting its head as it goes. ``images/demo_clip.mp4`` was made by this function."""
    import cv2
    import matplotlib
    from PIL import Image
    from skimage import data as skimage_data

    portraits = [
        np.asarray(Image.fromarray(skimage_data.astronaut()).resize((300, 300), Image.Resampling.LANCZOS)),
        np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
                   .convert("RGB").resize((200, 234), Image.Resampling.LANCZOS)),
    ]
    width, height = CLIP_SIZE
    frame_count = int(seconds * fps)
    path = Path(path)
    with files.atomic_path(path) as temporary:
        writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for number in range(frame_count):
            progress = number / max(1, frame_count - 1)
            frame = np.full((height, width, 3), (70, 80, 95), dtype=np.uint8)
            # The astronaut moves right, Grace Hopper left and tilts up to 20 degrees.
            _paste(frame, portraits[0], round(10 + 120 * progress), 30, 0.0)
            _paste(frame, portraits[1], round(430 - 120 * progress), 70, 20.0 * np.sin(np.pi * progress))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    return path


def _paste(frame: np.ndarray, portrait: np.ndarray, left: int, top: int, angle: float) -> None:
    """Paste ``portrait`` turned by ``angle`` degrees (about its centre) at (left, top)."""
    import cv2

    height, width = portrait.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    turned = cv2.warpAffine(portrait, rotation, (width, height), borderMode=cv2.BORDER_REPLICATE)
    region = frame[top:top + height, left:left + width]
    region[...] = turned[:region.shape[0], :region.shape[1]]


if __name__ == "__main__":
    import sys

    from emotion_classifier import cli

    sys.exit(cli.main(run, "Run demo.ipynb headless on [demo] images_dir; writes reports/demo/ (faces.csv, "
                      "faces.json, annotated/, contact_sheet.png, face_probabilities.png, demo.executed.ipynb).",
                      section="demo"))
