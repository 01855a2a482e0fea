"""Safe extraction of dataset archives: zip, tar (plain, gz, bz2, xz), RAR, and multi-part sets.

AffectNet arrives as split zips (``X.zip.001``, ``X.zip.002``: byte-wise pieces of one zip file)
or as multi-volume RAR (``X.part1.rar``, ``X.part2.rar``); FER2013 as a tarball or a zip.
``find_archive_sets`` groups the files of a folder into such sets and ``extract_archive``
extracts one set as a single archive.

Archives are untrusted input, so extraction is defensive:

- every entry is checked before anything is written: absolute paths, ``..`` components, links
  whose target lies outside the destination, device files, fifos and sockets are refused with
  an ``UnsafeArchiveError`` that names the archive and the entry;
- no symbolic link is ever created: a link whose target is a regular file of the same archive
  is written as a hard link to (or copy of) that file, and any other link inside the tree is
  skipped with a warning, so no later write can be redirected through a link;
- files are opened with ``O_NOFOLLOW`` and written with plain permissions (no setuid bits);
- the archive is extracted into a temporary sibling folder that is renamed to the destination
  only when complete, with a ``.extracted.json`` marker; an error removes the partial folder;
- free disk space is checked against the sum of the entries' sizes first.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Callable

from tqdm import tqdm

from emotion_classifier import files
from emotion_classifier.errors import PipelineError

logger = logging.getLogger(__name__)

MARKER_NAME = ".extracted.json"

# Archives with more entries than this get a progress bar while extracting.
PROGRESS_MIN_MEMBERS = 200
# Extra free space kept on the disk beyond the archive's content.
DISK_SPACE_MARGIN_BYTES = 64 * 1024 * 1024
# Symbolic links pointing to links are followed this many times at most (a cycle stops there).
MAX_LINK_DEPTH = 16

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

RAR_TOOLS = ("unrar", "unar", "bsdtar", "7z")


class UnsafeArchiveError(PipelineError):
    """An archive entry that would write outside the destination or create a special file."""


# ---------------------------------------------------------------------------------------------
# Recognising archives and grouping multi-part sets


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One file of an archive set: the set it belongs to and its position in it."""

    path: Path
    kind: str  # "zip", "tar", "rar", "split_zip", "rar_volumes"
    base: str  # the set's name without archive extensions
    number: int  # position within a multi-part set; 0 for a single-file archive


def _classify(path: Path) -> _Piece | None:
    """Return what kind of archive file ``path`` is, or None when it is not an archive."""
    name = path.name
    match = _SPLIT_ZIP_PATTERN.match(name)
    if match:
        return _Piece(path, "split_zip", match["base"], int(match["number"]))
    match = _RAR_PART_PATTERN.match(name)
    if match:
        return _Piece(path, "rar_volumes", match["base"], int(match["number"]))
    match = _RAR_OLD_VOLUME_PATTERN.match(name)
    if match:
        # X.r00 is the second volume: X.rar (number 0 here) comes first.
        return _Piece(path, "rar_old_volumes", match["base"], int(match["number"]) + 1)
    lower = name.lower()
    for suffix, kind in _SINGLE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return _Piece(path, kind, name[: -len(suffix)], 0)
    return None


def is_archive_file(path: str | Path) -> bool:
    """True when ``path``'s name is that of a supported archive or archive piece."""
    return _classify(Path(path)) is not None


def find_archive_sets(paths: Sequence[str | Path]) -> list[list[Path]]:
    """Group archive files into sets that are extracted as one archive each.

    Split zip pieces (``X.zip.001``, ``X.zip.002``) and RAR volumes (``X.part1.rar``, ...;
    or ``X.rar``, ``X.r00``, ...) of the same folder and base name form one set, ordered by
    part number; every other archive is a set of its own. Hidden files and files that are not
    archives are left out. Sets are returned sorted by name.
    """
    groups: dict[tuple[str, str, str], list[_Piece]] = {}
    for raw_path in paths:
        path = Path(raw_path)
        if path.name.startswith("."):
            continue
        piece = _classify(path)
        if piece is None:
            continue
        kind = piece.kind
        if kind == "rar_old_volumes":
            kind = "rar"
        if kind in ("zip", "tar"):
            # Single-file archives never merge, even when two share a base name (X.zip, X.tar).
            key = (str(path.parent), path.name, kind)
        else:
            key = (str(path.parent), piece.base.lower(), kind)
        groups.setdefault(key, []).append(piece)
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
    piece = _classify(Path(paths[0]))
    if piece is None:
        raise ValueError(f"{paths[0]} is not a supported archive")
    return piece.base


