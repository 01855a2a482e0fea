"""A small fake of the Google Drive v3 API on 127.0.0.1, for testing ``emotion_classifier.drive``.

It serves exactly the calls the downloader makes, in the shapes Drive uses:

- ``GET /drive/v3/files?q='<folder>' in parents and trashed = false``: ``files.list``, cut into
  pages of at most ``page_size`` items linked by ``nextPageToken``; items of a shared drive are
  only listed when the request says ``supportsAllDrives`` and ``includeItemsFromAllDrives``;
- ``GET /drive/v3/files/<id>``: ``files.get`` metadata (``size`` as a string, ``md5Checksum``);
- ``GET /drive/v3/files/<id>?alt=media``: the content, honouring ``Range: bytes=a-b`` with 206
  and ``Content-Range``;
- ``POST /token``: the OAuth token endpoint, for refreshing a cached user token.

Requests without an accepted bearer token get 401. Faults are injected per file: an HTTP error
status for the next requests (:meth:`FakeDriveServer.fail_next`) or a connection closed after a
given byte of the file (:meth:`FakeDriveServer.drop_connection`). Every request is recorded in
:attr:`FakeDriveServer.log`, with the Range header and the number of content bytes actually
sent, so a test can check what went over the wire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import itertools
import json
import re
import socket
import threading
import urllib.parse

FOLDER_MIME_TYPE = "application/vnd.google-apps.folder"
_PARENT_QUERY = re.compile(r"^'([^']+)' in parents and trashed = false$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_ERROR_REASONS = {400: "badRequest", 401: "authError", 403: "forbidden", 404: "notFound",
                  429: "rateLimitExceeded", 500: "backendError", 503: "backendError"}


@dataclasses.dataclass
class FakeItem:
    """A file or folder of the fake Drive."""

    file_id: str
    name: str
    mime_type: str
    parents: list[str]
    content: bytes | None = None
    drive_id: str | None = None
    # A wrong checksum to report instead of the real one (to test verification).
    md5_override: str | None = None
    shortcut_target: str | None = None

    def resource(self) -> dict:
        """The JSON resource Drive returns for this item."""
        resource = {"id": self.file_id, "name": self.name, "mimeType": self.mime_type}
        if self.content is not None:
            resource["size"] = str(len(self.content))
            resource["md5Checksum"] = self.md5_override or hashlib.md5(self.content).hexdigest()
        if self.drive_id:
            resource["driveId"] = self.drive_id
        if self.shortcut_target:
            resource["shortcutDetails"] = {"targetId": self.shortcut_target}
        return resource


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it and answered it."""

    method: str
    path: str
    query: dict[str, str]
    range: str | None
    status: int
    # Content bytes of a media response that were actually written to the socket.
    bytes_sent: int = 0
    dropped: bool = False

    @property
    def is_media(self) -> bool:
        return self.query.get("alt") == "media"


class FakeDriveServer:
    """A threaded HTTP server holding a fake Drive; use it as a context manager."""

    def __init__(self, page_size: int = 2, accepted_token: str = "test-token"):
        self.page_size = page_size
        self.accepted_tokens = {accepted_token}
        self.items: dict[str, FakeItem] = {}
        self.log: list[RequestRecord] = []
        # OAuth: the refresh token the token endpoint accepts, and the access tokens it issued.
        self.refresh_token = "test-refresh-token"
        self._issued_tokens = itertools.count(1)
        self._failures: dict[tuple[str, str], list[int]] = {}
        self._drops: dict[str, list[int]] = {}
        self._stalls: dict[str, int] = {}
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # A short poll interval so that shutting the server down at the end of a test is quick.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "FakeDriveServer":
        self._thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_endpoint(self) -> str:
        return f"{self.base_url}/drive/v3/"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    # -- content ----------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}"

    def add_folder(self, name: str, parent: str | None = None, drive_id: str | None = None) -> str:
        folder_id = self._new_id("folder")
        if parent is not None and drive_id is None:
            drive_id = self.items[parent].drive_id
        self.items[folder_id] = FakeItem(folder_id, name, FOLDER_MIME_TYPE, [parent] if parent else [],
                                         drive_id=drive_id)
        return folder_id

    def add_file(self, name: str, content: bytes | None, parent: str | None = None,
                 mime_type: str = "application/octet-stream", md5_override: str | None = None,
                 shortcut_target: str | None = None) -> str:
        file_id = self._new_id("file")
        drive_id = self.items[parent].drive_id if parent else None
        self.items[file_id] = FakeItem(file_id, name, mime_type, [parent] if parent else [], content,
                                       drive_id, md5_override, shortcut_target)
        return file_id

    # -- faults -----------------------------------------------------------------------------

    def fail_next(self, item_id: str, status: int, count: int = 1, kind: str = "media",
                  reason: str | None = None) -> None:
        """Answer the next ``count`` requests of ``kind`` (media, metadata, list) with ``status``.

        ``reason`` replaces the usual reason of that status in the error body (Drive answers a
        used-up quota with 403 ``rateLimitExceeded``).
        """
        self._failures.setdefault((item_id, kind), []).extend([(status, reason)] * count)

    def drop_connection(self, file_id: str, after_byte: int, count: int = 1) -> None:
        """Cut the next ``count`` media responses that cover byte ``after_byte`` right before it."""
        self._drops.setdefault(file_id, []).extend([after_byte] * count)

    def stall(self, file_id: str, after_byte: int) -> None:
        """Make the next media response covering ``after_byte`` hang there until the server stops.

        The client sees a connection that stopped sending, as when its process is about to be
        killed; the test kills the client meanwhile.
        """
        self._stalls[file_id] = after_byte

    def _take_failure(self, item_id: str, kind: str) -> tuple[int, str | None] | None:
        with self._lock:
            queue = self._failures.get((item_id, kind))
            return queue.pop(0) if queue else None

    # -- log queries ------------------------------------------------------------------------

    def media_requests(self, file_id: str) -> list[RequestRecord]:
        return [record for record in self.log if record.is_media and record.path.endswith(f"/files/{file_id}")]

    def list_requests(self) -> list[RequestRecord]:
        return [record for record in self.log if record.path.endswith("/files")]


