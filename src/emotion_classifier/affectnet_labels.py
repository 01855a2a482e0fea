"""AffectNet's label files, both releases, read into a ``LabelTable``.

- the original release: ``training.csv`` and ``validation.csv``, one row per image with face box,
  landmarks, expression, valence and arousal. The text encoding is found from the file: a
  byte-order mark names UTF-8, UTF-16 or UTF-32 (either byte order); a file without one that holds
  NUL bytes is read as the UTF-16 or UTF-32 its NUL pattern shows; any other file is tried as
  UTF-8, then cp1252, then latin-1 (which decodes any bytes);
- the later release: ``<set>/annotations/<id>_{exp,val,aro,lnd}.npy`` beside ``<set>/images/``.

Valence and arousal: AffectNet gives -2 to mean "not annotated" (its non-face categories). Such a
value is left empty in the manifest and the row's ``affect_annotation`` says ``not annotated``; a
row with both values in [-1, 1] says ``annotated``; a row whose source has no valence or arousal
(an npy release without its ``_val.npy``/``_aro.npy`` files) says nothing (empty). Any other value
outside [-1, 1] rejects the row.
"""

from __future__ import annotations

import csv
import operator
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import files, image_checks, manifest
from emotion_classifier.classes import AFFECTNET_CODE_TO_CLASS, CANONICAL_CLASSES
from emotion_classifier.errors import PipelineError
from emotion_classifier.label_table import (
    IMAGE_EXTENSIONS,
    LabelTable,
    combine,
    concat,
    empty_notes,
    empty_rejected,
    first_reason_wins,
    listed,
)

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

# Tried in this order on a file without a byte-order mark or NUL bytes; latin-1 decodes any
# bytes, so reading such a file never fails on encoding.
CSV_ENCODINGS: tuple[str, ...] = ("utf-8", "cp1252", "latin-1")

# Byte-order marks, longest first: UTF-32's little-endian mark begins with UTF-16's.
BYTE_ORDER_MARKS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)

# Valence and arousal of this value mean "not annotated" rather than an error.
NOT_ANNOTATED_MARKER = -2.0
ANNOTATED = "annotated"
NOT_ANNOTATED = "not annotated"

LANDMARK_COUNT = 68

# The AffectNet npy annotation files of one image, by the key used in this module.
_NPY_SUFFIXES: dict[str, str] = {"expression": "exp", "valence": "val", "arousal": "aro", "landmarks": "lnd"}
NPY_NAME = re.compile(r"^(?P<id>.+)_(?P<kind>exp|val|aro|lnd)\.npy$")


# ----------------------------------------------------------------------------------------------
# Shared validation of AffectNet annotations (both releases)


