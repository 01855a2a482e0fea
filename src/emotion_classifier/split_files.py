"""Reading the split stage's outputs: the split manifest, the class names, and per-row paths and boxes.

Every stage after the split (training, evaluation, the generator preview, TFRecords) reads its
rows through these functions, so a missing or inconsistent split file is reported the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import files
from emotion_classifier.errors import PipelineError
from emotion_classifier.manifest import FACE_BOX_COLUMNS, has_face_box, read_manifest

CLASSES_FILE_NAME = "classes.json"


def read_split(config) -> tuple[pd.DataFrame, list[str]]:
    """The split manifest and the kept class names (in ``class_index`` order)."""
    manifest_path = Path(config.paths.split_manifest)
    classes_path = Path(config.paths.processed) / CLASSES_FILE_NAME
    for path in (manifest_path, classes_path):
        if not path.is_file():
            raise PipelineError(f"{path} not found: run the split stage (train_valid_test_clean.py) first")
    frame = read_manifest(manifest_path)
    for column in ("split", "class_index"):
        if column not in frame.columns:
            raise PipelineError(f"{manifest_path}: column {column!r} missing; re-run the split stage")
    try:
        classes = list(files.read_json(classes_path)["classes"])
    except (ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{classes_path}: expected {{\"classes\": [...]}}: {error}") from error
    indices = frame["class_index"].to_numpy()
    if len(frame) and (indices.min() < 0 or indices.max() >= len(classes)):
        raise PipelineError(
            f"{manifest_path}: class_index outside 0..{len(classes) - 1} (the classes of {classes_path})"
        )
    frame["class_index"] = frame["class_index"].astype("int32")
    return frame, classes


def split_rows(frame: pd.DataFrame, split: str, source: str | Path = "split manifest") -> pd.DataFrame:
    """The rows of one split; an empty split is an error that names the split."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise PipelineError(f"{source}: the {split!r} split has no rows")
    return rows


def image_paths(frame: pd.DataFrame, images_root: str | Path) -> list[str]:
    root = Path(images_root)
    return [str(root / name) for name in frame["filename"]]


def face_boxes(frame: pd.DataFrame) -> np.ndarray:
    """Face boxes as float32 ``(x, y, width, height)``; rows without a box get width -1."""
    boxes = np.full((len(frame), 4), -1.0, dtype="float32")
    if all(column in frame.columns for column in FACE_BOX_COLUMNS):
        usable = has_face_box(frame)
        boxes[usable] = frame.loc[usable, list(FACE_BOX_COLUMNS)].to_numpy(dtype="float32")
    return boxes
