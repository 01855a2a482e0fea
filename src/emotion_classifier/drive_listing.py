"""Listing what to download from Google Drive, and retrying Drive requests with backoff.

The source is a Drive folder (every file in it, recursively, shared drives included, shortcuts
followed) or an explicit list of file IDs. Each file gets a local path below the destination
that cannot leave it. Rate limits, server errors and dropped connections are retried with
exponential backoff; a permanent error fails one item, which the caller reports.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import re
import ssl
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import googleapiclient.errors
import httplib2

from emotion_classifier.errors import PipelineError
from emotion_classifier.config import GetDataConfig
from emotion_classifier.drive_auth import DOCS_HINT

logger = logging.getLogger(__name__)

FOLDER_MIME_TYPE = "application/vnd.google-apps.folder"
SHORTCUT_MIME_TYPE = "application/vnd.google-apps.shortcut"
# Docs, Sheets, Slides... have no binary content; Drive can only export them to another format.
GOOGLE_APPS_MIME_PREFIX = "application/vnd.google-apps."
# Exponential backoff never waits longer than this between two tries.
MAX_BACKOFF_SECONDS = 64.0
# Drive IDs are URL-safe base64-like words; checking them keeps a typo or a pasted URL out of
# the search query that lists a folder.
_DRIVE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
_FILE_FIELDS = "id, name, mimeType, size, md5Checksum, driveId, shortcutDetails(targetId, targetMimeType)"
RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
TRANSPORT_ERRORS = (
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    httplib2.HttpLib2Error,
    ssl.SSLError,
)

Result = TypeVar("Result")


@dataclasses.dataclass
class DriveFile:
    """One downloadable Drive file and where it goes below the destination folder."""

    file_id: str
    name: str
    size: int
    md5: str | None
    relative_path: Path


def _http_error_reason(error: googleapiclient.errors.HttpError) -> str:
    """The first ``reason`` of a Drive error body ("notFound", "rateLimitExceeded"...), or ''."""
    try:
        body = json.loads(error.content.decode("utf-8", errors="replace"))
        return str(body["error"]["errors"][0].get("reason", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: 429, 5xx, Drive's 403 rate limits, dropped connections."""
    if isinstance(error, googleapiclient.errors.HttpError):
        status = error.resp.status
        if status == 429 or status >= 500:
            return True
        return status == 403 and _http_error_reason(error) in RATE_LIMIT_REASONS
    return isinstance(error, TRANSPORT_ERRORS)


def describe_error(error: BaseException) -> str:
    """A one-line reason for the summary; never includes request headers (where the token is)."""
    if isinstance(error, googleapiclient.errors.HttpError):
        status = error.resp.status
        reason = _http_error_reason(error)
        if reason in RATE_LIMIT_REASONS or status == 429:
            # Drive answers a used-up quota with 403 too; it is not a permission problem.
            meaning = "rate limited: Drive's download quota is used up for now"
        else:
            meaning = {403: "permission denied", 404: "not found or not shared with this account"}.get(status, "")
        details = ", ".join(part for part in (meaning, reason) if part)
        return f"HTTP {status}" + (f" ({details})" if details else "")
    if isinstance(error, TRANSPORT_ERRORS):
        return f"connection problem ({type(error).__name__}: {error})"
    return str(error)


class Retrier:
    """Calls a function again after a transient error, waiting base, 2 x base, 4 x base... seconds."""

    def __init__(self, max_retries: int, base_delay: float, sleep: Callable[[float], None] = time.sleep):
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        if base_delay < 0:
            raise ValueError(f"retry base delay must not be negative, got {base_delay}")
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.sleep = sleep

    def call(self, function: Callable[[], Result], description: str) -> Result:
        for attempt in range(self.max_retries + 1):
            try:
                return function()
            except Exception as error:  # noqa: BLE001 - filtered right below, others re-raised
                if not is_transient(error) or attempt == self.max_retries:
                    raise
                delay = min(self.base_delay * 2**attempt, MAX_BACKOFF_SECONDS)
                logger.warning(
                    "%s: %s; try %d of %d in %.1f s",
                    description, describe_error(error), attempt + 2, self.max_retries + 1, delay,
                )
                self.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover



