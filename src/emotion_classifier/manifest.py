"""The manifest: one row per labelled image, the plain CSV that every later stage reads.

Columns (a missing value is empty in the CSV, NaN once read):

- ``filename``: path relative to the images root, with forward slashes;
- ``label``: canonical class name (see ``classes.py``); ``label_id``: its canonical id;
- ``source_label``: the label exactly as the source gave it (an AffectNet code, a folder name);
- ``source_split``: ``train``, ``validation`` or ``test`` as the source defines it, else empty;
- ``source_file``: the label file and line (``training.csv:12``) or folder the row came from;
- ``face_x``, ``face_y``, ``face_width``, ``face_height``: the face box in pixels, if any;
- ``valence``, ``arousal``: in [-1, 1]; empty where the source gives no value;
- ``affect_annotation``: why valence and arousal are (or are not) there: ``annotated`` (both
  given), ``not annotated`` (the source marks them with AffectNet's -2, "not annotated", which it
  uses for its non-face categories; the marked values are empty), or empty when the source has no
  valence and arousal at all (folders per class, an AffectNet npy release without its
  ``_val.npy``/``_aro.npy`` files);
- ``landmarks``: the 68 facial landmarks as ``x1;y1;x2;y2;...``, or empty;
- ``image_width``, ``image_height``: the image's size, read while checking it.

The split stage adds ``split`` (train, valid, test) and ``class_index`` (position in the kept
class list written to ``classes.json``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import files
from emotion_classifier.errors import PipelineError

MANIFEST_COLUMNS: tuple[str, ...] = (
    "filename",
    "label",
    "label_id",
    "source_label",
    "source_split",
    "source_file",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "valence",
    "arousal",
    "affect_annotation",
    "landmarks",
    "image_width",
    "image_height",
)

FACE_BOX_COLUMNS: tuple[str, ...] = ("face_x", "face_y", "face_width", "face_height")

# Columns of the rejected-files report that every stage which drops inputs writes.
REJECTED_COLUMNS: tuple[str, ...] = ("filename", "source_file", "reason")

_TEXT_COLUMNS = ("filename", "label", "source_label", "source_split", "source_file", "affect_annotation",
                 "landmarks")

# Columns a manifest written by an earlier version of the labels stage may lack: read as empty.
_OPTIONAL_COLUMNS = ("affect_annotation",)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest (or split manifest) CSV with the column types fixed.

    Text cells get back the value the dataset gave (``files.save_csv`` quotes those a spreadsheet
    would run as formulas).
    """
    frame = pd.read_csv(
        path,
        dtype={column: "string" for column in _TEXT_COLUMNS} | {"split": "string"},
        keep_default_na=False,
        na_values={column: [""] for column in MANIFEST_COLUMNS if column not in _TEXT_COLUMNS},
    )
    for column in _OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame.insert(min(list(MANIFEST_COLUMNS).index(column), len(frame.columns)), column, "")
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a manifest, missing columns {', '.join(missing)}")
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    text_columns = [*_TEXT_COLUMNS, *(["split"] if "split" in frame.columns else [])]
    return files.restore_csv_columns(frame, text_columns)


def require_labels_stage_manifest(path: Path) -> None:
    """Stop a stage whose input, the manifest of get_filenames_and_labels.py, is missing."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: run get_filenames_and_labels.py first")


def read_labels_stage_manifest(path: Path) -> pd.DataFrame:
    """The manifest written by get_filenames_and_labels.py, for the stages that follow it.

    A missing or malformed file stops the stage with a message saying what to run.
    """
    require_labels_stage_manifest(path)
    try:
        return read_manifest(path)
    except ValueError as error:
        raise PipelineError(str(error)) from error


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=_column_dtype(column)) for column in MANIFEST_COLUMNS})


def _column_dtype(column: str) -> str:
    if column in _TEXT_COLUMNS:
        return "object"
    if column == "label_id":
        return "int64"
    return "float64"


def has_face_box(frame: pd.DataFrame) -> np.ndarray:
    """True for the rows that carry a usable face box."""
    boxes = frame[list(FACE_BOX_COLUMNS)].to_numpy(dtype="float64")
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
