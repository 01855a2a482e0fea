"""Every supported label layout into one manifest (the ``get_filenames_and_labels.py`` stage).

Layouts (``[labels] layout``, detected when "auto"):

- ``affectnet_csv``: AffectNet's original release, ``training.csv`` and ``validation.csv``
  anywhere under the labels root, one row per image with face box, landmarks, expression,
  valence and arousal;
- ``affectnet_npy``: AffectNet's later release, ``<set>/annotations/<id>_{exp,val,aro,lnd}.npy``
  under the labels root and ``<set>/images/<id>.jpg`` under the images root;
- ``class_folders``: a folder per class under the images root, optionally inside ``train/``,
  ``val/`` (``valid/``, ``validation/``) and ``test/`` folders.

Nothing the source holds is lost: rows that cannot be used are listed with their file and line
in ``rejected_files.csv``; accepted rows that needed a change (a clipped face box, cleared
malformed landmarks, an image the input pipeline will convert) are listed in
``label_notes.csv``. Big tables are checked with vectorised pandas operations, never a Python
loop per row, so a million AffectNet rows take seconds; images are opened in parallel processes.

Nothing outside the dataset is read: every image path must stay inside the images root after
symbolic links are followed, and name a regular file (``image_paths.py``); a symbolic link to a
folder inside a class folder tree is listed as rejected, never followed. AffectNet's label files
are read by ``affectnet_labels.py``; the table they fill is ``label_table.LabelTable``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import files, image_checks, image_paths, manifest
from emotion_classifier.affectnet_labels import (
    AFFECTNET_CSV_FILES,
    NPY_NAME,
    read_affectnet_csv_layout,
    read_affectnet_npy_layout,
)
from emotion_classifier.classes import CANONICAL_CLASSES, canonical_class
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config
from emotion_classifier.label_table import (
    IMAGE_EXTENSIONS,
    NOTE_COLUMNS,
    LabelTable,
    concat,
    empty_notes,
    empty_rejected,
    first_reason_wins,
    listed,
    reject_rows,
)

# Folder names that mean a split rather than a class, and the source split they stand for.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}

# ----------------------------------------------------------------------------------------------
# Layout detection

# Processes that read and check images (0: one per CPU core), and the largest image accepted,
# in pixels: larger ones are rejected as possible decompression bombs.
WORKERS = 0
MAX_IMAGE_PIXELS = 100_000_000


def detect_layout(labels_root: Path, images_root: Path) -> str:
    """Name the layout found under the two roots; raise PipelineError when none is recognised."""
    found_npy = False
    if labels_root.is_dir():
        for directory, folder_names, file_names in os.walk(labels_root):
            folder_names.sort()
            lower_names = {name.lower() for name in file_names}
            if lower_names & set(AFFECTNET_CSV_FILES):
                return "affectnet_csv"
            if not found_npy and Path(directory).name == "annotations":
                found_npy = any(NPY_NAME.match(name) for name in file_names)
    if found_npy:
        return "affectnet_npy"
    if images_root.is_dir() and any(entry.is_dir() for entry in os.scandir(images_root)):
        return "class_folders"
    raise PipelineError(
        f"no label layout found: no training.csv/validation.csv or annotations/*_exp.npy under "
        f"{labels_root}, and no class folders under {images_root}; run consolidate_data.py first "
        "or set [labels] layout"
    )


# ----------------------------------------------------------------------------------------------
# Layout 3: a folder per class, optionally inside split folders


def _list_tree(images_root: Path) -> tuple[list[str], list[str]]:
    """Every file under the root (relative paths), and the symbolic links to folders found there.

    Links to folders are not followed (``os.walk``'s default): they are listed so that the
    folder they stand for is reported rather than silently left out.
    """
    relative_paths: list[str] = []
    linked_folders: list[str] = []
    for directory, folder_names, file_names in os.walk(images_root):
        folder_names.sort()
        relative_directory = Path(directory).relative_to(images_root).as_posix()
        prefix = "" if relative_directory == "." else relative_directory + "/"
        relative_paths.extend(prefix + name for name in sorted(file_names))
        linked_folders.extend(prefix + name for name in folder_names if os.path.islink(os.path.join(directory, name)))
    return relative_paths, linked_folders


def read_class_folders(images_root: Path) -> LabelTable:
    """One row per image file under ``[split/]class/``; unknown folders and stray files rejected."""
    if not images_root.is_dir():
        raise PipelineError(f"layout class_folders: images root {images_root} does not exist")
    relative_paths, linked_folders = _list_tree(images_root)
    paths = pd.Series(relative_paths, dtype=object)
    parts = paths.str.split("/")
    depth = parts.str.len()
    first = parts.str[0].fillna("")
    second = parts.str[1].fillna("")
    first_is_split = first.str.lower().isin(list(SPLIT_FOLDERS))
    in_split = first_is_split & (depth >= 3)
    class_folder = second.where(in_split, first)
    source_split = first.str.lower().map(SPLIT_FOLDERS).where(in_split, "").fillna("")
    source_folder = (first + "/" + second).where(in_split, first)
    names = pd.Series(class_folder.unique(), dtype=object)
    mapping = {name: canonical_class(name) for name in names}
    label = class_folder.map(mapping)
    extension = paths.str.extract(r"(\.[^./]+)$", expand=False).fillna("").str.lower()

    reasons = np.full(len(paths), "", dtype=object)
    first_reason_wins(reasons, ~extension.isin(list(IMAGE_EXTENSIONS)).to_numpy(),
                       "not an image file extension: '" + extension + "'")
    outside_class = (depth < 2) | (first_is_split & (depth < 3))
    first_reason_wins(reasons, outside_class.to_numpy(), "image not inside a class folder")
    first_reason_wins(reasons, label.isna().to_numpy(), "unknown class folder: " + class_folder)
    accepted = reasons == ""
    rejected = pd.DataFrame({
        "filename": paths[~accepted].to_numpy(dtype=object),
        "source_file": source_folder.where(~outside_class, ".")[~accepted].to_numpy(dtype=object),
        "reason": reasons[~accepted],
    })
    kept_labels = label[accepted]
    rows = pd.DataFrame({
        "filename": paths[accepted].to_numpy(dtype=object),
        "label": kept_labels.to_numpy(dtype=object),
        "label_id": kept_labels.map(CANONICAL_CLASSES.index).to_numpy(dtype="int64"),
        "source_label": class_folder[accepted].to_numpy(dtype=object),
        "source_split": source_split[accepted].to_numpy(dtype=object),
        "source_file": source_folder[accepted].to_numpy(dtype=object),
    })
    for column in (*manifest.FACE_BOX_COLUMNS, "valence", "arousal", "image_width", "image_height"):
        rows[column] = np.nan
    rows["affect_annotation"] = ""
    rows["landmarks"] = ""
    linked = pd.DataFrame({"filename": linked_folders, "source_file": linked_folders,
                           "reason": "symbolic link to a folder, not followed"})
    return LabelTable(rows=rows[list(manifest.MANIFEST_COLUMNS)], rejected=concat([rejected, linked], empty_rejected()),
                      notes=empty_notes(), rows_read=len(paths) + len(linked_folders))


# ----------------------------------------------------------------------------------------------
# Steps applied to every layout


def drop_duplicates(table: LabelTable) -> LabelTable:
    """Keep the first row of each image; later rows are rejected, naming the row that was kept."""
    rows = table.rows
    duplicated = rows["filename"].duplicated(keep="first").to_numpy()
    if not duplicated.any():
        return table
    first_source = rows.groupby("filename", sort=False)["source_file"].transform("first")
    reasons = np.where(duplicated, ("duplicate row: first kept at " + first_source).to_numpy(dtype=object), "")
    return reject_rows(table, reasons.astype(object))


def reject_unsafe_paths(table: LabelTable, images_root: Path) -> LabelTable:
    """Reject paths that lead outside the images root or name no regular file (never opened)."""
    return reject_rows(table, image_paths.path_problems(images_root, table.rows["filename"]))


def apply_image_checks(table: LabelTable, images_root: Path, max_pixels: int, workers: int,
                       progress: bool = True) -> LabelTable:
    """Open every image; reject unusable ones, record sizes, note conversions."""
    rows = table.rows.copy()
    results = image_checks.check_images(
        (images_root / filename for filename in rows["filename"]), max_pixels, workers, progress=progress
    )
    ok = np.array([result.ok for result in results], dtype=bool)
    reasons = np.array([result.reason for result in results], dtype=object)
    image_notes = np.array([result.note for result in results], dtype=object)
    rows["image_width"] = np.array([result.width for result in results], dtype="float64")
    rows["image_height"] = np.array([result.height for result in results], dtype="float64")
    notes = listed(rows, ok & (image_notes != ""), "note", image_notes)
    return reject_rows(table, np.where(ok, "", reasons).astype(object), rows=rows, notes=notes)


def fit_face_boxes(table: LabelTable) -> LabelTable:
    """Clip face boxes partly outside their image (noted); reject boxes wholly outside it.

    Without image sizes (image checks off) only the image's top and left edges are known.
    """
    rows = table.rows.copy()
    x, y, width, height = (rows[column].to_numpy(dtype="float64") for column in manifest.FACE_BOX_COLUMNS)
    image_width = rows["image_width"].to_numpy(dtype="float64")
    image_height = rows["image_height"].to_numpy(dtype="float64")
    has_box = manifest.has_face_box(rows)
    right, bottom = x + width, y + height
    size_known = np.isfinite(image_width) & np.isfinite(image_height)
    with np.errstate(invalid="ignore"):
        outside = has_box & (
            (right <= 0) | (bottom <= 0) | (size_known & ((x >= image_width) | (y >= image_height)))
        )
        clipped_x, clipped_y = np.maximum(x, 0.0), np.maximum(y, 0.0)
        clipped_right = np.where(size_known, np.minimum(right, image_width), right)
        clipped_bottom = np.where(size_known, np.minimum(bottom, image_height), bottom)
        clipped = has_box & ~outside & (
            (clipped_x != x) | (clipped_y != y) | (clipped_right != right) | (clipped_bottom != bottom)
        )
    rows.loc[clipped, "face_x"] = clipped_x[clipped]
    rows.loc[clipped, "face_y"] = clipped_y[clipped]
    rows.loc[clipped, "face_width"] = (clipped_right - clipped_x)[clipped]
    rows.loc[clipped, "face_height"] = (clipped_bottom - clipped_y)[clipped]

    def box_text(mask: np.ndarray) -> pd.Series:
        return pd.Series(
            [f"({a:g}, {b:g}, {c:g}x{d:g})" for a, b, c, d in zip(x[mask], y[mask], width[mask], height[mask])],
            dtype=object,
        )

    size_text = pd.Series(
        [f"{w:g}x{h:g}" if np.isfinite(w) else "unknown size" for w, h in zip(image_width[outside], image_height[outside])],
        dtype=object,
    )
    rejected = pd.DataFrame({
        "filename": rows["filename"][outside].to_numpy(dtype=object),
        "source_file": rows["source_file"][outside].to_numpy(dtype=object),
        "reason": ("face box wholly outside the image: box " + box_text(outside) + " in image " + size_text).to_numpy(dtype=object),
    })
    notes = pd.DataFrame({
        "filename": rows["filename"][clipped].to_numpy(dtype=object),
        "source_file": rows["source_file"][clipped].to_numpy(dtype=object),
        "note": ("face box partly outside the image, clipped: was " + box_text(clipped)).to_numpy(dtype=object),
    })
    return dataclasses.replace(
        table,
        rows=rows[~outside].reset_index(drop=True),
        rejected=concat([table.rejected, rejected], empty_rejected()),
        notes=concat([table.notes, notes], empty_notes()),
    )


def reason_kind(reasons: pd.Series) -> pd.Series:
    """The general kind of each reason or note: the text before its first ':' or ' ('."""
    return reasons.astype(str).str.split(r":| \(", n=1, regex=True).str[0].str.strip()


def build_manifest(config: Config, progress: bool = True) -> tuple[LabelTable, str]:
    """Read the configured layout and apply every check; return the table and the layout used."""
    paths, settings = config.paths, config.labels
    layout = settings.layout
    if layout == "auto":
        layout = detect_layout(paths.labels_root, paths.images_root)
    if layout == "affectnet_csv":
        table = read_affectnet_csv_layout(paths.labels_root)
    elif layout == "affectnet_npy":
        table = read_affectnet_npy_layout(paths.labels_root, paths.images_root, WORKERS, progress=progress)
    elif layout == "class_folders":
        table = read_class_folders(paths.images_root)
    else:
        raise PipelineError(f"[labels] layout: unknown layout {layout!r}")
    table = reject_unsafe_paths(drop_duplicates(table), paths.images_root)
    if settings.check_images and len(table.rows):
        table = apply_image_checks(table, paths.images_root, MAX_IMAGE_PIXELS, WORKERS, progress)
    table = fit_face_boxes(table)
    return table, layout


def summarise(table: LabelTable, layout: str, config: Config) -> dict:
    """The stage summary: what was read, kept, rejected and noted, by class and split."""
    rows = table.rows
    per_class = rows["label"].value_counts()
    splits = rows["source_split"].replace("", "(none)").value_counts()
    return {
        "layout": layout,
        "labels_root": str(config.paths.labels_root),
        "images_root": str(config.paths.images_root),
        "image_checks": config.labels.check_images,
        "rows_read": int(table.rows_read),
        "rows_accepted": int(len(rows)),
        "rows_rejected": int(len(table.rejected)),
        "per_class": {name: int(per_class[name]) for name in CANONICAL_CLASSES if name in per_class},
        "per_source_split": {name: int(count) for name, count in splits.sort_index().items()},
        "rejected_by_reason": {
            name: int(count) for name, count in reason_kind(table.rejected["reason"]).value_counts().items()
        },
        "notes_by_kind": {
            name: int(count) for name, count in reason_kind(table.notes["note"]).value_counts().items()
        },
        "label_file_encodings": table.encodings,
    }


def as_plain_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns as plain Python objects: pandas writes those to CSV about a third faster."""
    text_columns = [column for column in frame.columns if frame[column].dtype.kind not in "biuf"]
    return frame.astype({column: object for column in text_columns})


def output_paths(config: Config) -> dict[str, Path]:
    """Every file this stage writes, by name."""
    processed = config.paths.processed
    return {
        "manifest": config.paths.manifest,
        "filenames": processed / "filenames.npy",
        "labels": processed / "labels.npy",
        "rejected": processed / "rejected_files.csv",
        "notes": processed / "label_notes.csv",
        "summary": config.paths.reports / "labels_summary.json",
    }


def run(config: Config, force: bool = False) -> int:
    """Build the manifest and its hand-off files; do nothing when inputs and settings are unchanged."""
    paths = config.paths
    outputs = output_paths(config)
    # The number of worker processes changes how fast, not what, so it is not a stage input.
    settings = {**dataclasses.asdict(config.labels), "max_image_pixels": MAX_IMAGE_PIXELS}
    stamp = files.StageStamp(paths.processed / ".labels.stamp.json", settings,
                             [paths.labels_root, paths.images_root])
    if not force and stamp.is_current():
        print(f"manifest up to date: {outputs['manifest']} (use --force to rebuild)")
        return 0
    table, layout = build_manifest(config)
    summary = summarise(table, layout, config)
    files.save_csv(outputs["rejected"], table.rejected[list(manifest.REJECTED_COLUMNS)])
    files.save_csv(outputs["notes"], table.notes[list(NOTE_COLUMNS)])
    files.write_json(outputs["summary"], summary)
    print(json.dumps(summary, indent=2))
    if not len(table.rows):
        raise PipelineError(
            f"no usable rows: all {table.rows_read} rows were rejected, see {outputs['rejected']}"
        )
    rows = table.rows[list(manifest.MANIFEST_COLUMNS)]
    files.save_csv(outputs["manifest"], as_plain_objects(rows))
    files.save_npy(outputs["filenames"], rows["filename"].to_numpy(dtype=str))
    files.save_npy(outputs["labels"], rows["label_id"].to_numpy(dtype="int64"))
    stamp.record(list(outputs.values()))
    print(f"wrote {outputs['manifest']} ({len(rows)} rows); rejected rows: {outputs['rejected']}")
    return 0
