"""Safe extraction of dataset archives: zip, tar (plain, gz, bz2, xz), RAR, and multi-part sets.

``archive_sets`` recognises archive files and groups multi-part sets; ``archive_readers``
lists and checks their entries (through ``archive_streams`` for split zips and bounded tar
streams). This module writes them, defensively:

- nothing is written before every entry has been checked (see ``archive_readers``);
- no symbolic link is ever created: a link whose target is a regular file of the same archive
  is written as a hard link to (or copy of) that file, and any other link inside the tree is
  skipped with a warning, so no later write can be redirected through a link;
- files are opened with ``O_NOFOLLOW`` and written with plain permissions (no setuid bits);
- decompression bombs are stopped: the sizes the archive declares, and then the bytes actually
  written while streaming, must stay within ``get_data.max_expansion_ratio`` times the
  archive's own size and within ``get_data.max_extracted_gb``;
- free disk space is checked against the sum of the entries' sizes first;
- the archive is extracted into a temporary sibling folder that is renamed to the destination
  only when complete, with a ``.extracted.json`` marker; any error (a damaged entry, a limit,
  a full disk) removes the partial folder and leaves an earlier complete extraction in place.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from emotion_classifier import files
# extract_archive raises UnsafeArchiveError; RAR_TOOLS names the tools it can use for RAR.
from emotion_classifier.archive_readers import (  # noqa: F401 - re-exported for extract_archive's callers
    RAR_TOOLS,
    Member,
    UnsafeArchiveError,
    damaged,
    open_reader,
    read_members,
)
from emotion_classifier.archive_sets import plan_archive_set
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import GetDataConfig

logger = logging.getLogger(__name__)

MARKER_NAME = ".extracted.json"

# Archives with more entries than this get a progress bar while extracting.
PROGRESS_MIN_MEMBERS = 200
# Extra free space kept on the disk beyond the archive's content.
DISK_SPACE_MARGIN_BYTES = 64 * 1024 * 1024
# Symbolic links pointing to links are followed this many times at most (a cycle stops there).
MAX_LINK_DEPTH = 16
# Entries are streamed in pieces of this size; the limits are checked after each piece.
COPY_CHUNK_BYTES = 1 << 20
# The expansion ratio applies beyond this many bytes only: a small archive of text (a label
# file compresses 10 to 50 times) must not look like a bomb.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024
# Every entry counts this much towards the limits besides its content (a tar header's size),
# so an archive of millions of empty files cannot exhaust the disk's inodes either.
ENTRY_OVERHEAD_BYTES = 512
BYTES_PER_GB = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class ExtractionLimits:
    """How far an archive may expand: a ratio to its own size, and an absolute size."""

    max_expansion_ratio: float
    max_extracted_bytes: int

    @classmethod
    def from_settings(cls, settings: GetDataConfig) -> "ExtractionLimits":
        return cls(settings.max_expansion_ratio, int(settings.max_extracted_gb * BYTES_PER_GB))


DEFAULT_LIMITS = ExtractionLimits.from_settings(GetDataConfig())


class _ExpansionBudget:
    """Counts what an extraction writes and stops it at the first byte beyond the limits."""

    def __init__(self, label: str, archive_bytes: int, limits: ExtractionLimits):
        self.label = label
        self.archive_bytes = archive_bytes
        self.limits = limits
        by_ratio = max(limits.max_expansion_ratio * archive_bytes, RATIO_FLOOR_BYTES)
        self.allowed = int(min(by_ratio, limits.max_extracted_bytes))
        self.written = 0

    def _problem(self, size: int) -> str | None:
        if size <= self.allowed:
            return None
        if self.allowed == self.limits.max_extracted_bytes:
            return (f"more than get_data.max_extracted_gb = {self.limits.max_extracted_bytes / BYTES_PER_GB:g} "
                    f"({_format_size(self.limits.max_extracted_bytes)})")
        return (f"more than get_data.max_expansion_ratio = {self.limits.max_expansion_ratio:g} times the "
                f"archive's own size of {_format_size(self.archive_bytes)}")

    def check_declared(self, declared: int) -> None:
        """Refuse an archive whose declared content already exceeds the limits; nothing is written."""
        problem = self._problem(declared)
        if problem:
            raise PipelineError(
                f"{self.label}: refused as a possible decompression bomb: its entries declare "
                f"{_format_size(declared)}, {problem}; nothing was extracted (raise the limit if the "
                "archive is genuine)"
            )

    def add(self, count: int, entry: str) -> None:
        """Count bytes just written; stop the extraction as soon as they pass the limits."""
        self.written += count
        problem = self._problem(self.written)
        if problem:
            raise PipelineError(
                f"{self.label}: extraction stopped as a possible decompression bomb at entry {entry!r}: "
                f"{_format_size(self.written)} written, {problem}; the partial output was removed "
                "(raise the limit if the archive is genuine)"
            )


# ---------------------------------------------------------------------------------------------
# The marker that makes a re-run free


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
    return _marker_matches(Path(destination), plan_archive_set(archive).paths, digest)


# ---------------------------------------------------------------------------------------------
# Writing


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


def _set_modified(target: Path, modified: float | None) -> None:
    """Give the file the archive's timestamp; an absurd one is left out, it is not worth failing."""
    if modified is None:
        return
    try:
        os.utime(target, (modified, modified))
    except (OverflowError, ValueError, OSError):
        logger.debug("%s: keeping the extraction time instead of %r", target, modified)


