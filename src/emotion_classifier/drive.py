"""Download the raw dataset archives from Google Drive into ``data/raw`` (GitHub issue #3).

``get_data.py`` calls :func:`download` when ``get_data.source_kind = "drive"``. The source is a
Drive folder (every file in it, recursively, shared drives included) or an explicit list of file
IDs. Each file travels through the client library's chunked media download into
``<name>.partial``; a sidecar ``<name>.partial.json`` records which remote version (id, size,
md5) the partial bytes belong to, so an interrupted run (Ctrl-C, a dropped connection, a killed
process) continues each partial file from its last byte on the next run, while a partial file of
a different remote version is discarded. A finished file is checked against the size and
``md5Checksum`` that Drive reports before it is renamed to its final name, and the check is
recorded in ``.drive-downloads.json`` so a verified file is never fetched (or hashed) again.

Rate limits and server errors are retried with exponential backoff; a permanent error (403, 404)
or a checksum mismatch fails that file only, and the caller gets the list of failures. Problems
that stop everything (no credentials, folder not found) raise :class:`cli.PipelineError`.
No token, key or client secret is ever printed or logged.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import re
import ssl
import stat
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import google.oauth2.service_account
import google_auth_httplib2
import googleapiclient.discovery
import googleapiclient.errors
import googleapiclient.http
import httplib2
from tqdm import tqdm

from emotion_classifier.cli import PipelineError
from emotion_classifier.config import GetDataConfig
from emotion_classifier.files import atomic_path, file_digest, read_json, write_json

logger = logging.getLogger(__name__)

# Read-only access is all a download needs; a leaked token then cannot change the user's Drive.
DRIVE_SCOPES = ["https://www.googleapis.com/auth/drive.readonly"]
FOLDER_MIME_TYPE = "application/vnd.google-apps.folder"
SHORTCUT_MIME_TYPE = "application/vnd.google-apps.shortcut"
# Docs, Sheets, Slides... have no binary content; Drive can only export them to another format.
GOOGLE_APPS_MIME_PREFIX = "application/vnd.google-apps."
PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".partial.json"
LEDGER_NAME = ".drive-downloads.json"
DOCS_HINT = "see docs/google_drive.md"

# A request that hangs (a stalled connection) fails after this long and is retried like a drop.
REQUEST_TIMEOUT_SECONDS = 120
# Tries after the first for a request that fails transiently, and the download chunk size.
MAX_RETRIES = 6
CHUNK_SIZE = 16 * 1024 * 1024
# The Drive API's address: empty for Google's; tests point it at a local fake server.
API_ENDPOINT = ""
# Exponential backoff never waits longer than this between two tries.
MAX_BACKOFF_SECONDS = 64.0
# Drive IDs are URL-safe base64-like words; checking them keeps a typo or a pasted URL out of
# the search query that lists a folder.
_DRIVE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
_FILE_FIELDS = "id, name, mimeType, size, md5Checksum, driveId, shortcutDetails(targetId, targetMimeType)"
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
_TRANSPORT_ERRORS = (
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


@dataclasses.dataclass
class DriveDownloadResult:
    """What a download run achieved: verified local files and per-file failures."""

    # Every verified file (fetched now or verified by an earlier run), inside the destination.
    files: list[Path] = dataclasses.field(default_factory=list)
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


# ----------------------------------------------------------------------------------------------
# Credentials
# ----------------------------------------------------------------------------------------------


def load_credentials(
    settings: GetDataConfig,
    authorize: Callable[[Path], google.auth.credentials.Credentials] | None = None,
) -> google.auth.credentials.Credentials:
    """Credentials as configured: a service-account key, or installed-app OAuth with a cached token.

    ``authorize`` runs the interactive OAuth consent (a browser window) when no usable cached
    token exists; it receives the OAuth client file and returns user credentials. Tests replace it.
    """
    credentials_file = Path(settings.drive_credentials_file)
    if settings.drive_auth == "service_account":
        return _service_account_credentials(credentials_file)
    if settings.drive_auth == "oauth":
        return _oauth_credentials(
            credentials_file, Path(settings.drive_token_file), authorize or _run_installed_app_flow
        )
    raise PipelineError(
        f"get_data.drive_auth: {settings.drive_auth!r} is not one of service_account, oauth"
    )


def _missing_credentials_message(credentials_file: Path, auth: str) -> str:
    if auth == "service_account":
        wanted = (
            "a service-account key file (JSON, from Google Cloud console > IAM > Service accounts > Keys)"
        )
    else:
        wanted = (
            "an OAuth client file of type 'Desktop app' "
            "(JSON, from Google Cloud console > APIs & Services > Credentials)"
        )
    return (
        f"Google Drive needs credentials, but there is no file at {credentials_file} "
        f"(get_data.drive_credentials_file). Provide {wanted} at that path, or point "
        "get_data.drive_credentials_file at it; get_data.drive_auth chooses between "
        f"\"service_account\" and \"oauth\". Step by step: {DOCS_HINT}."
    )


def _service_account_credentials(key_file: Path) -> google.auth.credentials.Credentials:
    if not key_file.is_file():
        raise PipelineError(_missing_credentials_message(key_file, "service_account"))
    try:
        info = json.loads(key_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise PipelineError(
            f"{key_file} (get_data.drive_credentials_file) is not readable JSON; provide the "
            f"service-account key file downloaded from Google Cloud console ({DOCS_HINT})"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        hint = ""
        if isinstance(info, dict) and ("installed" in info or "web" in info):
            hint = " It looks like an OAuth client file: set get_data.drive_auth=\"oauth\" to use it."
        raise PipelineError(
            f"{key_file} (get_data.drive_credentials_file) is not a service-account key file "
            f"(its \"type\" is not \"service_account\").{hint} ({DOCS_HINT})"
        )
    try:
        return google.oauth2.service_account.Credentials.from_service_account_info(
            info, scopes=DRIVE_SCOPES
        )
    except (ValueError, KeyError):
        # "from None": the library's exception may quote parts of the key; keep them out of tracebacks.
        raise PipelineError(
            f"{key_file} (get_data.drive_credentials_file) is an incomplete or damaged "
            f"service-account key; create and download a new JSON key ({DOCS_HINT})"
        ) from None


def _oauth_credentials(
    client_file: Path,
    token_file: Path,
    authorize: Callable[[Path], google.auth.credentials.Credentials],
) -> google.auth.credentials.Credentials:
    """Use the cached user token, refreshing it when expired; run the consent flow only if needed."""
    credentials = None
    if token_file.is_file():
        _restrict_to_owner(token_file)
        try:
            credentials = google.oauth2.credentials.Credentials.from_authorized_user_file(
                str(token_file), DRIVE_SCOPES
            )
        except (OSError, ValueError, KeyError):
            logger.warning("cached Google token %s is unreadable; asking for consent again", token_file)
    if credentials is not None and credentials.valid:
        return credentials
    if credentials is not None and credentials.refresh_token:
        try:
            credentials.refresh(google_auth_httplib2.Request(httplib2.Http(timeout=REQUEST_TIMEOUT_SECONDS)))
            save_token(token_file, credentials)
            return credentials
        except google.auth.exceptions.RefreshError:
            logger.warning(
                "cached Google token %s was revoked or has expired; asking for consent again", token_file
            )
        except google.auth.exceptions.TransportError as error:
            raise PipelineError(
                f"could not reach Google to refresh the cached token {token_file} ({type(error).__name__}); "
                "check the network connection and try again"
            ) from None
    if not client_file.is_file():
        raise PipelineError(_missing_credentials_message(client_file, "oauth"))
    credentials = authorize(client_file)
    save_token(token_file, credentials)
    return credentials


def _run_installed_app_flow(client_file: Path) -> google.auth.credentials.Credentials:
    """The installed-app consent: a browser page on this machine redirects back to a local port."""
    from google_auth_oauthlib.flow import InstalledAppFlow

    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(client_file), scopes=DRIVE_SCOPES)
    except (ValueError, KeyError):
        raise PipelineError(
            f"{client_file} (get_data.drive_credentials_file) is not an OAuth client file of type "
            f"'Desktop app'; download one from Google Cloud console ({DOCS_HINT})"
        ) from None
    return flow.run_local_server(port=0, open_browser=True)


def save_token(token_file: Path, credentials: google.auth.credentials.Credentials) -> None:
    """Cache user credentials in ``token_file``, readable and writable by its owner only."""
    token_file = Path(token_file)
    token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(token_file) as temporary:
        # The temporary file is already private (mkstemp); say so explicitly before any byte of
        # the token is written, so the final file is never readable by others, even for a moment.
        os.chmod(temporary, 0o600)
        temporary.write_text(credentials.to_json(), encoding="utf-8")


def _restrict_to_owner(path: Path) -> None:
    """A token file that others can read is a leak waiting to happen: make it owner-only."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        logger.warning("%s was readable by other users; it is now readable by its owner only", path)


