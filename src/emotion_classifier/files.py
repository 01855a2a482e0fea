"""Writing artifacts so that an interruption never leaves a half-written file.

Every artifact is written to a temporary name in the destination folder and renamed over the
final name (an atomic operation on POSIX filesystems), so a reader sees either the old file or
the new one. Stage stamps record what a stage's outputs were made from, so a re-run with
unchanged inputs does nothing.

Every CSV the project writes goes through ``save_csv``, which neutralises spreadsheet formulas:
a text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a file name
or label cell from a dataset, perhaps hostile) would run as a formula when the file is opened in a
spreadsheet, so it is written with a single quote in front (``'=cmd|...``), as OWASP recommends.
Numeric columns (valence -0.5, a loss) are written as numbers, untouched. The project's own
readers take the quote off again (``restore_csv_text``), so a manifest read back holds the names
the dataset gave; the rule is reversible because a cell that already begins with quotes followed by
one of those characters gets one more quote too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # pandas is imported by the stages that hand tables in, not by every user of this module
    import pandas as pd

# A cell a spreadsheet would run as a formula, possibly behind quotes a previous write added.
_FORMULA_START = re.compile(r"^'*[=+\-@\t\r]")
# A cell that needs a closer look when written: a formula start, or a carriage return anywhere.
_NEEDS_CARE = re.compile(r"^'*[=+\-@\t]|\r")
# A cell read back that a write quoted.
_QUOTED_FORMULA = re.compile(r"^''*[=+\-@\t\r]")


@contextlib.contextmanager
def atomic_path(destination: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it over ``destination`` on success.

    The temporary name keeps the destination's suffix (or ``suffix``) because some writers
    (matplotlib, Keras, numpy) choose the format from it.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = destination.suffix if suffix is None else suffix
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.stem}.", suffix=f".partial{suffix}", dir=destination.parent
    )
    os.close(handle)
    temporary = Path(temporary_name)
    # mkstemp creates the file readable by its owner only; artifacts get the permissions an
    # ordinary new file would (the umask decides). Secrets tighten them again themselves.
    os.chmod(temporary, 0o666 & ~_current_umask())
    try:
        yield temporary
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save an array that loads without pickle: object arrays are refused."""
    array = np.asarray(array)
    if array.dtype == object:
        raise ValueError(f"{path}: refusing to save an object array (it would need pickle to load)")
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def load_npy(path: str | Path) -> np.ndarray:
    """Load an array, never unpickling: a pickled file is an error, not code to run."""
    return np.load(Path(path), allow_pickle=False)


def neutralise_formula(value: object) -> object:
    """``value`` with a quote in front when a spreadsheet would run it as a formula."""
    if isinstance(value, str) and _FORMULA_START.match(value):
        return "'" + value
    return value


def restore_csv_text(value: object) -> object:
    """The text ``neutralise_formula`` was given: the quote it added taken off."""
    if isinstance(value, str) and value.startswith("'") and _FORMULA_START.match(value[1:]):
        return value[1:]
    return value


def _flagged(column: pd.Series, pattern: re.Pattern, first_characters: str,
             carriage_return: bool) -> pd.Series | None:
    """True for the cells of ``column`` that ``pattern`` finds something in; None when no cell
    can hold anything, the usual case.

    That is decided first with plain substring searches: in the first characters of the cells
    joined, and (if ``carriage_return``) in each cell for a carriage return, so a million-row
    manifest costs a fraction of a second. Only when one of ``first_characters``
    begins a cell or a cell holds a carriage return (or the column holds numbers too) are the
    cells matched with ``pattern`` one by one.
    """
    try:
        cells = column.dropna()
        first = "".join([cell[:1] for cell in cells])
        quick = not any(character in first for character in first_characters) and not (
            carriage_return and any("\r" in cell for cell in cells))
    except TypeError:
        quick = False
    if quick:
        return None
    flagged = column.map(lambda value: isinstance(value, str) and pattern.search(value) is not None)
    return flagged if flagged.any() else None