def _make_handler(drive: FakeDriveServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        # Keep-alive, as Google's servers do; httplib2 reuses connections between requests.
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without TCP_NODELAY each response would
        # wait for the client's delayed acknowledgement (about 40 ms).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *arguments) -> None:
            """Quiet: the test reads ``drive.log`` instead of stderr."""

        # -- helpers ------------------------------------------------------------------------

        def _record(self, status: int, bytes_sent: int = 0, dropped: bool = False) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            with drive._lock:
                drive.log.append(RequestRecord(self.command, parsed.path, query, self.headers.get("Range"),
                                               status, bytes_sent, dropped))

        def _send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
            self._record(status)

        def _send_error(self, status: int, message: str, reason: str | None = None) -> None:
            reason = reason or _ERROR_REASONS.get(status, "unknown")
            self._send_json(status, {"error": {"code": status, "message": message,
                                               "errors": [{"reason": reason, "message": message}]}})

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            return header.startswith("Bearer ") and header[len("Bearer "):] in drive.accepted_tokens

        # -- routes -------------------------------------------------------------------------

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            if urllib.parse.urlsplit(self.path).path != "/token":
                self._send_error(404, "no such endpoint")
            elif form.get("grant_type") == "refresh_token" and form.get("refresh_token") == drive.refresh_token:
                token = f"refreshed-token-{next(drive._issued_tokens)}"
                drive.accepted_tokens.add(token)
                self._send_json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})
            else:
                self._send_json(400, {"error": "invalid_grant", "error_description": "Bad Request"})

        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            if not self._authorized():
                self._send_error(401, "Request had invalid authentication credentials.")
                return
            if parsed.path == "/drive/v3/files":
                self._list(query)
                return
            match = re.fullmatch(r"/drive/v3/files/([^/]+)", parsed.path)
            if not match:
                self._send_error(404, "no such endpoint")
                return
            item = drive.items.get(match.group(1))
            # Like Drive: shared-drive items are invisible to callers that do not declare support.
            if item is None or (item.drive_id and query.get("supportsAllDrives") != "true"):
                self._send_error(404, f"File not found: {match.group(1)}.")
                return
            kind = "media" if query.get("alt") == "media" else "metadata"
            failure = drive._take_failure(item.file_id, kind)
            if failure is not None:
                self._send_error(failure[0], "injected failure", failure[1])
            elif kind == "metadata":
                self._send_json(200, item.resource())
            else:
                self._media(item)

        def _list(self, query: dict[str, str]) -> None:
            match = _PARENT_QUERY.match(query.get("q", ""))
            if not match or match.group(1) not in drive.items:
                self._send_error(400, f"Invalid Value: q={query.get('q')!r}")
                return
            folder = drive.items[match.group(1)]
            failure = drive._take_failure(folder.file_id, "list")
            if failure is not None:
                self._send_error(failure[0], "injected failure", failure[1])
                return
            children = [item for item in drive.items.values() if folder.file_id in item.parents]
            if folder.drive_id and not (
                query.get("supportsAllDrives") == "true" and query.get("includeItemsFromAllDrives") == "true"
                and query.get("corpora") == "drive" and query.get("driveId") == folder.drive_id
            ):
                children = []
            if query.get("orderBy") == "name":
                children.sort(key=lambda item: item.name)
            page_size = min(int(query.get("pageSize", 100)), drive.page_size)
            start = int(query.get("pageToken", "page-0").removeprefix("page-"))
            body: dict = {"files": [item.resource() for item in children[start:start + page_size]]}
            if start + page_size < len(children):
                body["nextPageToken"] = f"page-{start + page_size}"
            self._send_json(200, body)

        def _media(self, item: FakeItem) -> None:
            content = item.content
            if content is None:
                self._send_error(403, "Only files with binary content can be downloaded.")
                return
            total = len(content)
            start, end = 0, total - 1
            range_header = self.headers.get("Range")
            if range_header:
                match = _RANGE.match(range_header)
                if not match:
                    self._send_error(400, "bad Range header")
                    return
                start = int(match.group(1))
                end = min(int(match.group(2)) if match.group(2) else total - 1, total - 1)
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self._record(416)
                    return
            body = content[start:end + 1]
            status = 206 if range_header else 200
            self.send_response(status)
            self.send_header("Content-Type", item.mime_type)
            self.send_header("Content-Length", str(len(body)))
            if range_header:
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            self.end_headers()
            stall_at = drive._stalls.get(item.file_id)
            if stall_at is not None and start < stall_at <= end:
                del drive._stalls[item.file_id]
                self.wfile.write(body[:stall_at - start])
                self.wfile.flush()
                self._record(status, stall_at - start, dropped=True)
                drive._stopping.wait()
                self.close_connection = True
                return
            cut = self._take_drop(item.file_id, start, end)
            if cut is None:
                self.wfile.write(body)
                self._record(status, len(body))
                return
            # A dropped connection: part of the promised body, then the socket closes.
            self.wfile.write(body[:cut - start])
            self.wfile.flush()
            self._record(status, cut - start, dropped=True)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _take_drop(self, file_id: str, start: int, end: int) -> int | None:
            with drive._lock:
                drops = drive._drops.get(file_id)
                if drops and start < drops[0] <= end:
                    return drops.pop(0)
            return None

    return Handler
