"""Download the raw dataset archives from Google Drive into ``data/raw``.

``get_data.py`` calls :func:`download` when ``get_data.source_kind = "drive"``; signing in is
``drive_auth``'s job and listing the folder ``drive_listing``'s. Each file travels through the
client library's chunked media download into ``<name>.partial``; a sidecar
``<name>.partial.json`` records which remote version (id, size, md5) the partial bytes belong
to, so an interrupted run (Ctrl-C, a dropped connection, a killed process) continues each
partial file from its last byte on the next run, while a partial file of a different remote
version is discarded. A finished file is checked against the size and ``md5Checksum`` that
Drive reports before it is renamed to its final name, and the check is recorded in
``.drive-downloads.json`` so a verified file is never fetched (or hashed) again.

Rate limits and server errors are retried with exponential backoff; a permanent error (403, 404)
or a checksum mismatch fails that file only, and the caller gets the list of failures. Problems
that stop everything (no credentials, folder not found) raise :class:`errors.PipelineError`.
No token, key or client secret is ever printed or logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

import google.auth.credentials
import google.auth.exceptions
import googleapiclient.errors
import googleapiclient.http
from tqdm import tqdm

from emotion_classifier.errors import PipelineError
from emotion_classifier.config import GetDataConfig
from emotion_classifier.drive_auth import DOCS_HINT, build_service, load_credentials, rejected_credentials_message
from emotion_classifier.drive_listing import (
    TRANSPORT_ERRORS,
    DriveFile,
    Retrier,
    describe_error,
    is_transient,
    list_remote_files,
)
from emotion_classifier.files import file_digest, read_json, write_json

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".partial.json"
LEDGER_NAME = ".drive-downloads.json"
# Tries after the first for a request that fails transiently, and the download chunk size.
MAX_RETRIES = 6
CHUNK_SIZE = 16 * 1024 * 1024
# The Drive API's address: empty for Google's; tests point it at a local fake server.
API_ENDPOINT = ""


@dataclasses.dataclass
class DriveDownloadResult:
    """What a download run achieved: verified local files and per-file failures."""

    # Every verified file (fetched now or verified by an earlier run), inside the destination.
    files: list[Path] = dataclasses.field(default_factory=list)
    # The files among them that this run fetched (wholly or the rest of a partial file).
    fetched: list[Path] = dataclasses.field(default_factory=list)
    # (file name or ID, reason) for every file that could not be brought in.
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # Bytes transferred by this run (resumed files count only their missing bytes).
    downloaded_bytes: int = 0
    # Files that an earlier run had already verified and that were not fetched again.
    already_present: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """A few lines for the log and the terminal: counts first, then one line per failure."""
        lines = [
            f"Google Drive: {len(self.files)} file(s) verified ({self.already_present} already present, "
            f"{self.downloaded_bytes:,} bytes transferred), {len(self.failures)} failed"
        ]
        lines += [f"  failed: {name}: {reason}" for name, reason in self.failures]
        return "\n".join(lines)


class _FileFailure(Exception):
    """A problem that fails one file (bad checksum, unsupported type) but not the whole run."""


class ResumingMediaDownload(googleapiclient.http.MediaIoBaseDownload):
    """The library's chunked media download, starting at byte ``start`` instead of byte 0.

    ``MediaIoBaseDownload`` keeps its position in ``_progress`` and sends every chunk request as
    ``Range: bytes=<progress>-<progress + chunksize - 1>`` (googleapiclient/http.py,
    ``next_chunk``). It has no public way to start elsewhere, so we set that one attribute once,
    here. We prefer this to sending ranged requests ourselves because the library keeps doing
    what it does well: chunking, following ``Content-Location``, reading the total size from
    ``Content-Range`` and finishing exactly when the last byte arrived. The resume test pins this
    behaviour down against a real HTTP server, so a library change that breaks it fails loudly.
    """

    def __init__(self, file_handle, request, chunksize: int, start: int):
        super().__init__(file_handle, request, chunksize=chunksize)
        if not hasattr(self, "_progress"):  # pragma: no cover - only if the library changes
            raise RuntimeError(
                "googleapiclient.http.MediaIoBaseDownload no longer has _progress; cannot resume"
            )
        self._progress = start

    @property
    def bytes_received(self) -> int:
        """Bytes of the file written so far, counting those of the earlier runs."""
        return self._progress


class _Ledger:
    """``.drive-downloads.json``: which local files were verified against which remote version."""

    def __init__(self, destination: Path):
        self.path = destination / LEDGER_NAME
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            try:
                loaded = read_json(self.path)
                if isinstance(loaded, dict):
                    self.records = loaded
            except (OSError, ValueError):
                logger.warning("%s is unreadable; local files will be checked again", self.path)

    def is_verified(self, remote: DriveFile, local: Path) -> bool:
        record = self.records.get(remote.relative_path.as_posix())
        if not record or not local.is_file():
            return False
        status = local.stat()
        return (
            record.get("id") == remote.file_id
            and record.get("md5") == remote.md5
            and record.get("size") == remote.size == status.st_size
            and record.get("mtime_ns") == status.st_mtime_ns
        )

    def record(self, remote: DriveFile, local: Path) -> None:
        self.records[remote.relative_path.as_posix()] = {
            "id": remote.file_id,
            "md5": remote.md5,
            "size": remote.size,
            "mtime_ns": local.stat().st_mtime_ns,
        }
        write_json(self.path, self.records)


class _Downloader:
    """Brings one DriveFile at a time into the destination folder, resuming and verifying it."""

    def __init__(self, service, destination: Path, retrier: Retrier, chunk_size: int, total_bar: tqdm):
        self.service = service
        self.destination = destination
        self.retrier = retrier
        self.chunk_size = chunk_size
        self.total_bar = total_bar
        self.ledger = _Ledger(destination)
        self.transferred_bytes = 0

    def is_present(self, remote: DriveFile) -> bool:
        """True when the final file already holds this remote version (checked once, then recorded)."""
        local = self.destination / remote.relative_path
        if not local.is_file():
            return False
        if self.ledger.is_verified(remote, local):
            return True
        # A file that got here another way (copied by hand, an older ledger): check it once.
        if local.stat().st_size == remote.size and (remote.md5 is None or file_digest(local) == remote.md5):
            self.ledger.record(remote, local)
            return True
        logger.warning("%s differs from the file in Drive; downloading the Drive version", local)
        return False

    def fetch(self, remote: DriveFile) -> Path:
        """Download (or finish downloading) ``remote``, verify it and move it to its final name."""
        final = self.destination / remote.relative_path
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        sidecar = final.with_name(final.name + SIDECAR_SUFFIX)
        version = {"id": remote.file_id, "size": remote.size, "md5": remote.md5}
        start = self._resume_offset(partial, sidecar, version)
        if start == 0:
            write_json(sidecar, version)
            partial.write_bytes(b"")
        self.total_bar.update(start)
        try:
            if start < remote.size:
                self._transfer(remote, partial, start)
        except BaseException:
            # Bytes already received are kept for the next run to continue from; an empty
            # partial file (the first request failed, a 404) would only be clutter.
            if partial.is_file() and partial.stat().st_size == 0:
                partial.unlink()
                sidecar.unlink(missing_ok=True)
            raise
        self._verify(remote, partial, sidecar)
        os.replace(partial, final)
        sidecar.unlink(missing_ok=True)
        self.ledger.record(remote, final)
        return final

    @staticmethod
    def _resume_offset(partial: Path, sidecar: Path, version: dict) -> int:
        """Bytes already on disk for this exact remote version; 0 (and no partial) otherwise."""
        if not partial.is_file():
            return 0
        try:
            recorded = read_json(sidecar)
        except (OSError, ValueError):
            recorded = None
        size_on_disk = partial.stat().st_size
        if recorded == version and size_on_disk <= version["size"]:
            if size_on_disk:
                logger.info("resuming %s at byte %d of %d", partial.name, size_on_disk, version["size"])
            return size_on_disk
        logger.info("discarding %s: it belongs to a different version of the file in Drive", partial)
        partial.unlink()
        return 0

    def _transfer(self, remote: DriveFile, partial: Path, start: int) -> None:
        request = self.service.files().get_media(fileId=remote.file_id, supportsAllDrives=True)
        # Append mode: the bytes already on disk stay, each chunk is added after them. If the
        # process dies mid-write, the file still holds a correct prefix, and the next run
        # continues from whatever length it finds.
        with open(partial, "ab") as handle, tqdm(
            total=remote.size, initial=start, desc=remote.name[:40], unit="B",
            unit_scale=True, unit_divisor=1024, leave=False, position=1,
        ) as file_bar:
            downloader = ResumingMediaDownload(handle, request, chunksize=self.chunk_size, start=start)
            done = False
            while not done:
                before = downloader.bytes_received
                _, done = self.retrier.call(
                    lambda: downloader.next_chunk(num_retries=0), f"downloading {remote.name}"
                )
                # Hand each chunk to the operating system at once, so a killed process loses at
                # most the chunk in flight, not everything still sitting in Python's buffer.
                handle.flush()
                received = downloader.bytes_received - before
                if received == 0 and not done:
                    raise _FileFailure("the server sent no data for a chunk; try again later")
                self.transferred_bytes += received
                file_bar.update(received)
                self.total_bar.update(received)

    @staticmethod
    def _verify(remote: DriveFile, partial: Path, sidecar: Path) -> None:
        """Size, then md5, against what Drive reports; a bad file is removed, never kept."""
        size = partial.stat().st_size
        problem = None
        if size != remote.size:
            problem = f"size mismatch: Drive reports {remote.size} bytes, received {size}"
        elif remote.md5 is None:
            logger.warning("%s: Drive reports no md5Checksum; only its size was checked", remote.name)
        else:
            digest = file_digest(partial)
            if digest != remote.md5:
                problem = f"md5 mismatch: Drive reports {remote.md5}, received {digest}"
        if problem:
            partial.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise _FileFailure(f"{problem}; the bad download was removed, the next run fetches it again")


def download(
    settings: GetDataConfig,
    destination: Path,
    *,
    credentials: google.auth.credentials.Credentials | None = None,
    authorize: Callable[[Path], google.auth.credentials.Credentials] | None = None,
    retry_base_delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    chunk_size: int | None = None,
) -> DriveDownloadResult:
    """Download the configured Drive folder or files into ``destination`` and verify each file.

    ``credentials`` (tests) skips :func:`load_credentials`; ``retry_base_delay`` and ``sleep``
    set the backoff (the first retry waits ``retry_base_delay`` seconds, then twice as long...);
    ``chunk_size`` in bytes overrides ``CHUNK_SIZE``. Per-file problems end up
    in ``result.failures``; a problem that stops everything raises ``PipelineError``.
    """
    if not settings.drive_folder_id and not settings.drive_file_ids:
        raise PipelineError(
            "get_data.source_kind is \"drive\" but neither get_data.drive_folder_id nor "
            "get_data.drive_file_ids is set; give the folder ID from the folder's sharing link, e.g. "
            f"get_data.drive_folder_id=1AbC... ({DOCS_HINT})"
        )
    chunk_size = chunk_size if chunk_size is not None else CHUNK_SIZE
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    retrier = Retrier(MAX_RETRIES, retry_base_delay, sleep)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if credentials is None:
        credentials = load_credentials(settings, authorize)
    service = build_service(credentials, API_ENDPOINT)
    try:
        result = _download_all(service, settings, destination, retrier, chunk_size)
    except google.auth.exceptions.RefreshError:
        raise PipelineError(rejected_credentials_message(settings)) from None
    except googleapiclient.errors.HttpError as error:
        if error.resp.status == 401:
            raise PipelineError(rejected_credentials_message(settings)) from None
        raise
    logger.info("%s", result.summary())
    return result



def _download_all(
    service, settings: GetDataConfig, destination: Path, retrier: Retrier, chunk_size: int
) -> DriveDownloadResult:
    remote_files, failures = list_remote_files(service, settings, retrier)
    result = DriveDownloadResult(failures=list(failures))
    total_size = sum(remote.size for remote in remote_files)
    with tqdm(
        total=total_size, desc="Google Drive total", unit="B", unit_scale=True, unit_divisor=1024, position=0
    ) as total_bar:
        downloader = _Downloader(service, destination, retrier, chunk_size, total_bar)
        for remote in remote_files:
            label = remote.relative_path.as_posix()
            try:
                if downloader.is_present(remote):
                    result.already_present += 1
                    result.files.append(destination / remote.relative_path)
                    total_bar.update(remote.size)
                    continue
                fetched = downloader.fetch(remote)
                result.files.append(fetched)
                result.fetched.append(fetched)
            except _FileFailure as error:
                logger.error("%s: %s", label, error)
                result.failures.append((label, str(error)))
            except googleapiclient.errors.HttpError as error:
                if error.resp.status == 401:
                    raise
                reason = describe_error(error)
                if is_transient(error):
                    reason += f" after {retrier.max_retries + 1} tries; the next run resumes it"
                logger.error("%s: %s", label, reason)
                result.failures.append((label, reason))
            except TRANSPORT_ERRORS as error:
                reason = (
                    f"{describe_error(error)} after {retrier.max_retries + 1} tries; the next run resumes it"
                )
                logger.error("%s: %s", label, reason)
                result.failures.append((label, reason))
        result.downloaded_bytes = downloader.transferred_bytes
    return result

