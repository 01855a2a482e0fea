"""Google Drive download, against a real HTTP server on 127.0.0.1.

The real ``google-api-python-client`` talks to :class:`drive_server.FakeDriveServer` through an
overridden API endpoint, with the library's own packaged discovery document; the server's
request log shows what actually went over the wire.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import google.oauth2.credentials
import googleapiclient.errors
import httplib2
import pytest

from drive_server import FakeDriveServer
from emotion_classifier import drive, drive_auth, drive_listing
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import GetDataConfig

# Tiny chunks so that a few kilobytes make several chunk requests.
CHUNK_SIZE = 1024
BASE_DELAY = 0.01


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def server(monkeypatch):
    with FakeDriveServer(page_size=2) as running:
        # The client talks to the fake server, and gives up sooner than on the real Drive.
        monkeypatch.setattr(drive, "API_ENDPOINT", running.api_endpoint)
        monkeypatch.setattr(drive, "MAX_RETRIES", 2)
        yield running


def settings_for(server: FakeDriveServer, **keys) -> GetDataConfig:
    return GetDataConfig(source_kind="drive", **keys)


def run_download(server: FakeDriveServer, destination: Path, sleep=lambda seconds: None,
                 token: str = "test-token", **keys) -> drive.DriveDownloadResult:
    return drive.download(
        settings_for(server, **keys), destination,
        credentials=google.oauth2.credentials.Credentials(token=token),
        retry_base_delay=BASE_DELAY, sleep=sleep, chunk_size=CHUNK_SIZE,
    )


def media_ranges(server: FakeDriveServer, file_id: str) -> list[str]:
    return [record.range for record in server.media_requests(file_id)]


# -- listing ------------------------------------------------------------------------------------


def test_folder_over_several_pages_downloads_every_file_keeping_subfolders(server, tmp_path):
    root = server.add_folder("AffectNet")
    contents = {f"part{index}.tar": random_bytes(1500 + index, seed=index) for index in range(5)}
    for name, content in contents.items():
        server.add_file(name, content, parent=root)
    nested = server.add_folder("extra", parent=server.add_folder("more", parent=root))
    server.add_file("labels.csv", b"path,label\n", parent=nested)

    result = run_download(server, tmp_path, drive_folder_id=root)

    assert result.ok and len(result.files) == 6
    for name, content in contents.items():
        assert (tmp_path / name).read_bytes() == content
    assert (tmp_path / "more" / "extra" / "labels.csv").read_bytes() == b"path,label\n"
    # Five files and one folder in pages of two: three pages, the later ones asked for by token.
    root_pages = [record for record in server.list_requests() if root in record.query["q"]]
    assert [record.query.get("pageToken") for record in root_pages] == [None, "page-2", "page-4"]
    assert not list(tmp_path.rglob("*.partial*"))


def test_shared_drive_folder_is_listed_from_its_drive(server, tmp_path):
    root = server.add_folder("Shared AffectNet", drive_id="sharedDrive1")
    server.add_file("train.zip", random_bytes(3000, seed=1), parent=root)

    result = run_download(server, tmp_path, drive_folder_id=root)

    assert result.ok and [path.name for path in result.files] == ["train.zip"]
    (listing,) = server.list_requests()
    assert listing.query["corpora"] == "drive" and listing.query["driveId"] == "sharedDrive1"
    assert listing.query["includeItemsFromAllDrives"] == "true"


def test_docs_files_unsafe_names_duplicates_and_shortcuts(server, tmp_path):
    root = server.add_folder("root")
    elsewhere = server.add_folder("elsewhere")
    server.add_file("notes", None, parent=root, mime_type="application/vnd.google-apps.document")
    server.add_file("../escape.bin", b"outside?", parent=root)
    server.add_file("dup.tar.gz", b"first", parent=root)
    second = server.add_file("dup.tar.gz", b"second", parent=root)
    target = server.add_file("real-name.zip", b"target content", parent=elsewhere)
    server.add_file("link.zip", None, parent=root, mime_type=drive_listing.SHORTCUT_MIME_TYPE, shortcut_target=target)

    result = run_download(server, tmp_path, drive_folder_id=root)

    assert [name for name, _ in result.failures] == ["notes"]
    assert "Google Docs" in result.failures[0][1]
    assert (tmp_path / ".._escape.bin").read_bytes() == b"outside?"
    assert not (tmp_path.parent / "escape.bin").exists()
    downloaded = {path.name: path.read_bytes() for path in result.files}
    assert {downloaded["dup.tar.gz"], downloaded[f"dup ({second}).tar.gz"]} == {b"first", b"second"}
    assert downloaded["link.zip"] == b"target content"


def test_folder_not_found_stops_with_a_message_naming_the_key(server, tmp_path):
    with pytest.raises(PipelineError, match="drive_folder_id") as error:
        run_download(server, tmp_path, drive_folder_id="folder9999")
    assert "404" in str(error.value)


def test_unreachable_endpoint_is_retried_then_a_clear_error(tmp_path, monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(drive, "API_ENDPOINT", "http://127.0.0.1:1/drive/v3/")
    monkeypatch.setattr(drive, "MAX_RETRIES", 1)
    settings = GetDataConfig(source_kind="drive", drive_folder_id="folder1")
    with pytest.raises(PipelineError, match="could not reach Google Drive after 2 tries"):
        drive.download(settings, tmp_path, credentials=google.oauth2.credentials.Credentials(token="test-token"),
                       retry_base_delay=BASE_DELAY, sleep=delays.append)
    assert delays == [BASE_DELAY]


def test_nothing_configured_is_a_clear_error(server, tmp_path):
    with pytest.raises(PipelineError, match="drive_folder_id nor get_data.drive_file_ids"):
        run_download(server, tmp_path)


# -- resuming -----------------------------------------------------------------------------------


def test_dropped_connection_is_retried_from_the_chunk_that_was_cut(server, tmp_path):
    content = random_bytes(5000, seed=2)
    file_id = server.add_file("big.tar", content)
    server.drop_connection(file_id, after_byte=2500)

    result = run_download(server, tmp_path, drive_file_ids=[file_id])

    assert result.ok and (tmp_path / "big.tar").read_bytes() == content
    records = server.media_requests(file_id)
    cut = next(index for index, record in enumerate(records) if record.dropped)
    assert records[cut].range == records[cut + 1].range == "bytes=2048-3071"
    assert records[cut].bytes_sent == 2500 - 2048


def test_interrupted_download_resumes_next_run_sending_only_the_missing_bytes(server, tmp_path):
    content = random_bytes(10_000, seed=3)
    file_id = server.add_file("images.tar", content)
    other_id = server.add_file("labels.tar", random_bytes(2000, seed=4))
    # Cut at byte 4500 on every try of the first run (three tries with MAX_RETRIES = 2).
    server.drop_connection(file_id, after_byte=4500, count=3)

    first = run_download(server, tmp_path, drive_file_ids=[file_id, other_id])

    assert [name for name, _ in first.failures] == ["images.tar"]
    assert "connection" in first.failures[0][1]
    assert [path.name for path in first.files] == ["labels.tar"]
    partial = tmp_path / "images.tar.partial"
    assert partial.read_bytes() == content[:4096]
    assert json.loads((tmp_path / "images.tar.partial.json").read_text())["id"] == file_id
    requests_before = len(server.media_requests(file_id))

    second = run_download(server, tmp_path, drive_file_ids=[file_id, other_id])

    assert second.ok and (tmp_path / "images.tar").read_bytes() == content
    resumed = server.media_requests(file_id)[requests_before:]
    assert resumed[0].range == "bytes=4096-5119"
    assert sum(record.bytes_sent for record in resumed) == len(content) - 4096
    assert second.downloaded_bytes == len(content) - 4096
    assert not partial.exists() and not (tmp_path / "images.tar.partial.json").exists()


def test_ctrl_c_keeps_the_partial_file_for_the_next_run(server, tmp_path):
    content = random_bytes(6000, seed=5)
    file_id = server.add_file("train.zip", content)
    server.drop_connection(file_id, after_byte=3000)

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_download(server, tmp_path, sleep=interrupt, drive_file_ids=[file_id])
    assert (tmp_path / "train.zip.partial").stat().st_size == 2048

    result = run_download(server, tmp_path, drive_file_ids=[file_id])

    assert result.ok and (tmp_path / "train.zip").read_bytes() == content
    assert media_ranges(server, file_id)[-4] == "bytes=2048-3071"
    assert result.downloaded_bytes == len(content) - 2048


def test_killed_process_leaves_a_partial_file_that_the_next_run_continues(server, tmp_path):
    content = random_bytes(5000, seed=9)
    file_id = server.add_file("killed.zip", content)
    # The third chunk (bytes 2048-3071) stops arriving at byte 3000; the process is killed then.
    server.stall(file_id, after_byte=3000)
    script = textwrap.dedent(f"""
        import google.oauth2.credentials
        from emotion_classifier import drive, drive_auth, drive_listing
        from emotion_classifier.config import GetDataConfig
        drive.API_ENDPOINT = {server.api_endpoint!r}
        settings = GetDataConfig(source_kind="drive", drive_file_ids=[{file_id!r}])
        drive.download(settings, {str(tmp_path)!r}, chunk_size={CHUNK_SIZE},
                       credentials=google.oauth2.credentials.Credentials(token="test-token"))
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(record.dropped for record in server.media_requests(file_id)):
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the download process never reached the stalled chunk (exit status {child.poll()})")
            time.sleep(0.05)
        child.kill()
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert (tmp_path / "killed.zip.partial").read_bytes() == content[:2048]

    result = run_download(server, tmp_path, drive_file_ids=[file_id])

    assert result.ok and (tmp_path / "killed.zip").read_bytes() == content
    assert media_ranges(server, file_id)[3:] == ["bytes=2048-3071", "bytes=3072-4095", "bytes=4096-5119"]
    assert result.downloaded_bytes == len(content) - 2048