def safe_name(name: str, file_id: str) -> str:
    """A Drive name usable as one local path component: no separators, never '.' or '..'."""
    cleaned = re.sub(r"[/\\\x00]", "_", name).strip()
    if cleaned in ("", ".", ".."):
        return file_id
    return cleaned


def _check_drive_id(drive_id: str, key: str) -> None:
    if not _DRIVE_ID_PATTERN.match(drive_id):
        raise PipelineError(
            f"get_data.{key}: {drive_id!r} is not a Drive ID (letters, digits, '-' and '_'; it is the "
            "part after /folders/ or /d/ in the sharing link)"
        )


class _Lister:
    """Turns the configured folder or file IDs into DriveFiles with local relative paths."""

    def __init__(self, service, retrier: Retrier):
        self.service = service
        self.retrier = retrier
        self.files: list[DriveFile] = []
        self.failures: list[tuple[str, str]] = []
        self._taken_paths: set[Path] = set()
        self._visited_folders: set[str] = set()

    def recorded(self, call: Callable[[], Result], label: str) -> Result | None:
        """``call()``'s result, or None after noting under ``label`` why it failed (only this item
        is lost); an expired authorisation (HTTP 401) still stops everything."""
        try:
            return call()
        except googleapiclient.errors.HttpError as error:
            if error.resp.status == 401:
                raise
            self.failures.append((label, describe_error(error)))
        except TRANSPORT_ERRORS as error:
            self.failures.append((label, describe_error(error)))
        return None

    def get_metadata(self, file_id: str) -> dict:
        request = self.service.files().get(fileId=file_id, fields=_FILE_FIELDS, supportsAllDrives=True)
        return self.retrier.call(lambda: request.execute(num_retries=0), f"reading metadata of {file_id}")

    def add_folder(self, folder: dict, relative_folder: Path) -> None:
        """Every file below ``folder``, recursively, placed under ``relative_folder``."""
        pending = [(folder, relative_folder)]
        while pending:
            current, current_path = pending.pop(0)
            # A Drive item may have several parents, so a folder tree can contain a cycle.
            if current["id"] in self._visited_folders:
                continue
            self._visited_folders.add(current["id"])
            is_top = current_path == Path()
            label = f"folder {current.get('name', current['id']) if is_top else current_path.as_posix()}"
            children = self.recorded(lambda: list(self._list_children(current)), label)
            for child in children or []:
                child_path = current_path / safe_name(child.get("name", ""), child["id"])
                if child.get("mimeType") == FOLDER_MIME_TYPE:
                    pending.append((child, child_path))
                else:
                    self.add_file(child, current_path)

    def _list_children(self, folder: dict) -> Iterator[dict]:
        """Children of one folder, following ``nextPageToken`` until the last page."""
        parameters = {
            "q": f"'{folder['id']}' in parents and trashed = false",
            "fields": f"nextPageToken, files({_FILE_FIELDS})",
            "pageSize": 1000,
            "orderBy": "name",
            "supportsAllDrives": True,
            "includeItemsFromAllDrives": True,
        }
        # Items of a shared drive are listed from that drive's corpus, not the user's own.
        if folder.get("driveId"):
            parameters.update(corpora="drive", driveId=folder["driveId"])
        page_token = None
        while True:
            request = self.service.files().list(pageToken=page_token, **parameters)
            page = self.retrier.call(
                lambda: request.execute(num_retries=0), f"listing folder {folder.get('name', folder['id'])}"
            )
            yield from page.get("files", [])
            page_token = page.get("nextPageToken")
            if not page_token:
                return

    def add_file(self, item: dict, relative_folder: Path) -> None:
        """One non-folder item: resolve shortcuts, refuse Google Docs, pick a unique local path."""
        label = item.get("name") or item["id"]
        if item.get("mimeType") == SHORTCUT_MIME_TYPE:
            target_id = item.get("shortcutDetails", {}).get("targetId")
            if not target_id:
                self.failures.append((label, "shortcut without a target"))
                return
            try:
                target = self.get_metadata(target_id)
            except googleapiclient.errors.HttpError as error:
                if error.resp.status == 401:
                    raise
                self.failures.append((label, f"shortcut target: {describe_error(error)}"))
                return
            # The local file keeps the shortcut's name, as the user sees it in the folder.
            item = {**target, "name": item.get("name") or target.get("name", target_id)}
            if target.get("mimeType") == FOLDER_MIME_TYPE:
                self.add_folder(item, relative_folder / safe_name(item["name"], target_id))
                return
        mime_type = item.get("mimeType", "")
        if mime_type.startswith(GOOGLE_APPS_MIME_PREFIX):
            self.failures.append(
                (label, f"a Google Docs-type file ({mime_type}) has no binary content to download; "
                        "upload the archive itself or export it to a file in Drive")
            )
            return
        name = safe_name(item.get("name", ""), item["id"])
        relative_path = relative_folder / name
        # Drive allows two files of the same name in one folder; keep both, told apart by ID.
        if relative_path in self._taken_paths:
            stem, dot, suffix = name.partition(".")
            relative_path = relative_folder / f"{stem} ({item['id']}){dot}{suffix}"
        self._taken_paths.add(relative_path)
        self.files.append(
            DriveFile(
                file_id=item["id"],
                name=item.get("name", item["id"]),
                size=int(item.get("size", 0)),
                md5=item.get("md5Checksum"),
                relative_path=relative_path,
            )
        )