def _write_member(reader, member: Member, target: Path, budget: _ExpansionBudget) -> None:
    """Stream one regular file out of the archive, never following a symbolic link.

    Every piece is counted against the budget as it is written, so an entry that expands far
    beyond what the archive declared is stopped after at most one piece too many.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(target, flags, 0o644)
    with os.fdopen(descriptor, "wb") as output, reader.open(member) as source:
        while chunk := source.read(COPY_CHUNK_BYTES):
            output.write(chunk)
            budget.add(len(chunk), member.name)
    _set_modified(target, member.modified)


def _resolve_link(member: Member, by_name: dict[str, Member]) -> Member | None:
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


def _write_entries(reader, members: list[Member], folder: Path, budget: _ExpansionBudget) -> dict[str, int]:
    """Write every folder and regular file under ``folder``; return their counts."""
    created_folders: set[Path] = {folder}
    counts = {"files": 0, "folders": 0}
    progress = tqdm(
        members, desc=f"extracting {reader.label}", unit="entry", disable=len(members) < PROGRESS_MIN_MEMBERS
    )
    for member in progress:
        if not member.name or member.kind not in ("directory", "file"):
            continue
        target = folder / member.name
        budget.add(ENTRY_OVERHEAD_BYTES, member.name)
        try:
            if member.kind == "directory":
                target.mkdir(parents=True, exist_ok=True)
                created_folders.add(target)
                counts["folders"] += 1
                continue
            if target.parent not in created_folders:
                target.parent.mkdir(parents=True, exist_ok=True)
                created_folders.add(target.parent)
            _write_member(reader, member, target, budget)
            counts["files"] += 1
        except PipelineError:
            raise
        except OSError as error:
            raise PipelineError(f"{reader.label}: cannot extract entry {member.name!r}: {error}") from error
        except reader.errors as error:
            raise damaged(reader.label, member.name, error) from error
    return counts


def _write_links(label: str, members: list[Member], folder: Path, budget: _ExpansionBudget) -> dict[str, int]:
    """Links come last so that every file they point to exists; none is created as a symlink."""
    counts = {"links": 0, "links_skipped": 0}
    by_name = {member.name: member for member in members}
    for member in members:
        if member.kind not in ("symlink", "hardlink") or not member.name:
            continue
        target_member = _resolve_link(member, by_name)
        if target_member is None:
            logger.warning(
                "%s: skipping link %r -> %r (not a regular file of the archive)",
                label, member.name, member.link_target,
            )
            counts["links_skipped"] += 1
            continue
        target = folder / member.name
        # A copy (where hard links are refused) costs the target's size again.
        budget.add(ENTRY_OVERHEAD_BYTES + target_member.size, member.name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            _link_or_copy(folder / target_member.name, target)
        except OSError as error:
            raise PipelineError(f"{label}: cannot extract link {member.name!r}: {error}") from error
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


def _extract_checked(reader, plan, destination: Path, budget: _ExpansionBudget, digest) -> int:
    """Check the reader's entries, extract them beside ``destination`` and swap them in."""
    members = read_members(reader, budget.check_declared)
    declared = sum(member.size for member in members if member.kind == "file")
    budget.check_declared(declared + ENTRY_OVERHEAD_BYTES * len(members))
    _check_disk_space(plan.label, destination.parent, declared)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        counts = _write_entries(reader, members, partial, budget)
        counts.update(_write_links(plan.label, members, partial, budget))
        record = {"archives": _describe_archives(plan.paths, digest), "format": plan.kind,
                  "entries": len(members), "bytes": declared, **counts}
        files.write_json(partial / MARKER_NAME, record)
        replace_folder(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return counts["files"]


def extract_archive(
    archive: str | Path | Sequence[str | Path],
    destination: str | Path,
    *,
    force: bool = False,
    digest: Callable[[Path], str] = files.file_digest,
    limits: ExtractionLimits = DEFAULT_LIMITS,
) -> Path:
    """Extract an archive, or a multi-part set given as a list of its files, into ``destination``.

    Returns ``destination``. When its ``.extracted.json`` marker records the same archive files,
    nothing is done (unless ``force``). Every entry is checked before anything is written; an
    unsafe one raises ``UnsafeArchiveError``, a damaged one or one beyond ``limits`` raises
    ``PipelineError``, and either leaves the destination as it was. ``digest`` computes the md5
    recorded in the marker (callers with a digest cache pass their own).
    """
    plan = plan_archive_set(archive)
    destination = Path(destination)
    if not force and _marker_matches(destination, plan.paths, digest):
        logger.info("%s: already extracted in %s", plan.label, destination)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(destination)
    budget = _ExpansionBudget(plan.label, sum(path.stat().st_size for path in plan.paths), limits)
    # A tar stream holds its entries' content and a header per entry; both count in the budget.
    reader = open_reader(plan, budget.allowed + COPY_CHUNK_BYTES)
    try:
        extracted_files = _extract_checked(reader, plan, destination, budget, digest)
    finally:
        try:
            reader.close()
        except reader.errors as error:
            # Closing a damaged stream can fail too; the error that matters was raised already.
            logger.debug("%s: closing the archive failed: %s", plan.label, error)
    logger.info("%s: extracted %d files into %s", plan.label, extracted_files, destination)
    return destination