def test_partial_file_of_another_remote_version_is_discarded(server, tmp_path):
    content = random_bytes(3000, seed=6)
    file_id = server.add_file("valid.zip", content)
    (tmp_path / "valid.zip.partial").write_bytes(b"stale bytes of an older upload")
    (tmp_path / "valid.zip.partial.json").write_text(
        json.dumps({"id": file_id, "size": 3000, "md5": "0" * 32}), encoding="utf-8"
    )

    result = run_download(server, tmp_path, drive_file_ids=[file_id])

    assert result.ok and (tmp_path / "valid.zip").read_bytes() == content
    assert media_ranges(server, file_id)[0] == "bytes=0-1023"


# -- verification -------------------------------------------------------------------------------


def test_md5_mismatch_removes_the_file_and_fails_only_that_file(server, tmp_path):
    root = server.add_folder("root")
    server.add_file("corrupt.tar", random_bytes(2500, seed=7), parent=root, md5_override="f" * 32)
    server.add_file("fine.tar", b"fine", parent=root)

    result = run_download(server, tmp_path, drive_folder_id=root)

    assert [name for name, _ in result.failures] == ["corrupt.tar"]
    assert "md5 mismatch" in result.failures[0][1] and "f" * 32 in result.failures[0][1]
    assert not list(tmp_path.glob("corrupt.tar*"))
    assert (tmp_path / "fine.tar").read_bytes() == b"fine"
    assert "failed: corrupt.tar: md5 mismatch" in result.summary()


