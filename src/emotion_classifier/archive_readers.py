"""Reading zip, tar and RAR archives as lists of checked entries.

Archives are untrusted input, so every entry is checked before anything is written: absolute
paths, ``..`` components, links whose target lies outside the destination, device files, fifos
and sockets, names that are not valid UTF-8 and two entries of the same name are refused with
an ``UnsafeArchiveError`` that names the archive and the entry. Damaged archives (a bad CRC, a
corrupt compressed stream, a truncated file) raise ``PipelineError`` naming the archive and the
entry, whatever exception the format's library raised.
"""

from __future__ import annotations

import dataclasses
import lzma
import posixpath
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from typing import BinaryIO, Callable, Iterator

from emotion_classifier.archive_sets import ArchivePlan
from emotion_classifier.archive_streams import ConcatenatedFile, open_tar_stream
from emotion_classifier.errors import PipelineError

RAR_TOOLS = ("unrar", "unar", "bsdtar", "7z")
# A symbolic link's target is read into memory; no real path is longer than this (PATH_MAX).
MAX_LINK_TARGET_BYTES = 4096

# What the standard library's archive modules raise on damaged or hostile data: bad CRCs
# (BadZipFile), corrupt deflate, bzip2 or xz streams (zlib.error, OSError, LZMAError), truncated
# files (EOFError), undecodable names (UnicodeDecodeError is a ValueError), unsupported
# compression methods (NotImplementedError) and encrypted entries (RuntimeError).
DAMAGED_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    OverflowError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
)


class UnsafeArchiveError(PipelineError):
    """An archive entry that would write outside the destination or create a special file."""


@dataclasses.dataclass
class Member:
    """One archive entry after its name has been checked."""

    name: str  # safe relative path with forward slashes
    kind: str  # "file", "directory", "symlink", "hardlink"
    size: int
    modified: float | None  # POSIX timestamp, if the archive records one
    link_target: str = ""  # for links: the checked target, relative to the destination
    handle: object = None  # the format's own entry object, to read the content


