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
"""

from __future__ import annotations

import csv
import dataclasses
import json
import operator
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import files, image_checks, manifest
from emotion_classifier.classes import AFFECTNET_CODE_TO_CLASS, CANONICAL_CLASSES, canonical_class
from emotion_classifier.cli import PipelineError
from emotion_classifier.config import Config

AFFECTNET_CSV_COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)

# Label list of the original release -> the split the source gives its rows.
AFFECTNET_CSV_FILES: dict[str, str] = {"training.csv": "train", "validation.csv": "validation"}

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

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

# Tried in this order; latin-1 decodes any bytes, so reading never fails on encoding.
CSV_ENCODINGS: tuple[str, ...] = ("utf-8", "utf-8-sig", "cp1252", "latin-1")

# Values of valence and arousal outside [-1, 1] that mean "not annotated" rather than an error.
NOT_ANNOTATED_MARKER = -2.0
# Processes that read and check images (0: one per CPU core), and the largest image accepted,
# in pixels: larger ones are rejected as possible decompression bombs.
WORKERS = 0
MAX_IMAGE_PIXELS = 100_000_000

LANDMARK_COUNT = 68

NOTE_COLUMNS: tuple[str, ...] = ("filename", "source_file", "note")

# The AffectNet npy annotation files of one image, by the key used in this module.
_NPY_SUFFIXES: dict[str, str] = {"expression": "exp", "valence": "val", "arousal": "aro", "landmarks": "lnd"}
_NPY_NAME = re.compile(r"^(?P<id>.+)_(?P<kind>exp|val|aro|lnd)\.npy$")


@dataclasses.dataclass
class LabelTable:
    """Rows read from one layout: accepted rows, rejected rows and notes on accepted rows.

    ``rows`` has the manifest columns; ``rejected`` has ``manifest.REJECTED_COLUMNS``;
    ``notes`` has ``NOTE_COLUMNS``. ``rows_read`` counts every record the source holds.
    ``encodings`` names the text encoding of each label file that was not UTF-8.
    """

    rows: pd.DataFrame
    rejected: pd.DataFrame
    notes: pd.DataFrame
    rows_read: int
    encodings: dict[str, str] = dataclasses.field(default_factory=dict)


def _empty_rejected() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in manifest.REJECTED_COLUMNS})


def _empty_notes() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in NOTE_COLUMNS})


def _concat(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else empty


def _first_reason_wins(reasons: np.ndarray, mask: np.ndarray, text: str | pd.Series) -> None:
    """Set ``text`` as the reason of the rows in ``mask`` that have no reason yet."""
    target = np.asarray(mask, dtype=bool) & (reasons == "")
    if isinstance(text, pd.Series):
        reasons[target] = text.to_numpy(dtype=object)[target]
    else:
        reasons[target] = text


# ----------------------------------------------------------------------------------------------
# Layout detection


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
                found_npy = any(_NPY_NAME.match(name) for name in file_names)
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
# Shared validation of AffectNet annotations (both releases)


def _number(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype("float64")


def validate_annotations(raw: pd.DataFrame, with_face_box: bool) -> LabelTable:
    """Check AffectNet annotations given as text columns; split them into accepted and rejected.

    ``raw`` has text columns ``filename``, ``expression``, ``valence``, ``arousal``,
    ``landmarks``, ``source_split``, ``source_file`` (and the face box columns when
    ``with_face_box``), stripped of surrounding spaces; a missing value is an empty string. A row may already carry a reason in
    an optional ``problem`` column (a problem found while reading it). The first failed check
    gives a rejected row its reason.
    """
    count = len(raw)
    reasons = np.full(count, "", dtype=object)
    if "problem" in raw.columns:
        _first_reason_wins(reasons, raw["problem"].to_numpy() != "", raw["problem"])
    text = {column: raw[column] for column in raw.columns}
    all_empty = np.ones(count, dtype=bool)
    for column in ("filename", "expression", "valence", "arousal", "landmarks"):
        all_empty &= (text[column] == "").to_numpy()
    _first_reason_wins(reasons, all_empty, "empty line")
    _first_reason_wins(reasons, (text["filename"] == "").to_numpy(), "missing value: image path")

    expression_text = text["expression"]
    expression = _number(expression_text)
    _first_reason_wins(reasons, (expression_text == "").to_numpy(), "missing value: expression")
    _first_reason_wins(reasons, ~np.isfinite(expression.to_numpy()),
                       "expression is not a number: '" + expression_text + "'")
    valid_code = (expression == expression.round()) & expression.between(0, len(CANONICAL_CLASSES) - 1)
    _first_reason_wins(reasons, ~valid_code.to_numpy(),
                       "expression is not a code 0..10: " + expression_text)

    box_columns = manifest.FACE_BOX_COLUMNS if with_face_box else ()
    box_values = {}
    for column in box_columns:
        box_values[column] = _number(text[column])
        _first_reason_wins(reasons, (text[column] == "").to_numpy(), f"missing value: {column}")
        _first_reason_wins(reasons, ~np.isfinite(box_values[column].to_numpy()),
                           f"{column} is not a number: '" + text[column] + "'")
    if with_face_box:
        zero_size = ~((box_values["face_width"] > 0) & (box_values["face_height"] > 0)).to_numpy()
        _first_reason_wins(reasons, zero_size,
                           "face box has zero or negative size: " + text["face_width"] + "x" + text["face_height"])

    affect_values = {}
    for column in ("valence", "arousal"):
        values = _number(text[column])
        _first_reason_wins(reasons, (text[column] == "").to_numpy(), f"missing value: {column}")
        _first_reason_wins(reasons, ~np.isfinite(values.to_numpy()),
                           f"{column} is not a number: '" + text[column] + "'")
        in_range = values.between(-1.0, 1.0).to_numpy()
        not_annotated = (values == NOT_ANNOTATED_MARKER).to_numpy()
        _first_reason_wins(reasons, ~(in_range | not_annotated),
                           f"{column} outside [-1, 1] and not the -2 'not annotated' marker: " + text[column])
        affect_values[column] = values.where(in_range, np.nan)

    accepted = reasons == ""
    rejected = pd.DataFrame({
        "filename": text["filename"].to_numpy(dtype=object)[~accepted],
        "source_file": raw["source_file"].to_numpy(dtype=object)[~accepted],
        "reason": reasons[~accepted],
    })

    # Landmarks are optional: a malformed list is cleared and noted, the row is kept. Counting
    # separators is a cheap, vectorised test of "68 x;y pairs" on a million long strings.
    landmarks = text["landmarks"][accepted]
    expected_separators = 2 * LANDMARK_COUNT - 1
    # ``str.count`` would run a regular expression per row; the plain string method is faster.
    separators = landmarks.map(operator.methodcaller("count", ";"))
    malformed = (landmarks != "") & (separators != expected_separators)
    notes = pd.DataFrame({
        "filename": text["filename"][accepted][malformed].to_numpy(dtype=object),
        "source_file": raw["source_file"][accepted][malformed].to_numpy(dtype=object),
        "note": f"landmarks malformed (expected {LANDMARK_COUNT} x;y pairs), left empty",
    })
    landmarks = landmarks.where(~malformed, "")

    codes = expression[accepted].astype("int64")
    rows = pd.DataFrame({
        "filename": _normalise_filenames(text["filename"][accepted]).to_numpy(dtype=object),
        "label": codes.map(AFFECTNET_CODE_TO_CLASS).to_numpy(dtype=object),
        "label_id": codes.to_numpy(dtype="int64"),
        "source_label": expression_text[accepted].to_numpy(dtype=object),
        "source_split": raw["source_split"][accepted].to_numpy(dtype=object),
        "source_file": raw["source_file"][accepted].to_numpy(dtype=object),
    })
    for column in manifest.FACE_BOX_COLUMNS:
        rows[column] = box_values[column][accepted].to_numpy() if with_face_box else np.nan
    rows["valence"] = affect_values["valence"][accepted].to_numpy()
    rows["arousal"] = affect_values["arousal"][accepted].to_numpy()
    rows["landmarks"] = landmarks.to_numpy(dtype=object)
    rows["image_width"] = np.nan
    rows["image_height"] = np.nan
    return LabelTable(rows=rows[list(manifest.MANIFEST_COLUMNS)], rejected=rejected, notes=notes,
                      rows_read=count)


def _normalise_filenames(filenames: pd.Series) -> pd.Series:
    """Forward slashes and no leading ``./`` or ``/``: paths relative to the images root."""
    return filenames.str.replace("\\", "/", regex=False).str.replace(r"^(\./|/)+", "", regex=True)


# ----------------------------------------------------------------------------------------------
# Layout 1: AffectNet original release (training.csv, validation.csv)


def _read_csv_text(path: Path) -> tuple[pd.DataFrame, list[int], list[str], str]:
    """Read every field as text, trying encodings in turn.

    Returns the table, the file line of each row, the (line, message) of lines with too many
    fields (left out by the parser) and the encoding that worked. The AffectNet lists never quote
    fields (landmarks are joined with ';'), so quoting is off: every physical line is one record,
    which keeps line numbers exact even when a field holds a stray quote.
    """
    last_error: Exception | None = None
    for encoding in CSV_ENCODINGS:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                table = pd.read_csv(
                    path, dtype=object, na_filter=False, keep_default_na=False, index_col=False,
                    quoting=csv.QUOTE_NONE, skip_blank_lines=False, on_bad_lines="warn",
                    encoding=encoding, encoding_errors="strict",
                )
        except UnicodeDecodeError as error:
            last_error = error
            continue
        except pd.errors.EmptyDataError:
            return pd.DataFrame(), [], [], encoding
        except pd.errors.ParserError as error:
            raise PipelineError(f"{path}: cannot be read as CSV: {error}") from error
        skipped: dict[int, str] = {}
        for warning in caught:
            for match in re.finditer(r"line (\d+): (expected \d+ fields, saw \d+)", str(warning.message)):
                skipped[int(match.group(1))] = match.group(2)
        skipped_lines = np.array(sorted(skipped), dtype="int64")
        # Row k sits on line k + 2 (line 1 is the header) plus the skipped lines before it.
        kept_before_skip = skipped_lines - 2 - np.arange(len(skipped_lines))
        row_numbers = np.arange(len(table), dtype="int64")
        lines = row_numbers + 2 + np.searchsorted(kept_before_skip, row_numbers, side="right")
        return table, lines.tolist(), [(line, skipped[line]) for line in skipped_lines.tolist()], encoding
    raise PipelineError(f"{path}: cannot be decoded: {last_error}")  # pragma: no cover - latin-1 never fails


def read_affectnet_csv(path: str | Path, source_name: str, source_split: str) -> LabelTable:
    """Read one AffectNet label list; ``source_name`` (its path under the labels root) and the
    line number name every rejected row, as in ``training.csv:12``."""
    path = Path(path)
    table, lines, skipped, encoding = _read_csv_text(path)
    table.columns = [str(column).strip().lstrip("\ufeff").strip().strip('"') for column in table.columns]
    missing = [column for column in AFFECTNET_CSV_COLUMNS if column not in table.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {', '.join(missing)}; an AffectNet label list needs "
            f"{', '.join(AFFECTNET_CSV_COLUMNS)} (found: {', '.join(map(str, table.columns)) or 'no header'})"
        )
    line_text = pd.Series(lines, dtype="int64").astype(str)

    def field(column: str) -> pd.Series:
        # One pass removes both surrounding spaces and the quotes quoting-off reading leaves.
        return table[column].str.strip(' \t"').reset_index(drop=True)

    raw = pd.DataFrame({
        "filename": field("subDirectory_filePath"),
        "expression": field("expression"),
        "valence": field("valence"),
        "arousal": field("arousal"),
        "landmarks": field("facial_landmarks"),
        "source_split": source_split,
        "source_file": (source_name + ":" + line_text).to_numpy(dtype=object),
    })
    for column in manifest.FACE_BOX_COLUMNS:
        raw[column] = field(column)
    result = validate_annotations(raw, with_face_box=True)
    too_many_fields = pd.DataFrame({
        "filename": "",
        "source_file": [f"{source_name}:{line}" for line, _ in skipped],
        "reason": [f"wrong number of fields: {message}" for _, message in skipped],
    })
    result.rejected = _concat([result.rejected, too_many_fields], _empty_rejected())
    result.rows_read += len(skipped)
    if encoding != "utf-8":
        result.encodings[source_name] = encoding
    return result


def read_affectnet_csv_layout(labels_root: Path) -> LabelTable:
    """Read every training.csv and validation.csv under the labels root."""
    label_files = sorted(
        path for path in labels_root.rglob("*.csv") if path.name.lower() in AFFECTNET_CSV_FILES
    )
    if not label_files:
        raise PipelineError(f"layout affectnet_csv: no training.csv or validation.csv under {labels_root}")
    tables = [
        read_affectnet_csv(path, path.relative_to(labels_root).as_posix(), AFFECTNET_CSV_FILES[path.name.lower()])
        for path in label_files
    ]
    return _combine(tables)


def _combine(tables: list[LabelTable]) -> LabelTable:
    encodings: dict[str, str] = {}
    for table in tables:
        encodings.update(table.encodings)
    return LabelTable(
        rows=_concat([table.rows for table in tables], manifest.empty_manifest()),
        rejected=_concat([table.rejected for table in tables], _empty_rejected()),
        notes=_concat([table.notes for table in tables], _empty_notes()),
        rows_read=sum(table.rows_read for table in tables),
        encodings=encodings,
    )


# ----------------------------------------------------------------------------------------------
# Layout 2: AffectNet later release (<set>/annotations/<id>_{exp,val,aro,lnd}.npy)


def _split_of_set_folder(name: str) -> str:
    lower = name.lower()
    if "train" in lower:
        return "train"
    if "val" in lower:
        return "validation"
    if "test" in lower:
        return "test"
    return ""


def _npy_scalar_text(path: str) -> str:
    """The single value of an annotation file as text; raise ValueError if it holds several."""
    values = np.asarray(files.load_npy(path)).reshape(-1)
    if values.size != 1:
        raise ValueError(f"holds {values.size} values, expected 1")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _npy_landmarks_text(path: str) -> str:
    values = np.asarray(files.load_npy(path)).reshape(-1).astype("float64")
    if values.size != 2 * LANDMARK_COUNT or not np.isfinite(values).all():
        raise ValueError(f"holds {values.size} values, expected {2 * LANDMARK_COUNT} numbers")
    return ";".join(f"{value:g}" for value in values)


def _read_npy_chunk(arguments: tuple[str, list[str]]) -> list[tuple[str, str, str, str, str, str]]:
    """Read the annotations of some ids: (expression, valence, arousal, landmarks, problem, note)."""
    folder, ids = arguments
    present = set(os.listdir(folder))
    results = []
    for image_id in ids:
        values = {}
        problem = ""
        notes = []
        for key, suffix in _NPY_SUFFIXES.items():
            name = f"{image_id}_{suffix}.npy"
            if name not in present:
                if key == "expression":
                    problem = problem or f"missing annotation file: {name}"
                elif key in ("valence", "arousal"):
                    notes.append(f"{name} missing, {key} not annotated")
                values[key] = str(NOT_ANNOTATED_MARKER) if key != "landmarks" else ""
                continue
            try:
                reader = _npy_landmarks_text if key == "landmarks" else _npy_scalar_text
                values[key] = reader(os.path.join(folder, name))
            except Exception as error:  # noqa: BLE001 - any unreadable file is reported, never raised
                if key == "landmarks":
                    notes.append(f"landmarks unreadable ({name}), left empty")
                    values[key] = ""
                else:
                    problem = problem or f"unreadable annotation file: {name}: {error}"
                    values[key] = ""
        results.append((values["expression"], values["valence"], values["arousal"],
                        values["landmarks"], problem, "; ".join(notes)))
    return results


def read_affectnet_npy_layout(labels_root: Path, images_root: Path, workers: int = 0,
                              chunk_size: int = 512, progress: bool = True) -> LabelTable:
    """Read every ``annotations`` folder under the labels root with its ``images`` folder."""
    annotation_folders = sorted(path for path in labels_root.rglob("annotations") if path.is_dir())
    if not annotation_folders:
        raise PipelineError(f"layout affectnet_npy: no annotations folder under {labels_root}")
    tables = []
    for folder in annotation_folders:
        set_relative = folder.parent.relative_to(labels_root).as_posix()
        set_relative = "" if set_relative == "." else set_relative
        source_split = _split_of_set_folder(folder.parent.name)
        ids = sorted({match.group("id") for name in os.listdir(folder) if (match := _NPY_NAME.match(name))})
        image_folder = images_root / set_relative / "images"
        images_by_id: dict[str, str] = {}
        if image_folder.is_dir():
            for entry in os.scandir(image_folder):
                stem, extension = os.path.splitext(entry.name)
                if extension.lower() in IMAGE_EXTENSIONS:
                    images_by_id.setdefault(stem, entry.name)
        chunks = [(str(folder), ids[start:start + chunk_size]) for start in range(0, len(ids), chunk_size)]
        values = image_checks.map_in_processes(
            _read_npy_chunk, chunks, workers, f"reading {set_relative or 'annotations'}",
            sizes=[len(chunk[1]) for chunk in chunks], progress=progress,
        )
        columns = list(zip(*values)) if values else [()] * 6
        prefix = f"{set_relative}/" if set_relative else ""
        image_names = pd.Series([images_by_id.get(image_id, "") for image_id in ids], dtype=object)
        raw = pd.DataFrame({
            "filename": (prefix + "images/" + image_names).where(image_names != "", ""),
            "expression": pd.Series(columns[0], dtype=object),
            "valence": pd.Series(columns[1], dtype=object),
            "arousal": pd.Series(columns[2], dtype=object),
            "landmarks": pd.Series(columns[3], dtype=object),
            "problem": pd.Series(columns[4], dtype=object),
            "source_split": source_split,
            "source_file": [f"{prefix}annotations/{image_id}_exp.npy" for image_id in ids],
        })
        no_image = (image_names == "") & (raw["problem"] == "")
        raw.loc[no_image, "problem"] = "missing file: no image for this annotation in " + (prefix + "images/")
        raw.loc[no_image, "filename"] = [f"{prefix}images/{image_id}.jpg" for image_id in np.array(ids)[no_image.to_numpy()]]
        table = validate_annotations(raw, with_face_box=False)
        read_notes = pd.Series(columns[5], dtype=object)
        noted = (read_notes != "").to_numpy()
        table.notes = _concat([table.notes, pd.DataFrame({
            "filename": raw["filename"][noted].to_numpy(dtype=object),
            "source_file": raw["source_file"][noted].to_numpy(dtype=object),
            "note": read_notes[noted].to_numpy(dtype=object),
        })], _empty_notes())
        # Images that no annotation describes are listed too: nothing the source holds is lost.
        annotated = set(ids)
        unannotated = sorted(name for stem, name in images_by_id.items() if stem not in annotated)
        table.rejected = _concat([table.rejected, pd.DataFrame({
            "filename": [f"{prefix}images/{name}" for name in unannotated],
            "source_file": f"{prefix}images",
            "reason": "image without annotation",
        })], _empty_rejected())
        table.rows_read += len(unannotated)
        tables.append(table)
    return _combine(tables)


# ----------------------------------------------------------------------------------------------
# Layout 3: a folder per class, optionally inside split folders


def read_class_folders(images_root: Path) -> LabelTable:
    """One row per image file under ``[split/]class/``; unknown folders and stray files rejected."""
    if not images_root.is_dir():
        raise PipelineError(f"layout class_folders: images root {images_root} does not exist")
    relative_paths: list[str] = []
    for directory, folder_names, file_names in os.walk(images_root):
        folder_names.sort()
        relative_directory = Path(directory).relative_to(images_root).as_posix()
        prefix = "" if relative_directory == "." else relative_directory + "/"
        relative_paths.extend(prefix + name for name in sorted(file_names))
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
    _first_reason_wins(reasons, ~extension.isin(list(IMAGE_EXTENSIONS)).to_numpy(),
                       "not an image file extension: '" + extension + "'")
    outside_class = (depth < 2) | (first_is_split & (depth < 3))
    _first_reason_wins(reasons, outside_class.to_numpy(), "image not inside a class folder")
    _first_reason_wins(reasons, label.isna().to_numpy(), "unknown class folder: " + class_folder)
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
    for column in (*manifest.FACE_BOX_COLUMNS, "valence", "arousal"):
        rows[column] = np.nan
    rows["landmarks"] = ""
    rows["image_width"] = np.nan
    rows["image_height"] = np.nan
    return LabelTable(rows=rows[list(manifest.MANIFEST_COLUMNS)], rejected=rejected,
                      notes=_empty_notes(), rows_read=len(paths))


# ----------------------------------------------------------------------------------------------
# Steps applied to every layout


def drop_duplicates(table: LabelTable) -> LabelTable:
    """Keep the first row of each image; later rows are rejected, naming the row that was kept."""
    rows = table.rows
    duplicated = rows["filename"].duplicated(keep="first").to_numpy()
    if not duplicated.any():
        return table
    first_source = rows.groupby("filename", sort=False)["source_file"].transform("first")
    rejected = pd.DataFrame({
        "filename": rows["filename"][duplicated].to_numpy(dtype=object),
        "source_file": rows["source_file"][duplicated].to_numpy(dtype=object),
        "reason": ("duplicate row: first kept at " + first_source[duplicated]).to_numpy(dtype=object),
    })
    return dataclasses.replace(
        table,
        rows=rows[~duplicated].reset_index(drop=True),
        rejected=_concat([table.rejected, rejected], _empty_rejected()),
    )


def apply_image_checks(table: LabelTable, images_root: Path, max_pixels: int, workers: int,
                       progress: bool = True) -> LabelTable:
    """Open every image; reject unusable ones, record sizes, note conversions."""
    rows = table.rows
    results = image_checks.check_images(
        (images_root / filename for filename in rows["filename"]), max_pixels, workers, progress=progress
    )
    ok = np.array([result.ok for result in results], dtype=bool)
    reasons = np.array([result.reason for result in results], dtype=object)
    image_notes = np.array([result.note for result in results], dtype=object)
    rows = rows.copy()
    rows["image_width"] = np.array([result.width for result in results], dtype="float64")
    rows["image_height"] = np.array([result.height for result in results], dtype="float64")
    rejected = pd.DataFrame({
        "filename": rows["filename"][~ok].to_numpy(dtype=object),
        "source_file": rows["source_file"][~ok].to_numpy(dtype=object),
        "reason": reasons[~ok],
    })
    noted = ok & (image_notes != "")
    notes = pd.DataFrame({
        "filename": rows["filename"][noted].to_numpy(dtype=object),
        "source_file": rows["source_file"][noted].to_numpy(dtype=object),
        "note": image_notes[noted],
    })
    return dataclasses.replace(
        table,
        rows=rows[ok].reset_index(drop=True),
        rejected=_concat([table.rejected, rejected], _empty_rejected()),
        notes=_concat([table.notes, notes], _empty_notes()),
    )


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
        rejected=_concat([table.rejected, rejected], _empty_rejected()),
        notes=_concat([table.notes, notes], _empty_notes()),
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
    table = drop_duplicates(table)
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