def test_verified_files_are_not_fetched_again_but_a_changed_one_is(server, tmp_path):
    root = server.add_folder("root")
    ids = [server.add_file(f"part{index}.zip", random_bytes(1800, seed=index), parent=root) for index in range(3)]
    run_download(server, tmp_path, drive_folder_id=root)
    media_before = [len(server.media_requests(file_id)) for file_id in ids]

    again = run_download(server, tmp_path, drive_folder_id=root)

    assert again.ok and again.already_present == 3 and again.downloaded_bytes == 0
    assert [len(server.media_requests(file_id)) for file_id in ids] == media_before

    (tmp_path / "part1.zip").write_bytes(b"edited by hand")
    repaired = run_download(server, tmp_path, drive_folder_id=root)

    assert repaired.ok and repaired.already_present == 2
    assert (tmp_path / "part1.zip").read_bytes() == random_bytes(1800, seed=1)
    assert len(server.media_requests(ids[0])) == media_before[0]


# -- errors and retries -------------------------------------------------------------------------


def test_rate_limit_then_success_backs_off_exponentially(server, tmp_path):
    content = random_bytes(2000, seed=8)
    file_id = server.add_file("test.zip", content)
    server.fail_next(file_id, 429, count=2)
    delays: list[float] = []

    result = run_download(server, tmp_path, sleep=delays.append, drive_file_ids=[file_id])

    assert result.ok and (tmp_path / "test.zip").read_bytes() == content
    assert delays == [BASE_DELAY, 2 * BASE_DELAY]
    assert [record.status for record in server.media_requests(file_id)][:3] == [429, 429, 206]