@dataclasses.dataclass(frozen=True)
class _ArchivePlan:
    """A checked archive set: its format, its files in order and a label for messages."""

    kind: str  # "zip", "split_zip", "tar", "rar"
    paths: list[Path]
    label: str


def _plan_archive_set(archive: str | Path | Sequence[str | Path]) -> _ArchivePlan:
    """Check that ``archive`` is one supported archive or one complete multi-part set."""
    if isinstance(archive, (str, Path)):
        paths = [Path(archive)]
    else:
        paths = [Path(path) for path in archive]
    if not paths:
        raise ValueError("extract_archive needs at least one archive file")
    for path in paths:
        if not path.is_file():
            raise PipelineError(f"archive file not found: {path}")
    pieces = []
    for path in paths:
        piece = _classify(path)
        if piece is None:
            raise PipelineError(
                f"{path}: not a supported archive (zip, tar, tar.gz, tgz, tar.bz2, tar.xz, rar, "
                "split zip X.zip.001, multi-volume RAR X.part1.rar)"
            )
        pieces.append(piece)
    kinds = {("rar" if piece.kind in ("rar_old_volumes", "rar_volumes") else piece.kind) for piece in pieces}
    label = paths[0].name if len(paths) == 1 else f"{paths[0].name} (+{len(paths) - 1} more parts)"
    if len(kinds) != 1 or len({piece.base.lower() for piece in pieces}) != 1:
        raise PipelineError(f"{', '.join(path.name for path in paths)}: not parts of one archive set")
    kind = kinds.pop()
    pieces.sort(key=lambda piece: piece.number)
    if kind in ("zip", "tar") and len(pieces) > 1:
        raise PipelineError(f"{label}: several single-file archives given as one set")
    if kind in ("split_zip", "rar"):
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
    return _ArchivePlan(kind, [piece.path for piece in pieces], label)


# ---------------------------------------------------------------------------------------------
# Reading archives as a list of checked members


@dataclasses.dataclass
class _Member:
    """One archive entry after its name has been checked."""

    name: str  # safe relative path with forward slashes
    kind: str  # "file", "directory", "symlink", "hardlink"
    size: int
    modified: float | None  # POSIX timestamp, if the archive records one
    link_target: str = ""  # for links: the checked target, relative to the destination
    handle: object = None  # the format's own entry object, to read the content