def list_remote_files(
    service, settings: GetDataConfig, retrier: Retrier
) -> tuple[list[DriveFile], list[tuple[str, str]]]:
    """The files to download and the items that cannot be, from the configured folder or IDs."""
    lister = _Lister(service, retrier)
    if settings.drive_folder_id:
        folder_id = settings.drive_folder_id.strip()
        _check_drive_id(folder_id, "drive_folder_id")
        try:
            folder = lister.get_metadata(folder_id)
        except googleapiclient.errors.HttpError as error:
            if error.resp.status == 401:
                raise
            advice = (
                "Check the ID and that the folder is shared with the account in "
                "get_data.drive_credentials_file"
                if error.resp.status in (403, 404) else "Try again later"
            )
            raise PipelineError(
                f"Google Drive folder {folder_id} (get_data.drive_folder_id): {describe_error(error)}. "
                f"{advice} ({DOCS_HINT})"
            ) from None
        except TRANSPORT_ERRORS as error:
            raise PipelineError(
                f"could not reach Google Drive "
                f"after {retrier.max_retries + 1} tries: {describe_error(error)}; "
                "check the network connection"
            ) from None
        if folder.get("mimeType") != FOLDER_MIME_TYPE:
            raise PipelineError(
                f"get_data.drive_folder_id: {folder_id} is a file ({folder.get('name')!r}), not a folder; "
                "list it in get_data.drive_file_ids instead"
            )
        lister.add_folder(folder, Path())
    for file_id in settings.drive_file_ids:
        file_id = file_id.strip()
        if not _DRIVE_ID_PATTERN.match(file_id):
            lister.failures.append((file_id, "not a Drive file ID (get_data.drive_file_ids)"))
            continue
        item = lister.recorded(lambda: lister.get_metadata(file_id), file_id)
        if item is None:
            continue
        if item.get("mimeType") == FOLDER_MIME_TYPE:
            lister.add_folder(item, Path(safe_name(item.get("name", ""), file_id)))
        else:
            lister.add_file(item, Path())
    return lister.files, lister.failures