def test_server_errors_beyond_the_retry_budget_fail_that_file_only(server, tmp_path):
    root = server.add_folder("root")
    unlucky = server.add_file("unlucky.zip", b"never arrives", parent=root)
    server.add_file("lucky.zip", b"arrives", parent=root)
    server.fail_next(root, 500, kind="list")
    server.fail_next(unlucky, 503, count=3)

    result = run_download(server, tmp_path, drive_folder_id=root)

    assert [path.name for path in result.files] == ["lucky.zip"]
    ((name, reason),) = result.failures
    assert name == "unlucky.zip" and "HTTP 503" in reason and "3 tries" in reason


def test_missing_file_among_good_files_is_reported_and_the_rest_downloaded(server, tmp_path):
    good_ids = [server.add_file(f"good{index}.zip", random_bytes(1200, seed=index)) for index in range(2)]
    forbidden = server.add_file("private.zip", b"secret")
    server.fail_next(forbidden, 403, kind="metadata")

    result = run_download(server, tmp_path, drive_file_ids=[good_ids[0], "file9999", forbidden, good_ids[1]])

    assert sorted(path.name for path in result.files) == ["good0.zip", "good1.zip"]
    failures = dict(result.failures)
    assert "HTTP 404" in failures["file9999"] and "HTTP 403" in failures[forbidden]
    assert not result.ok


# -- credentials --------------------------------------------------------------------------------


def test_rejected_token_is_a_clear_error_that_never_shows_the_token(server, tmp_path, capsys, caplog):
    server.add_file("a.zip", b"a")
    with pytest.raises(PipelineError, match="rejected the credentials") as error:
        run_download(server, tmp_path, token="wrong-secret-token", drive_folder_id=server.add_folder("root"))
    captured = capsys.readouterr()
    for text in (str(error.value), captured.out, captured.err, caplog.text):
        assert "wrong-secret-token" not in text


def test_missing_service_account_key_names_the_file_and_what_to_provide(server, tmp_path):
    missing = tmp_path / "secrets" / "key.json"
    settings = settings_for(server, drive_folder_id="folder1", drive_credentials_file=str(missing))
    with pytest.raises(PipelineError) as error:
        drive.download(settings, tmp_path / "raw")
    message = str(error.value)
    assert str(missing) in message and "service-account key file" in message
    assert "drive_auth" in message and "docs/google_drive.md" in message


def test_oauth_client_file_given_as_service_account_key_suggests_oauth(server, tmp_path):
    client_file = tmp_path / "client.json"
    client_file.write_text(json.dumps({"installed": {"client_id": "id", "client_secret": "shh"}}))
    settings = settings_for(server, drive_folder_id="folder1", drive_credentials_file=str(client_file))
    with pytest.raises(PipelineError, match='drive_auth="oauth"') as error:
        drive.download(settings, tmp_path / "raw")
    assert "shh" not in str(error.value)


def test_oauth_without_client_file_or_token_says_what_to_provide(server, tmp_path):
    settings = settings_for(server, drive_folder_id="folder1", drive_auth="oauth",
                            drive_credentials_file=str(tmp_path / "client.json"))
    with pytest.raises(PipelineError, match="OAuth client file of type 'Desktop app'"):
        drive.download(settings, tmp_path / "raw")


def test_oauth_consent_result_is_cached_for_its_owner_only(server, tmp_path, capsys, caplog):
    server.add_file("train.zip", b"train", parent=(root := server.add_folder("root")))
    client_file = tmp_path / "client.json"
    client_file.write_text(json.dumps({"installed": {"client_id": "id", "client_secret": "shh"}}))
    token_file = tmp_path / "drive-token.json"
    settings = settings_for(server, drive_folder_id=root, drive_auth="oauth",
                            drive_credentials_file=str(client_file))
    consents: list[Path] = []

    def authorize(path: Path) -> google.oauth2.credentials.Credentials:
        consents.append(path)
        return google.oauth2.credentials.Credentials(
            token="test-token", refresh_token=server.refresh_token, token_uri=server.token_uri,
            client_id="id", client_secret="shh",
            expiry=datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(hours=1),
        )

    result = drive.download(settings, tmp_path / "raw", authorize=authorize)

    assert result.ok and consents == [client_file]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads(token_file.read_text())["refresh_token"] == server.refresh_token

    def no_second_consent(path: Path):
        raise AssertionError("the cached token should have been used")

    cached = drive_auth.load_credentials(settings, authorize=no_second_consent)
    assert cached.token == "test-token"
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text):
        assert "test-token" not in text and "shh" not in text and server.refresh_token not in text