# ----------------------------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------------------------


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
        return status == 403 and _http_error_reason(error) in _RATE_LIMIT_REASONS
    return isinstance(error, _TRANSPORT_ERRORS)


def describe_error(error: BaseException) -> str:
    """A one-line reason for the summary; never includes request headers (where the token is)."""
    if isinstance(error, googleapiclient.errors.HttpError):
        status = error.resp.status
        meaning = {403: "permission denied", 404: "not found or not shared with this account"}.get(status, "")
        reason = _http_error_reason(error)
        details = ", ".join(part for part in (meaning, reason) if part)
        return f"HTTP {status}" + (f" ({details})" if details else "")
    if isinstance(error, _TRANSPORT_ERRORS):
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


# ----------------------------------------------------------------------------------------------
# Listing
# ----------------------------------------------------------------------------------------------


def build_service(credentials: google.auth.credentials.Credentials, api_endpoint: str = ""):
    """A Drive v3 client from the discovery document packaged with the library (no network).

    ``api_endpoint`` replaces ``https://www.googleapis.com/drive/v3/`` (tests, mirrors); media
    downloads use the same base, as ``files/<id>?alt=media``.
    """
    authorized_http = google_auth_httplib2.AuthorizedHttp(
        credentials, http=httplib2.Http(timeout=REQUEST_TIMEOUT_SECONDS)
    )
    return googleapiclient.discovery.build(
        "drive",
        "v3",
        http=authorized_http,
        static_discovery=True,
        client_options={"api_endpoint": api_endpoint} if api_endpoint else None,
    )


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
            try:
                children = list(self._list_children(current))
            except googleapiclient.errors.HttpError as error:
                if error.resp.status == 401:
                    raise
                self.failures.append((label, describe_error(error)))
                continue
            except _TRANSPORT_ERRORS as error:
                self.failures.append((label, describe_error(error)))
                continue
            for child in children:
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
        except _TRANSPORT_ERRORS as error:
            raise PipelineError(
                f"could not reach Google Drive at {API_ENDPOINT or 'www.googleapis.com'} "
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
        try:
            item = lister.get_metadata(file_id)
        except googleapiclient.errors.HttpError as error:
            if error.resp.status == 401:
                raise
            lister.failures.append((file_id, describe_error(error)))
            continue
        except _TRANSPORT_ERRORS as error:
            lister.failures.append((file_id, describe_error(error)))
            continue
        if item.get("mimeType") == FOLDER_MIME_TYPE:
            lister.add_folder(item, Path(safe_name(item.get("name", ""), file_id)))
        else:
            lister.add_file(item, Path())
    return lister.files, lister.failures


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------


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
        if start < remote.size:
            self._transfer(remote, partial, start)
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
        raise PipelineError(_rejected_credentials_message(settings)) from None
    except googleapiclient.errors.HttpError as error:
        if error.resp.status == 401:
            raise PipelineError(_rejected_credentials_message(settings)) from None
        raise
    logger.info("%s", result.summary())
    return result


def _rejected_credentials_message(settings: GetDataConfig) -> str:
    where = (
        f"the key in {settings.drive_credentials_file}" if settings.drive_auth == "service_account"
        else f"the cached token {settings.drive_token_file} (delete it to sign in again)"
    )
    return (
        f"Google Drive rejected the credentials ({where}, get_data.drive_auth={settings.drive_auth!r}); "
        f"provide a valid service-account key or OAuth sign-in ({DOCS_HINT})"
    )


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
                result.files.append(downloader.fetch(remote))
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
            except _TRANSPORT_ERRORS as error:
                reason = (
                    f"{describe_error(error)} after {retrier.max_retries + 1} tries; the next run resumes it"
                )
                logger.error("%s: %s", label, reason)
                result.failures.append((label, reason))
        result.downloaded_bytes = downloader.transferred_bytes
    return result
