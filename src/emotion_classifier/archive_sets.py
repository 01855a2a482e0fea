"""Recognising archive files and grouping multi-part sets: zip, tar (plain, gz, bz2, xz), RAR.

AffectNet arrives as split zips (``X.zip.001``, ``X.zip.002``: byte-wise pieces of one zip file)
or as multi-volume RAR (``X.part1.rar``, ``X.part2.rar``); FER2013 as a tarball or a zip.
``find_archive_sets`` groups the files of a folder into such sets and ``plan_archive_set``
checks that one set is complete before anything is read from it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from emotion_classifier.errors import PipelineError

_SINGLE_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".tar.gz", "tar"),
    (".tgz", "tar"),
    (".tar.bz2", "tar"),
    (".tbz2", "tar"),
    (".tbz", "tar"),
    (".tar.xz", "tar"),
    (".txz", "tar"),
    (".tar", "tar"),
    (".zip", "zip"),
    (".rar", "rar"),
)
_SPLIT_ZIP_PATTERN = re.compile(r"^(?P<base>.+)\.zip\.(?P<number>\d{3,})$", re.IGNORECASE)
_RAR_PART_PATTERN = re.compile(r"^(?P<base>.+)\.part(?P<number>\d+)\.rar$", re.IGNORECASE)
# Old-style RAR volumes: X.rar is the first volume, then X.r00, X.r01, ...
_RAR_OLD_VOLUME_PATTERN = re.compile(r"^(?P<base>.+)\.r(?P<number>\d{2,})$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Piece:
    """One file of an archive set: the set it belongs to and its position in it."""

    path: Path
    kind: str  # "zip", "tar", "rar", "split_zip", "rar_volumes", "rar_old_volumes"
    base: str  # the set's name without archive extensions
    number: int  # position within a multi-part set; 0 for a single-file archive

    @property
    def set_kind(self) -> str:
        """The kind of the set this piece belongs to: every RAR volume style is one "rar" set."""
        return "rar" if self.kind in ("rar_old_volumes", "rar_volumes") else self.kind


def classify(path: str | Path) -> Piece | None:
    """Return what kind of archive file ``path`` is, or None when it is not an archive."""
    path = Path(path)
    name = path.name
    match = _SPLIT_ZIP_PATTERN.match(name)
    if match:
        return Piece(path, "split_zip", match["base"], int(match["number"]))
    match = _RAR_PART_PATTERN.match(name)
    if match:
        return Piece(path, "rar_volumes", match["base"], int(match["number"]))
    match = _RAR_OLD_VOLUME_PATTERN.match(name)
    if match:
        # X.r00 is the second volume: X.rar (number 0 here) comes first.
        return Piece(path, "rar_old_volumes", match["base"], int(match["number"]) + 1)
    lower = name.lower()
    for suffix, kind in _SINGLE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return Piece(path, kind, name[: -len(suffix)], 0)
    return None


def is_archive_file(path: str | Path) -> bool:
    """True when ``path``'s name is that of a supported archive or archive piece."""
    return classify(path) is not None


def set_key(piece: Piece) -> tuple[str, str, str]:
    """Pieces with the same key are extracted together as one archive."""
    if piece.set_kind in ("zip", "tar"):
        # Single-file archives never merge, even when two share a base name (X.zip, X.tar).
        return (str(piece.path.parent), piece.path.name, piece.set_kind)
    return (str(piece.path.parent), piece.base.lower(), piece.set_kind)


def find_archive_sets(paths: Sequence[str | Path]) -> list[list[Path]]:
    """Group archive files into sets that are extracted as one archive each.

    Split zip pieces (``X.zip.001``, ``X.zip.002``) and RAR volumes (``X.part1.rar``, ...;
    or ``X.rar``, ``X.r00``, ...) of the same folder and base name form one set, ordered by
    part number; every other archive is a set of its own. Hidden files and files that are not
    archives are left out. Sets are returned sorted by name.
    """
    groups: dict[tuple[str, str, str], list[Piece]] = {}
    for raw_path in paths:
        path = Path(raw_path)
        if path.name.startswith("."):
            continue
        piece = classify(path)
        if piece is not None:
            groups.setdefault(set_key(piece), []).append(piece)
    archive_sets = []
    for pieces in groups.values():
        pieces.sort(key=lambda piece: (piece.number, piece.path.name))
        archive_sets.append([piece.path for piece in pieces])
    archive_sets.sort(key=lambda archive_set: (archive_set_name(archive_set), str(archive_set[0])))
    return archive_sets