def test_expired_cached_token_is_refreshed_and_rewritten_owner_only(server, tmp_path, monkeypatch):
    # google-auth always refreshes a cached user token at Google's token endpoint (it ignores the
    # file's token_uri on purpose); point that constant at the fake server for this test.
    monkeypatch.setattr(google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", server.token_uri)
    server.add_file("valid.zip", b"valid", parent=(root := server.add_folder("root")))
    token_file = tmp_path / "drive-token.json"
    token_file.write_text(json.dumps({
        "token": "expired-token", "refresh_token": server.refresh_token, "token_uri": server.token_uri,
        "client_id": "id", "client_secret": "shh", "expiry": "2000-01-01T00:00:00Z",
    }))
    token_file.chmod(0o644)
    settings = settings_for(server, drive_folder_id=root, drive_auth="oauth",
                            drive_credentials_file=str(tmp_path / "absent.json"))

    result = drive.download(settings, tmp_path / "raw", authorize=lambda path: pytest.fail("no consent needed"))

    assert result.ok and (tmp_path / "raw" / "valid.zip").read_bytes() == b"valid"
    assert json.loads(token_file.read_text())["token"] == "refreshed-token-1"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_fake_server_reports_drive_checksums(server):
    """The fixture itself: sizes as strings and the real md5, as Drive reports them."""
    file_id = server.add_file("x.bin", b"abc")
    resource = server.items[file_id].resource()
    assert resource["size"] == "3" and resource["md5Checksum"] == hashlib.md5(b"abc").hexdigest()


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [(429, "rateLimitExceeded", True), (503, "backendError", True), (403, "userRateLimitExceeded", True),
     (403, "forbidden", False), (404, "notFound", False)],
)
def test_which_http_errors_are_retried(status, reason, expected):
    body = json.dumps({"error": {"code": status, "errors": [{"reason": reason}]}}).encode()
    error = googleapiclient.errors.HttpError(httplib2.Response({"status": status}), body)
    assert drive_listing.is_transient(error) is expected


def test_403_rate_limit_is_retried_and_reported_as_rate_limiting(server, tmp_path, caplog):
    patient = server.add_file("patient.zip", b"arrives after a wait")
    unlucky = server.add_file("unlucky.zip", b"never arrives")
    server.fail_next(patient, 403, reason="rateLimitExceeded")
    server.fail_next(unlucky, 403, count=3, reason="userRateLimitExceeded")
    delays: list[float] = []

    result = run_download(server, tmp_path, sleep=delays.append, drive_file_ids=[patient, unlucky])

    assert [path.name for path in result.files] == ["patient.zip"]
    ((name, reason),) = result.failures
    assert name == "unlucky.zip" and "rate limited" in reason and "3 tries" in reason
    assert "permission denied" not in reason and "permission denied" not in caplog.text
    assert "rate limited" in caplog.text and len(delays) == 3


def test_404_leaves_no_empty_partial_file_or_sidecar(server, tmp_path):
    gone = server.add_file("gone.zip", b"deleted meanwhile")
    server.fail_next(gone, 404)

    result = run_download(server, tmp_path, drive_file_ids=[gone])

    assert "HTTP 404" in dict(result.failures)["gone.zip"]
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != drive.LEDGER_NAME) == []


def test_result_tells_fetched_files_from_those_already_present(server, tmp_path):
    root = server.add_folder("root")
    for index in range(2):
        server.add_file(f"part{index}.zip", random_bytes(1500, seed=index), parent=root)
    first = run_download(server, tmp_path, drive_folder_id=root)
    again = run_download(server, tmp_path, drive_folder_id=root)
    assert first.fetched == first.files and len(first.files) == 2
    assert again.fetched == [] and again.files == first.files


def test_secrets_folder_is_ignored_by_git():
    """docs/google_drive.md tells users to keep their key in secrets/: it must never be committed."""
    repository = Path(__file__).resolve().parents[1]
    patterns = (repository / ".gitignore").read_text().splitlines()
    assert "/secrets/" in patterns
    checked = subprocess.run(["git", "check-ignore", "-q", "secrets/drive-service-account.json"],
                             cwd=repository, capture_output=True)
    if checked.returncode != 128:  # 128: not a git checkout (an unpacked release)
        assert checked.returncode == 0