def neutralise_formulas(frame: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """``frame`` with its text cells unable to run as spreadsheet formulas (numbers untouched),
    and whether a text cell holds a carriage return (see ``save_csv``)."""
    has_carriage_return = False
    changed = {}
    for column in frame.columns:
        if frame[column].dtype.kind in "biufcmM":
            continue
        flagged = _flagged(frame[column], _NEEDS_CARE, "=+-@\t'", carriage_return=True)
        if flagged is not None:
            cells = frame[column][flagged]
            has_carriage_return |= bool(cells.map(lambda value: "\r" in value).any())
            changed[column] = frame[column].where(~flagged, cells.map(neutralise_formula))
    if changed:
        frame = frame.copy()
        for column, values in changed.items():
            frame[column] = values
    return frame, has_carriage_return


def restore_csv_columns(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Take off the formula-neutralising quotes in the text ``columns`` of a CSV read back."""
    for column in columns:
        flagged = _flagged(frame[column], _QUOTED_FORMULA, "'", carriage_return=False)
        if flagged is not None:
            frame[column] = frame[column].where(~flagged, frame[column][flagged].map(restore_csv_text))
    return frame


def save_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Save a pandas DataFrame as UTF-8 CSV without its index, spreadsheet formulas neutralised."""
    frame, has_carriage_return = neutralise_formulas(frame)
    # The column names come from the dataset too (an unknown class in a count table).
    frame = frame.set_axis([neutralise_formula(str(column)) for column in frame.columns], axis=1)
    # The csv writer quotes a cell that holds a character of the line terminator, and only then:
    # with "\n" lines a cell holding a lone carriage return would be written bare and split the
    # row when read back, so such a table is written with "\r\n" lines.
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\r\n" if has_carriage_return else "\n")


def save_figure(path: str | Path, figure, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as pyplot

    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight")
    pyplot.close(figure)


def file_digest(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """MD5 of a file's content (the checksum Google Drive reports), read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def same_content(first: str | Path, second: str | Path, digest=file_digest) -> bool:
    """True when both files hold the same bytes: the same inode, or the same size and digest.

    ``digest`` computes a file's checksum (a caching one spares re-reading large files).
    """
    first_status, second_status = os.stat(first), os.stat(second)
    if (first_status.st_dev, first_status.st_ino) == (second_status.st_dev, second_status.st_ino):
        return True
    if first_status.st_size != second_status.st_size:
        return False
    return digest(first) == digest(second)


def tree_fingerprint(paths: list[str | Path]) -> str:
    """A cheap fingerprint of files and folders: every file's relative path, size and mtime.

    Stat calls only, so it stays fast on a million images while still noticing any added,
    removed, resized or rewritten file.
    """
    digest = hashlib.sha256()
    for root in sorted(str(path) for path in paths):
        root_path = Path(root)
        if root_path.is_file():
            stat = root_path.stat()
            digest.update(f"{root}|{stat.st_size}|{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            continue
        if not root_path.exists():
            digest.update(f"{root}|missing\n".encode("utf-8", "surrogateescape"))
            continue
        for directory, folder_names, file_names in os.walk(root_path):
            folder_names.sort()
            for name in sorted(file_names):
                file_path = Path(directory) / name
                try:
                    stat = file_path.stat()
                except OSError:
                    # A dangling or looping symbolic link: its own entry stands for it.
                    stat = file_path.lstat()
                relative = file_path.relative_to(root_path)
                # Names that are not valid UTF-8 (raw bytes from an archive) keep their bytes.
                digest.update(f"{root}/{relative}|{stat.st_size}|{stat.st_mtime_ns}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()


class StageStamp:
    """Records what a stage's outputs were made from, so an unchanged re-run can do nothing.

    The stamp holds a fingerprint of the stage's settings and input files, and the list of its
    outputs. ``is_current`` is true only when the fingerprint matches and every output exists.
    """

    def __init__(self, stamp_path: str | Path, settings: object, inputs: list[str | Path]):
        self.path = Path(stamp_path)
        settings_text = json.dumps(settings, sort_keys=True, default=_json_default)
        self.fingerprint = hashlib.sha256(
            (settings_text + tree_fingerprint(inputs)).encode()
        ).hexdigest()

    def is_current(self) -> bool:
        if not self.path.is_file():
            return False
        try:
            stamp = read_json(self.path)
        except (OSError, ValueError):
            return False
        if not isinstance(stamp, dict) or stamp.get("fingerprint") != self.fingerprint:
            return False
        return all(Path(output).exists() for output in stamp.get("outputs", []))

    def record(self, outputs: list[str | Path]) -> None:
        write_json(self.path, {"fingerprint": self.fingerprint, "outputs": [str(p) for p in outputs]})