def _unsafe(label: str, entry: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: refusing entry {entry!r}: {reason}; nothing was extracted")


def _safe_name(label: str, raw_name: str) -> str:
    """Return ``raw_name`` as a relative path inside the destination, or raise.

    Backslashes count as separators because archives made on Windows use them. An empty
    result (the entry ``./``) is returned as ``""`` and means the destination itself.
    """
    if "\x00" in raw_name:
        raise _unsafe(label, raw_name, "the name contains a NUL character")
    name = raw_name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(label, raw_name, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(label, raw_name, "'..' path component would write outside the destination")
    return "/".join(parts)


def _symlink_target(label: str, member_name: str, raw_target: str) -> str:
    """Resolve a symbolic link's target against its folder; raise if it leaves the destination."""
    target = raw_target.replace("\\", "/")
    if not target or "\x00" in target:
        raise _unsafe(label, member_name, f"symbolic link with an invalid target {raw_target!r}")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise _unsafe(label, member_name, f"symbolic link to an absolute path {raw_target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member_name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise _unsafe(label, member_name, f"symbolic link to {raw_target!r} points outside the destination")
    return "" if resolved == "." else resolved


def _hardlink_target(label: str, member_name: str, raw_target: str) -> str:
    """A hard link's target is relative to the archive root; it must stay inside."""
    target = raw_target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise _unsafe(label, member_name, f"hard link to an absolute path {raw_target!r}")
    parts = [part for part in target.split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        raise _unsafe(label, member_name, f"hard link to {raw_target!r} points outside the destination")
    return "/".join(parts)


class _ConcatenatedFile(io.RawIOBase):
    """A read-only, seekable view of several files one after another (split zip pieces).

    zipfile reads the central directory at the end and then seeks back to each entry, so the
    pieces are read in place instead of being joined into a temporary copy of the whole zip.
    """

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._handles: list[BinaryIO] = []
        self._starts: list[int] = []
        total = 0
        try:
            for path in paths:
                self._handles.append(open(path, "rb"))
                self._starts.append(total)
                total += path.stat().st_size
        except BaseException:
            self.close()
            raise
        self._size = total
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise OSError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        written = 0
        while written < len(view) and self._position < self._size:
            # The last piece whose start is at or before the current position holds it.
            index = max(i for i, start in enumerate(self._starts) if start <= self._position)
            handle = self._handles[index]
            handle.seek(self._position - self._starts[index])
            count = handle.readinto(view[written:])
            if not count:
                break
            written += count
            self._position += count
        return written

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()


class _ZipReader:
    """Members of a zip file (or of split zip pieces read as one)."""

    def __init__(self, plan: _ArchivePlan):
        self.label = plan.label
        source: object = plan.paths[0] if plan.kind == "zip" else _ConcatenatedFile(plan.paths)
        try:
            self._zip = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as error:
            if isinstance(source, _ConcatenatedFile):
                source.close()
            raise PipelineError(f"{self.label}: not a readable zip archive ({error})") from error
        self._source = source

    def members(self) -> list[_Member]:
        members = []
        for info in self._zip.infolist():
            name = _safe_name(self.label, info.filename)
            mode = info.external_attr >> 16
            modified = time.mktime(info.date_time + (0, 0, -1)) if info.date_time[0] >= 1980 else None
            if info.flag_bits & 0x1:
                raise PipelineError(f"{self.label}: entry {info.filename!r} is encrypted; extract it by hand")
            if stat.S_ISLNK(mode):
                raw_target = self._zip.read(info).decode("utf-8", errors="replace")
                target = _symlink_target(self.label, name or info.filename, raw_target)
                members.append(_Member(name, "symlink", 0, modified, target))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise _unsafe(self.label, info.filename, "device file, fifo or socket")
            elif info.is_dir():
                members.append(_Member(name, "directory", 0, modified))
            else:
                members.append(_Member(name, "file", info.file_size, modified, handle=info))
        return members

    def open(self, member: _Member) -> BinaryIO:
        return self._zip.open(member.handle)

    def close(self) -> None:
        self._zip.close()
        if isinstance(self._source, _ConcatenatedFile):
            self._source.close()


class _TarReader:
    """Members of a tar file, plain or compressed (gzip, bzip2, xz)."""

    def __init__(self, plan: _ArchivePlan):
        self.label = plan.label
        try:
            self._tar = tarfile.open(plan.paths[0], "r:*")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise PipelineError(f"{self.label}: not a readable tar archive ({error})") from error

    def members(self) -> list[_Member]:
        members = []
        try:
            entries = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise PipelineError(f"{self.label}: damaged tar archive ({error})") from error
        for info in entries:
            name = _safe_name(self.label, info.name)
            if info.issym():
                target = _symlink_target(self.label, name or info.name, info.linkname)
                members.append(_Member(name, "symlink", 0, info.mtime, target))
            elif info.islnk():
                target = _hardlink_target(self.label, info.name, info.linkname)
                members.append(_Member(name, "hardlink", 0, info.mtime, target))
            elif info.ischr() or info.isblk() or info.isfifo():
                raise _unsafe(self.label, info.name, "device file or fifo")
            elif info.isdir():
                members.append(_Member(name, "directory", 0, info.mtime))
            elif info.isfile():
                members.append(_Member(name, "file", info.size, info.mtime, handle=info))
            else:
                raise _unsafe(self.label, info.name, f"unsupported tar entry type {info.type!r}")
        return members

    def open(self, member: _Member) -> BinaryIO:
        handle = self._tar.extractfile(member.handle)
        if handle is None:  # pragma: no cover - extractfile returns None only for non-files
            raise PipelineError(f"{self.label}: cannot read entry {member.name!r}")
        return handle

    def close(self) -> None:
        self._tar.close()


def _require_rar_backend():
    """Import rarfile and check that it has a tool to decompress with; return the module."""
    try:
        import rarfile
    except ImportError as error:
        raise PipelineError(
            "RAR archives need the 'rarfile' Python package: pip install rarfile "
            "(or pip install 'emotion-classifier[rar]')"
        ) from error
    try:
        rarfile.tool_setup()
    except rarfile.RarCannotExec as error:
        raise PipelineError(
            "RAR archives need a decompression tool on PATH and none of "
            f"{', '.join(RAR_TOOLS)} was found: install one, e.g. 'apt install unrar' (or unar, "
            "libarchive-tools for bsdtar, 7zip for 7z), or 'brew install unar' on macOS"
        ) from error
    return rarfile


class _RarReader:
    """Members of a RAR archive or multi-volume set, read through the rarfile package."""

    def __init__(self, plan: _ArchivePlan):
        self.label = plan.label
        self._rarfile = _require_rar_backend()
        try:
            # rarfile finds the following volumes beside the first one.
            self._rar = self._rarfile.RarFile(str(plan.paths[0]))
        except (self._rarfile.Error, OSError) as error:
            raise PipelineError(f"{self.label}: not a readable RAR archive ({error})") from error
        if self._rar.needs_password():
            raise PipelineError(f"{self.label}: the archive is password-protected; extract it by hand")

    def members(self) -> list[_Member]:
        rarfile = self._rarfile
        members = []
        for info in self._rar.infolist():
            name = _safe_name(self.label, info.filename)
            modified = time.mktime(tuple(info.date_time) + (0, 0, -1)) if info.date_time else None
            redirect = getattr(info, "file_redir", None)
            mode = info.mode or 0
            if info.is_symlink():
                raw_target = redirect[2] if redirect else self._rar.read(info).decode("utf-8", "replace")
                target = _symlink_target(self.label, name or info.filename, raw_target)
                members.append(_Member(name, "symlink", 0, modified, target))
            elif redirect and redirect[0] in (rarfile.RAR5_XREDIR_HARD_LINK, rarfile.RAR5_XREDIR_FILE_COPY):
                target = _hardlink_target(self.label, info.filename, redirect[2])
                members.append(_Member(name, "hardlink", 0, modified, target))
            elif redirect:
                raise _unsafe(self.label, info.filename, f"unsupported link type {redirect[0]}")
            elif info.host_os == rarfile.RAR_OS_UNIX and (
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
            ):
                raise _unsafe(self.label, info.filename, "device file, fifo or socket")
            elif info.is_dir():
                members.append(_Member(name, "directory", 0, modified))
            else:
                members.append(_Member(name, "file", info.file_size, modified, handle=info))
        return members

    def open(self, member: _Member) -> BinaryIO:
        return self._rar.open(member.handle)

    def close(self) -> None:
        self._rar.close()


def _open_reader(plan: _ArchivePlan):
    if plan.kind in ("zip", "split_zip"):
        return _ZipReader(plan)
    if plan.kind == "tar":
        return _TarReader(plan)
    return _RarReader(plan)


# ---------------------------------------------------------------------------------------------
# Writing


def _describe_archives(paths: Sequence[Path], digest: Callable[[Path], str]) -> list[dict]:
    records = []
    for path in paths:
        status = path.stat()
        records.append(
            {"name": path.name, "size": status.st_size, "mtime_ns": status.st_mtime_ns, "md5": digest(path)}
        )
    return records


def _marker_matches(destination: Path, paths: Sequence[Path], digest: Callable[[Path], str]) -> bool:
    """True when ``destination`` holds a complete extraction of exactly these archive files.

    Names and sizes must match; the md5 is only recomputed for a file whose modification time
    changed, so a re-run on a 60 GB archive set does not read it all again.
    """
    marker = destination / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        recorded = files.read_json(marker)
    except (OSError, ValueError):
        return False
    archives = recorded.get("archives") if isinstance(recorded, dict) else None
    if not isinstance(archives, list) or len(archives) != len(paths):
        return False
    for record, path in zip(archives, paths):
        if not isinstance(record, dict):
            return False
        status = path.stat()
        if record.get("name") != path.name or record.get("size") != status.st_size:
            return False
        if record.get("mtime_ns") != status.st_mtime_ns and record.get("md5") != digest(path):
            return False
    return True


def is_extracted(
    archive: str | Path | Sequence[str | Path],
    destination: str | Path,
    digest: Callable[[Path], str] = files.file_digest,
) -> bool:
    """True when ``destination`` holds a complete extraction of this archive or set."""
    return _marker_matches(Path(destination), _plan_archive_set(archive).paths, digest)


def _format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop always returns


def _check_disk_space(label: str, folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_SPACE_MARGIN_BYTES:
        raise PipelineError(
            f"{label}: not enough free disk space in {folder}: the archive holds {_format_size(needed)}, "
            f"only {_format_size(free)} is free; free some space or set paths.data_dir to a larger disk"
        )


def _write_member(reader, member: _Member, target: Path) -> None:
    """Stream one regular file out of the archive, never following a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(target, flags, 0o644)
    with os.fdopen(descriptor, "wb") as output, reader.open(member) as source:
        shutil.copyfileobj(source, output, 1 << 20)
    if member.modified is not None:
        os.utime(target, (member.modified, member.modified))


def _resolve_link(member: _Member, by_name: dict[str, _Member]) -> _Member | None:
    """Follow a link through other links to a regular file of the archive; None if it is not one."""
    current = member
    for _ in range(MAX_LINK_DEPTH):
        target = by_name.get(current.link_target)
        if target is None or target.kind == "directory":
            return None
        if target.kind == "file":
            return target
        current = target
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copyfile(source, target, follow_symlinks=False)


def _extract_into(reader, members: list[_Member], folder: Path) -> dict[str, int]:
    """Write every checked member under ``folder``; return counts for the marker."""
    created_folders: set[Path] = {folder}

    def make_parent(path: Path) -> None:
        parent = path.parent
        if parent not in created_folders:
            parent.mkdir(parents=True, exist_ok=True)
            created_folders.add(parent)

    counts = {"files": 0, "folders": 0, "links": 0, "links_skipped": 0}
    progress = tqdm(
        members, desc=f"extracting {reader.label}", unit="entry", disable=len(members) < PROGRESS_MIN_MEMBERS
    )
    for member in progress:
        if not member.name:
            continue
        target = folder / member.name
        try:
            if member.kind == "directory":
                target.mkdir(parents=True, exist_ok=True)
                created_folders.add(target)
                counts["folders"] += 1
            elif member.kind == "file":
                make_parent(target)
                _write_member(reader, member, target)
                counts["files"] += 1
        except OSError as error:
            raise PipelineError(f"{reader.label}: cannot extract entry {member.name!r}: {error}") from error
    # Links come last so that every file they point to exists; none is created as a symlink.
    by_name = {member.name: member for member in members}
    for member in members:
        if member.kind not in ("symlink", "hardlink") or not member.name:
            continue
        target_member = _resolve_link(member, by_name)
        if target_member is None:
            logger.warning(
                "%s: skipping link %r -> %r (not a regular file of the archive)",
                reader.label, member.name, member.link_target,
            )
            counts["links_skipped"] += 1
            continue
        target = folder / member.name
        try:
            make_parent(target)
            if target.exists() or target.is_symlink():
                target.unlink()
            _link_or_copy(folder / target_member.name, target)
        except OSError as error:
            raise PipelineError(f"{reader.label}: cannot extract link {member.name!r}: {error}") from error
        counts["links"] += 1
    return counts


def remove_stale_partials(destination: Path) -> None:
    """Remove the temporary folders that a killed earlier build of ``destination`` left behind."""
    for prefix in (f".{destination.name}.partial-", f".{destination.name}.old-"):
        for stale in destination.parent.glob(f"{_glob_escape(prefix)}*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def _glob_escape(text: str) -> str:
    """Escape glob special characters so a literal name can be used as a pattern prefix."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def replace_folder(built: Path, destination: Path) -> None:
    """Swap a completely built folder in place of ``destination`` (which may not exist).

    The old folder is first renamed aside and only removed after the new one is in place, so
    at every moment ``destination`` is either the old complete tree or the new one.
    """
    old = None
    if destination.exists() or destination.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
        old.rmdir()
        os.replace(destination, old)
    os.replace(built, destination)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def extract_archive(
    archive: str | Path | Sequence[str | Path],
    destination: str | Path,
    *,
    force: bool = False,
    digest: Callable[[Path], str] = files.file_digest,
) -> Path:
    """Extract an archive, or a multi-part set given as a list of its files, into ``destination``.

    Returns ``destination``. When its ``.extracted.json`` marker records the same archive files,
    nothing is done (unless ``force``). Every entry is checked before anything is written; an
    unsafe one raises ``UnsafeArchiveError`` and leaves the destination untouched. ``digest``
    computes the md5 recorded in the marker (callers with a digest cache pass their own).
    """
    plan = _plan_archive_set(archive)
    destination = Path(destination)
    if not force and _marker_matches(destination, plan.paths, digest):
        logger.info("%s: already extracted in %s", plan.label, destination)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(destination)
    reader = _open_reader(plan)
    try:
        members = reader.members()
        needed = sum(member.size for member in members if member.kind == "file")
        _check_disk_space(plan.label, destination.parent, needed)
        partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
        try:
            counts = _extract_into(reader, members, partial)
            files.write_json(
                partial / MARKER_NAME,
                {
                    "archives": _describe_archives(plan.paths, digest),
                    "format": plan.kind,
                    "entries": len(members),
                    "bytes": needed,
                    **counts,
                },
            )
            replace_folder(partial, destination)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        reader.close()
    logger.info("%s: extracted %d files into %s", plan.label, counts["files"], destination)
    return destination