def archive_set_name(paths: Sequence[str | Path]) -> str:
    """The set's name without archive extensions: ``AffectNet.zip.001`` gives ``AffectNet``."""
    if not paths:
        raise ValueError("an archive set needs at least one file")
    piece = classify(paths[0])
    if piece is None:
        raise ValueError(f"{paths[0]} is not a supported archive")
    return piece.base


def set_label(paths: Sequence[Path]) -> str:
    """How messages name a set: its first file, and how many more parts it has."""
    return paths[0].name if len(paths) == 1 else f"{paths[0].name} (+{len(paths) - 1} more parts)"


@dataclasses.dataclass(frozen=True)
class ArchivePlan:
    """A checked archive set: its format, its files in order and a label for messages."""

    kind: str  # "zip", "split_zip", "tar", "rar"
    paths: list[Path]
    label: str


def _pieces_of(paths: list[Path]) -> list[Piece]:
    pieces = []
    for path in paths:
        if not path.is_file():
            raise PipelineError(f"archive file not found: {path}")
        piece = classify(path)
        if piece is None:
            raise PipelineError(
                f"{path}: not a supported archive (zip, tar, tar.gz, tgz, tar.bz2, tar.xz, rar, "
                "split zip X.zip.001, multi-volume RAR X.part1.rar)"
            )
        pieces.append(piece)
    return pieces


def _check_numbering(kind: str, pieces: list[Piece], label: str) -> None:
    """A multi-part set must hold every piece from the first one on, without gaps."""
    # Split zips count from .001 and new-style RAR volumes from part1; an old-style set starts
    # with X.rar (number 0 here), followed by X.r00 (1), X.r01 (2), ...
    expected_first = 0 if kind == "rar" and pieces[0].kind == "rar" else 1
    numbers = [piece.number for piece in pieces]
    if numbers != list(range(expected_first, expected_first + len(pieces))):
        missing = sorted(set(range(expected_first, max(numbers) + 1)) - set(numbers))
        raise PipelineError(
            f"{label}: incomplete multi-part archive: part numbers {numbers} found, "
            f"{missing or 'duplicates'} missing; bring in every piece"
        )
    if kind == "split_zip" and len(pieces) == 1:
        # Splitting tools write a .001 piece only when a second one follows; a lone piece is
        # almost always a download that stopped early.
        name = pieces[0].path.name
        raise PipelineError(
            f"{name}: incomplete multi-part archive: only the first piece was found and "
            f"{pieces[0].base}.zip.002 is missing; bring in every piece (if {name} is the whole "
            f"archive, rename it to {pieces[0].base}.zip)"
        )


def plan_archive_set(archive: str | Path | Sequence[str | Path]) -> ArchivePlan:
    """Check that ``archive`` is one supported archive or one complete multi-part set."""
    if isinstance(archive, (str, Path)):
        paths = [Path(archive)]
    else:
        paths = [Path(path) for path in archive]
    if not paths:
        raise ValueError("extract_archive needs at least one archive file")
    pieces = _pieces_of(paths)
    label = set_label(paths)
    kinds = {piece.set_kind for piece in pieces}
    if len(kinds) != 1 or len({piece.base.lower() for piece in pieces}) != 1:
        raise PipelineError(f"{', '.join(path.name for path in paths)}: not parts of one archive set")
    kind = kinds.pop()
    pieces.sort(key=lambda piece: piece.number)
    if kind in ("zip", "tar") and len(pieces) > 1:
        raise PipelineError(f"{label}: several single-file archives given as one set")
    if kind in ("split_zip", "rar"):
        _check_numbering(kind, pieces, label)
    return ArchivePlan(kind, [piece.path for piece in pieces], set_label([piece.path for piece in pieces]))