def _number(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype("float64")


def _check_expression(text: dict[str, pd.Series], reasons: np.ndarray) -> pd.Series:
    expression_text = text["expression"]
    expression = _number(expression_text)
    first_reason_wins(reasons, (expression_text == "").to_numpy(), "missing value: expression")
    first_reason_wins(reasons, ~np.isfinite(expression.to_numpy()),
                      "expression is not a number: '" + expression_text + "'")
    valid_code = (expression == expression.round()) & expression.between(0, len(CANONICAL_CLASSES) - 1)
    first_reason_wins(reasons, ~valid_code.to_numpy(), "expression is not a code 0..10: " + expression_text)
    return expression


def _check_face_box(text: dict[str, pd.Series], reasons: np.ndarray) -> dict[str, pd.Series]:
    box_values = {}
    for column in manifest.FACE_BOX_COLUMNS:
        box_values[column] = _number(text[column])
        first_reason_wins(reasons, (text[column] == "").to_numpy(), f"missing value: {column}")
        first_reason_wins(reasons, ~np.isfinite(box_values[column].to_numpy()),
                          f"{column} is not a number: '" + text[column] + "'")
    zero_size = ~((box_values["face_width"] > 0) & (box_values["face_height"] > 0)).to_numpy()
    first_reason_wins(reasons, zero_size,
                      "face box has zero or negative size: " + text["face_width"] + "x" + text["face_height"])
    return box_values


def _check_affect(text: dict[str, pd.Series], reasons: np.ndarray,
                  affect_optional: bool) -> tuple[dict[str, pd.Series], np.ndarray]:
    """Valence and arousal in [-1, 1] (NaN where absent or marked -2), and which rows were marked."""
    values_by_column, marked = {}, np.zeros(len(reasons), dtype=bool)
    for column in ("valence", "arousal"):
        values = _number(text[column])
        absent = (text[column] == "").to_numpy()
        if not affect_optional:
            first_reason_wins(reasons, absent, f"missing value: {column}")
        first_reason_wins(reasons, ~np.isfinite(values.to_numpy()) & ~absent,
                          f"{column} is not a number: '" + text[column] + "'")
        in_range = values.between(-1.0, 1.0).to_numpy()
        not_annotated = (values == NOT_ANNOTATED_MARKER).to_numpy()
        first_reason_wins(reasons, ~(in_range | not_annotated | absent),
                          f"{column} outside [-1, 1] and not the -2 'not annotated' marker: " + text[column])
        values_by_column[column] = values.where(in_range, np.nan)
        marked |= not_annotated
    return values_by_column, marked


def _landmark_notes(text: dict[str, pd.Series], raw: pd.DataFrame,
                    accepted: np.ndarray) -> tuple[pd.Series, pd.DataFrame]:
    """Landmarks are optional: a malformed list is cleared and noted, the row is kept.

    Counting separators is a cheap, vectorised test of "68 x;y pairs" on a million long strings;
    the plain string method is faster than ``str.count``, which runs a regular expression per row.
    """
    landmarks = text["landmarks"][accepted]
    separators = landmarks.map(operator.methodcaller("count", ";"))
    malformed = ((landmarks != "") & (separators != 2 * LANDMARK_COUNT - 1)).to_numpy()
    notes = listed(raw[accepted], malformed, "note",
                   f"landmarks malformed (expected {LANDMARK_COUNT} x;y pairs), left empty")
    return landmarks.where(~malformed, ""), notes


def validate_annotations(raw: pd.DataFrame, with_face_box: bool, affect_optional: bool = False) -> LabelTable:
    """Check AffectNet annotations given as text columns; split them into accepted and rejected.

    ``raw`` has text columns ``filename``, ``expression``, ``valence``, ``arousal``,
    ``landmarks``, ``source_split``, ``source_file`` (and the face box columns when
    ``with_face_box``), stripped of surrounding spaces; a missing value is an empty string. A row
    may already carry a reason in an optional ``problem`` column (a problem found while reading
    it). The first failed check gives a rejected row its reason. ``affect_optional`` accepts rows
    without valence or arousal (the source does not have them).
    """
    reasons = np.full(len(raw), "", dtype=object)
    if "problem" in raw.columns:
        first_reason_wins(reasons, raw["problem"].to_numpy() != "", raw["problem"])
    text = {column: raw[column] for column in raw.columns}
    all_empty = np.ones(len(raw), dtype=bool)
    for column in ("filename", "expression", "valence", "arousal", "landmarks"):
        all_empty &= (text[column] == "").to_numpy()
    first_reason_wins(reasons, all_empty, "empty line")
    first_reason_wins(reasons, (text["filename"] == "").to_numpy(), "missing value: image path")
    expression = _check_expression(text, reasons)
    box_values = _check_face_box(text, reasons) if with_face_box else {}
    affect, marked = _check_affect(text, reasons, affect_optional)

    accepted = reasons == ""
    landmarks, notes = _landmark_notes(text, raw, accepted)
    codes = expression[accepted].astype("int64")
    rows = pd.DataFrame({
        "filename": _normalise_filenames(text["filename"][accepted]).to_numpy(dtype=object),
        "label": codes.map(AFFECTNET_CODE_TO_CLASS).to_numpy(dtype=object),
        "label_id": codes.to_numpy(dtype="int64"),
        "source_label": text["expression"][accepted].to_numpy(dtype=object),
        "source_split": raw["source_split"][accepted].to_numpy(dtype=object),
        "source_file": raw["source_file"][accepted].to_numpy(dtype=object),
    })
    for column in manifest.FACE_BOX_COLUMNS:
        rows[column] = box_values[column][accepted].to_numpy() if with_face_box else np.nan
    rows["valence"] = affect["valence"][accepted].to_numpy()
    rows["arousal"] = affect["arousal"][accepted].to_numpy()
    both_given = rows["valence"].notna().to_numpy() & rows["arousal"].notna().to_numpy()
    rows["affect_annotation"] = np.where(marked[accepted], NOT_ANNOTATED, np.where(both_given, ANNOTATED, ""))
    rows["landmarks"] = landmarks.to_numpy(dtype=object)
    rows["image_width"] = np.nan
    rows["image_height"] = np.nan
    return LabelTable(rows=rows[list(manifest.MANIFEST_COLUMNS)], rejected=listed(raw, ~accepted, "reason", reasons),
                      notes=notes, rows_read=len(raw))


def _normalise_filenames(filenames: pd.Series) -> pd.Series:
    """Forward slashes and no leading ``./``: paths relative to the images root.

    An absolute path keeps its leading slash, so that the path checks reject it.
    """
    return filenames.str.replace("\\", "/", regex=False).str.replace(r"^(\./)+", "", regex=True)


# ----------------------------------------------------------------------------------------------
# The original release (training.csv, validation.csv)


def _encodings_to_try(path: Path) -> tuple[str, ...]:
    """The encodings a label file is read with, from its first bytes (see the module docstring)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4096)
    except OSError as error:
        raise PipelineError(f"{path}: cannot be read: {error}") from error
    for mark, encoding in BYTE_ORDER_MARKS:
        if start.startswith(mark):
            return (encoding,)
    if b"\x00" in start[:4]:
        head = start[:4].ljust(4, b"\x01")
        if head[1:4] == b"\x00\x00\x00":
            return ("utf-32-le",)
        if head[0:3] == b"\x00\x00\x00":
            return ("utf-32-be",)
        return ("utf-16-le",) if head[1] == 0 else ("utf-16-be",)
    return CSV_ENCODINGS


def _line_numbers(row_count: int, caught: list) -> tuple[list[int], list[tuple[int, str]]]:
    """The file line of each parsed row, and the (line, message) of lines the parser left out."""
    skipped: dict[int, str] = {}
    for warning in caught:
        for match in re.finditer(r"line (\d+): (expected \d+ fields, saw \d+)", str(warning.message)):
            skipped[int(match.group(1))] = match.group(2)
    skipped_lines = np.array(sorted(skipped), dtype="int64")
    # Row k sits on line k + 2 (line 1 is the header) plus the skipped lines before it.
    kept_before_skip = skipped_lines - 2 - np.arange(len(skipped_lines))
    row_numbers = np.arange(row_count, dtype="int64")
    lines = row_numbers + 2 + np.searchsorted(kept_before_skip, row_numbers, side="right")
    return lines.tolist(), [(line, skipped[line]) for line in skipped_lines.tolist()]


def _read_csv_text(path: Path) -> tuple[pd.DataFrame, list[int], list[tuple[int, str]], str]:
    """Read every field as text, trying encodings in turn.

    Returns the table, the file line of each row, the (line, message) of lines with too many
    fields (left out by the parser) and the encoding that worked. The AffectNet lists never quote
    fields (landmarks are joined with ';'), so quoting is off: every physical line is one record,
    which keeps line numbers exact even when a field holds a stray quote.
    """
    encodings = _encodings_to_try(path)
    last_error: Exception | None = None
    for encoding in encodings:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                table = pd.read_csv(
                    path, dtype=object, na_filter=False, keep_default_na=False, index_col=False,
                    quoting=csv.QUOTE_NONE, skip_blank_lines=False, on_bad_lines="warn",
                    encoding=encoding, encoding_errors="strict",
                )
        except UnicodeError as error:
            last_error = error
            continue
        except pd.errors.EmptyDataError:
            return pd.DataFrame(), [], [], encoding
        except (pd.errors.ParserError, OSError) as error:
            raise PipelineError(f"{path}: cannot be read as CSV: {error}") from error
        return (table, *_line_numbers(len(table), caught), encoding)
    raise PipelineError(f"{path}: cannot be decoded as {' or '.join(encodings)}: {last_error}; "
                        "save it as UTF-8")


def read_affectnet_csv(path: str | Path, source_name: str, source_split: str) -> LabelTable:
    """Read one AffectNet label list; ``source_name`` (its path under the labels root) and the
    line number name every rejected row, as in ``training.csv:12``."""
    path = Path(path)
    table, lines, skipped, encoding = _read_csv_text(path)
    table.columns = [str(column).strip().lstrip("\ufeff").strip().strip('"') for column in table.columns]
    missing = [column for column in AFFECTNET_CSV_COLUMNS if column not in table.columns]
    if missing:
        found = ", ".join(map(repr, table.columns)) or "no header"
        raise PipelineError(
            f"{path}: missing column(s) {', '.join(missing)}; an AffectNet label list needs "
            f"{', '.join(AFFECTNET_CSV_COLUMNS)} (found: {found}; read as {encoding})"
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
    result.rejected = concat([result.rejected, too_many_fields], empty_rejected())
    result.rows_read += len(skipped)
    if encoding != "utf-8":
        result.encodings[source_name] = encoding
    return result


def _check_label_file(path: Path, labels_root: Path) -> None:
    """A label list must be a regular file inside the labels root (never a pipe or a link out)."""
    real_root = os.path.realpath(labels_root)
    real_path = os.path.realpath(path)
    if not real_path.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PipelineError(f"{path}: label file outside the labels root (leads to {real_path})")
    try:
        kind = image_checks.describe_file_kind(os.stat(path).st_mode)
    except OSError as error:
        raise PipelineError(f"{path}: cannot be read: {error}") from error
    if kind:
        raise PipelineError(f"{path}: not a label file: {kind}")


def read_affectnet_csv_layout(labels_root: Path) -> LabelTable:
    """Read every training.csv and validation.csv under the labels root."""
    label_files = sorted(
        path for path in labels_root.rglob("*.csv") if path.name.lower() in AFFECTNET_CSV_FILES
    )
    if not label_files:
        raise PipelineError(f"layout affectnet_csv: no training.csv or validation.csv under {labels_root}")
    for path in label_files:
        _check_label_file(path, labels_root)
    tables = [
        read_affectnet_csv(path, path.relative_to(labels_root).as_posix(), AFFECTNET_CSV_FILES[path.name.lower()])
        for path in label_files
    ]
    return combine(tables)


# ----------------------------------------------------------------------------------------------
# The later release (<set>/annotations/<id>_{exp,val,aro,lnd}.npy)


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
            values[key] = ""
            if name not in present:
                if key == "expression":
                    problem = problem or f"missing annotation file: {name}"
                elif key in ("valence", "arousal"):
                    notes.append(f"{name} missing, {key} left empty")
                continue
            try:
                reader = _npy_landmarks_text if key == "landmarks" else _npy_scalar_text
                values[key] = reader(os.path.join(folder, name))
            except Exception as error:  # noqa: BLE001 - any unreadable file is reported, never raised
                if key == "landmarks":
                    notes.append(f"landmarks unreadable ({name}), left empty")
                else:
                    problem = problem or f"unreadable annotation file: {name}: {error}"
        results.append((values["expression"], values["valence"], values["arousal"],
                        values["landmarks"], problem, "; ".join(notes)))
    return results


def _images_by_id(image_folder: Path) -> dict[str, str]:
    images_by_id: dict[str, str] = {}
    if image_folder.is_dir():
        for entry in sorted(os.scandir(image_folder), key=operator.attrgetter("name")):
            stem, extension = os.path.splitext(entry.name)
            if extension.lower() in IMAGE_EXTENSIONS:
                images_by_id.setdefault(stem, entry.name)
    return images_by_id


def _read_npy_set(folder: Path, labels_root: Path, images_root: Path, workers: int, chunk_size: int,
                  progress: bool) -> LabelTable:
    """One ``<set>/annotations`` folder with the ``<set>/images`` folder beside it."""
    set_relative = folder.parent.relative_to(labels_root).as_posix()
    set_relative = "" if set_relative == "." else set_relative
    prefix = f"{set_relative}/" if set_relative else ""
    ids = sorted({match.group("id") for name in os.listdir(folder) if (match := NPY_NAME.match(name))})
    images_by_id = _images_by_id(images_root / set_relative / "images")
    chunks = [(str(folder), ids[start:start + chunk_size]) for start in range(0, len(ids), chunk_size)]
    values = image_checks.map_in_processes(
        _read_npy_chunk, chunks, workers, f"reading {set_relative or 'annotations'}",
        sizes=[len(chunk[1]) for chunk in chunks], progress=progress,
    )
    columns = list(zip(*values)) if values else [()] * 6
    image_names = pd.Series([images_by_id.get(image_id, "") for image_id in ids], dtype=object)
    raw = pd.DataFrame({
        "filename": (prefix + "images/" + image_names).where(image_names != "", ""),
        **{key: pd.Series(column, dtype=object) for key, column in
           zip(("expression", "valence", "arousal", "landmarks", "problem"), columns)},
        "source_split": _split_of_set_folder(folder.parent.name),
        "source_file": [f"{prefix}annotations/{image_id}_exp.npy" for image_id in ids],
    })
    no_image = (image_names == "") & (raw["problem"] == "")
    raw.loc[no_image, "problem"] = "missing file: no image for this annotation in " + (prefix + "images/")
    raw.loc[no_image, "filename"] = [f"{prefix}images/{image_id}.jpg" for image_id in np.array(ids)[no_image.to_numpy()]]
    table = validate_annotations(raw, with_face_box=False, affect_optional=True)
    read_notes = np.array(columns[5], dtype=object)
    table.notes = concat([table.notes, listed(raw, read_notes != "", "note", read_notes)], empty_notes())
    # Images that no annotation describes are listed too: nothing the source holds is lost.
    annotated = set(ids)
    unannotated = sorted(name for stem, name in images_by_id.items() if stem not in annotated)
    table.rejected = concat([table.rejected, pd.DataFrame({
        "filename": [f"{prefix}images/{name}" for name in unannotated],
        "source_file": f"{prefix}images",
        "reason": "image without annotation",
    })], empty_rejected())
    table.rows_read += len(unannotated)
    return table


def read_affectnet_npy_layout(labels_root: Path, images_root: Path, workers: int = 0,
                              chunk_size: int = 512, progress: bool = True) -> LabelTable:
    """Read every ``annotations`` folder under the labels root with its ``images`` folder."""
    annotation_folders = sorted(path for path in labels_root.rglob("annotations") if path.is_dir())
    if not annotation_folders:
        raise PipelineError(f"layout affectnet_npy: no annotations folder under {labels_root}")
    return combine([_read_npy_set(folder, labels_root, images_root, workers, chunk_size, progress)
                    for folder in annotation_folders])
