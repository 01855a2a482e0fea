"""The table every label layout is read into: accepted rows, rejected rows and notes.

Shared by the layout readers (``affectnet_labels.py``, ``labels.py``) and the checks applied to
every layout, so that each of them reports a left-out row the same way: its file name, the label
file and line or folder it came from, and the reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from emotion_classifier import manifest

NOTE_COLUMNS: tuple[str, ...] = ("filename", "source_file", "note")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)


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


def empty_rejected() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in manifest.REJECTED_COLUMNS})


def empty_notes() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in NOTE_COLUMNS})


def concat(frames: list[pd.DataFrame], empty: pd.DataFrame) -> pd.DataFrame:
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else empty


def first_reason_wins(reasons: np.ndarray, mask: np.ndarray, text: str | pd.Series) -> None:
    """Set ``text`` as the reason of the rows in ``mask`` that have no reason yet."""
    target = np.asarray(mask, dtype=bool) & (reasons == "")
    if isinstance(text, pd.Series):
        reasons[target] = text.to_numpy(dtype=object)[target]
    else:
        reasons[target] = text


def listed(frame: pd.DataFrame, mask: np.ndarray, text_column: str, text) -> pd.DataFrame:
    """The rejected rows or notes (``text_column`` "reason" or "note") of the rows in ``mask``."""
    text = text[mask] if isinstance(text, np.ndarray) else text
    return pd.DataFrame({
        "filename": frame["filename"][mask].to_numpy(dtype=object),
        "source_file": frame["source_file"][mask].to_numpy(dtype=object),
        text_column: text,
    })


def reject_rows(table: LabelTable, reasons: np.ndarray, rows: pd.DataFrame | None = None,
                notes: pd.DataFrame | None = None) -> LabelTable:
    """Move the rows with a reason ("" keeps a row) from ``rows`` (default: the table's) to rejected."""
    rows = table.rows if rows is None else rows
    rejected = reasons != ""
    return dataclasses.replace(
        table,
        rows=rows[~rejected].reset_index(drop=True),
        rejected=concat([table.rejected, listed(rows, rejected, "reason", reasons)], empty_rejected()),
        notes=table.notes if notes is None else concat([table.notes, notes], empty_notes()),
    )


def combine(tables: list[LabelTable]) -> LabelTable:
    encodings: dict[str, str] = {}
    for table in tables:
        encodings.update(table.encodings)
    return LabelTable(
        rows=concat([table.rows for table in tables], manifest.empty_manifest()),
        rejected=concat([table.rejected for table in tables], empty_rejected()),
        notes=concat([table.notes for table in tables], empty_notes()),
        rows_read=sum(table.rows_read for table in tables),
        encodings=encodings,
    )