def unsafe(label: str, entry: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: refusing entry {entry!r}: {reason}; nothing was extracted")


def damaged(label: str, entry: str | None, error: BaseException) -> PipelineError:
    """The message for an archive whose content cannot be read, naming the entry if known."""
    where = f"entry {entry!r}: " if entry is not None else ""
    detail = str(error) or type(error).__name__
    return PipelineError(f"{label}: {where}damaged or unreadable archive ({type(error).__name__}: {detail})")


def _is_absolute(name: str) -> bool:
    return name.startswith("/") or re.match(r"^[A-Za-z]:", name) is not None


def safe_name(label: str, raw_name: str) -> str:
    """Return ``raw_name`` as a relative path inside the destination, or raise.

    Backslashes count as separators because archives made on Windows use them. An empty
    result (the entry ``./``) is returned as ``""`` and means the destination itself.
    """
    if "\x00" in raw_name:
        raise unsafe(label, raw_name, "the name contains a NUL character")
    try:
        raw_name.encode("utf-8")
    except UnicodeEncodeError:
        # tarfile hands undecodable bytes over as lone surrogates; such a name cannot be written
        # into the UTF-8 label and manifest files, so the archive is refused, not half-used.
        raise unsafe(label, raw_name, "the name is not valid UTF-8; re-create the archive with UTF-8 names") from None
    name = raw_name.replace("\\", "/")
    if _is_absolute(name):
        raise unsafe(label, raw_name, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise unsafe(label, raw_name, "'..' path component would write outside the destination")
    return "/".join(parts)


def symlink_target(label: str, member_name: str, raw_target: str) -> str:
    """Resolve a symbolic link's target against its folder; raise if it leaves the destination."""
    target = raw_target.replace("\\", "/")
    if not target or "\x00" in target:
        raise unsafe(label, member_name, f"symbolic link with an invalid target {raw_target!r}")
    if _is_absolute(target):
        raise unsafe(label, member_name, f"symbolic link to an absolute path {raw_target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member_name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise unsafe(label, member_name, f"symbolic link to {raw_target!r} points outside the destination")
    return "" if resolved == "." else resolved


def hardlink_target(label: str, member_name: str, raw_target: str) -> str:
    """A hard link's target is relative to the archive root; it must stay inside."""
    target = raw_target.replace("\\", "/")
    if _is_absolute(target):
        raise unsafe(label, member_name, f"hard link to an absolute path {raw_target!r}")
    parts = [part for part in target.split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        raise unsafe(label, member_name, f"hard link to {raw_target!r} points outside the destination")
    return "/".join(parts)


def check_unique_names(label: str, members: list[Member]) -> None:
    """Refuse two entries that would be written to the same path (the second would overwrite)."""
    kinds: dict[str, str] = {}
    for member in members:
        if not member.name:
            continue
        earlier = kinds.get(member.name)
        if earlier is not None and not (earlier == member.kind == "directory"):
            raise unsafe(
                label, member.name, f"the archive holds two entries of this name ({earlier} and {member.kind}); "
                "the second would overwrite the first"
            )
        kinds[member.name] = member.kind


def _timestamp(date_time: Sequence[int] | None) -> float | None:
    """A zip or RAR entry's local date and time as a POSIX timestamp; None when absent or absurd."""
    if not date_time or date_time[0] < 1980:
        return None
    try:
        return time.mktime(tuple(date_time) + (0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _is_special(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class ZipReader:
    """Members of a zip file (or of split zip pieces read as one)."""

    errors = DAMAGED_ARCHIVE_ERRORS

    def __init__(self, plan: ArchivePlan):
        self.label = plan.label
        source: object = plan.paths[0] if plan.kind == "zip" else ConcatenatedFile(plan.paths)
        try:
            self._zip = zipfile.ZipFile(source)
        except DAMAGED_ARCHIVE_ERRORS as error:
            if isinstance(source, ConcatenatedFile):
                source.close()
            message = f"{self.label}: not a readable zip archive ({type(error).__name__}: {error})"
            if plan.kind == "split_zip":
                message += (f"; the end of the archive is missing after {plan.paths[-1].name}, so a later "
                            "piece is probably missing or incomplete")
            raise PipelineError(message) from error
        self._source = source

    def members(self) -> Iterator[Member]:
        for info in self._zip.infolist():
            name = safe_name(self.label, info.filename)
            mode = info.external_attr >> 16
            modified = _timestamp(info.date_time)
            if info.flag_bits & 0x1:
                raise PipelineError(f"{self.label}: entry {info.filename!r} is encrypted; extract it by hand")
            if stat.S_ISLNK(mode):
                if info.file_size > MAX_LINK_TARGET_BYTES:
                    raise unsafe(self.label, info.filename, f"symbolic link with a {info.file_size}-byte target")
                try:
                    raw_target = self._zip.read(info).decode("utf-8", errors="replace")
                except DAMAGED_ARCHIVE_ERRORS as error:
                    raise damaged(self.label, info.filename, error) from error
                target = symlink_target(self.label, name or info.filename, raw_target)
                yield Member(name, "symlink", 0, modified, target)
            elif _is_special(mode):
                raise unsafe(self.label, info.filename, "device file, fifo or socket")
            elif info.is_dir():
                yield Member(name, "directory", 0, modified)
            else:
                yield Member(name, "file", info.file_size, modified, handle=info)

    def open(self, member: Member) -> BinaryIO:
        return self._zip.open(member.handle)

    def close(self) -> None:
        self._zip.close()
        if isinstance(self._source, ConcatenatedFile):
            self._source.close()


class TarReader:
    """Members of a tar file, plain or compressed (gzip, bzip2, xz), read within ``limit`` bytes."""

    errors = DAMAGED_ARCHIVE_ERRORS

    def __init__(self, plan: ArchivePlan, limit: int):
        self.label = plan.label
        self._stream = None
        try:
            self._stream = open_tar_stream(plan.paths[0], limit, plan.label)
            self._tar = tarfile.open(fileobj=self._stream, mode="r:")
        except PipelineError:
            self._close_stream()
            raise
        except DAMAGED_ARCHIVE_ERRORS as error:
            self._close_stream()
            raise PipelineError(
                f"{self.label}: not a readable tar archive ({type(error).__name__}: {error})"
            ) from error

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def members(self) -> Iterator[Member]:
        # Lazily, header by header: a compressed tar is only decompressed as far as the limits
        # that ``read_members`` checks on the way allow.
        for info in self._tar:
            yield self._member(info)

    def _member(self, info: tarfile.TarInfo) -> Member:
        name = safe_name(self.label, info.name)
        if info.issym():
            return Member(name, "symlink", 0, info.mtime, symlink_target(self.label, name or info.name, info.linkname))
        if info.islnk():
            return Member(name, "hardlink", 0, info.mtime, hardlink_target(self.label, info.name, info.linkname))
        if info.ischr() or info.isblk() or info.isfifo():
            raise unsafe(self.label, info.name, "device file or fifo")
        if info.isdir():
            return Member(name, "directory", 0, info.mtime)
        if info.isfile():
            return Member(name, "file", info.size, info.mtime, handle=info)
        raise unsafe(self.label, info.name, f"unsupported tar entry type {info.type!r}")

    def open(self, member: Member) -> BinaryIO:
        handle = self._tar.extractfile(member.handle)
        if handle is None:  # pragma: no cover - extractfile returns None only for non-files
            raise PipelineError(f"{self.label}: cannot read entry {member.name!r}")
        return handle

    def close(self) -> None:
        self._tar.close()
        self._close_stream()


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


class RarReader:
    """Members of a RAR archive or multi-volume set, read through the rarfile package."""

    def __init__(self, plan: ArchivePlan):
        self.label = plan.label
        self._rarfile = _require_rar_backend()
        self.errors = DAMAGED_ARCHIVE_ERRORS + (self._rarfile.Error,)
        try:
            # rarfile finds the following volumes beside the first one.
            self._rar = self._rarfile.RarFile(str(plan.paths[0]))
            needs_password = self._rar.needs_password()
        except self.errors as error:
            raise PipelineError(
                f"{self.label}: not a readable RAR archive ({type(error).__name__}: {error})"
            ) from error
        if needs_password:
            raise PipelineError(f"{self.label}: the archive is password-protected; extract it by hand")

    def members(self) -> Iterator[Member]:
        for info in self._rar.infolist():
            yield self._member(info)

    def _member(self, info) -> Member:
        rarfile = self._rarfile
        name = safe_name(self.label, info.filename)
        modified = _timestamp(info.date_time)
        redirect = getattr(info, "file_redir", None)
        if info.is_symlink():
            if not redirect and info.file_size > MAX_LINK_TARGET_BYTES:
                raise unsafe(self.label, info.filename, f"symbolic link with a {info.file_size}-byte target")
            raw_target = redirect[2] if redirect else self._rar.read(info).decode("utf-8", "replace")
            return Member(name, "symlink", 0, modified, symlink_target(self.label, name or info.filename, raw_target))
        if redirect and redirect[0] in (rarfile.RAR5_XREDIR_HARD_LINK, rarfile.RAR5_XREDIR_FILE_COPY):
            return Member(name, "hardlink", 0, modified, hardlink_target(self.label, info.filename, redirect[2]))
        if redirect:
            raise unsafe(self.label, info.filename, f"unsupported link type {redirect[0]}")
        if info.host_os == rarfile.RAR_OS_UNIX and _is_special(info.mode or 0):
            raise unsafe(self.label, info.filename, "device file, fifo or socket")
        if info.is_dir():
            return Member(name, "directory", 0, modified)
        return Member(name, "file", info.file_size, modified, handle=info)

    def open(self, member: Member) -> BinaryIO:
        return self._rar.open(member.handle)

    def close(self) -> None:
        self._rar.close()


def open_reader(plan: ArchivePlan, limit: int):
    """The reader for the plan's format; its ``errors`` are what its reads may raise.

    ``limit`` bounds what is decompressed to list a tar archive's entries (zip and RAR list
    theirs from a directory whose size the archive file itself bounds).
    """
    if plan.kind in ("zip", "split_zip"):
        return ZipReader(plan)
    if plan.kind == "tar":
        return TarReader(plan, limit)
    return RarReader(plan)


def read_members(reader, check_declared: Callable[[int], None]) -> list[Member]:
    """Every entry of the archive, checked; two entries with one name are refused.

    ``check_declared`` receives the running total of the sizes the entries declare after each
    entry, so a limit stops the listing early instead of after reading a whole bomb.
    """
    members: list[Member] = []
    declared = 0
    try:
        for member in reader.members():
            members.append(member)
            declared += member.size
            check_declared(declared)
    except PipelineError:
        raise
    except reader.errors as error:
        raise damaged(reader.label, members[-1].name if members else None, error) from error
    check_unique_names(reader.label, members)
    return members
