"""Signing in to Google Drive: a service-account key, or installed-app OAuth with a cached token.

No token, key or client secret is ever printed or logged: errors from the auth libraries are
re-raised ``from None`` because their messages may quote parts of a key.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Callable

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import google.oauth2.service_account
import google_auth_httplib2
import googleapiclient.discovery
import httplib2

from emotion_classifier.errors import PipelineError
from emotion_classifier.config import GetDataConfig
from emotion_classifier.files import atomic_path

logger = logging.getLogger(__name__)

# Read-only access is all a download needs; a leaked token then cannot change the user's Drive.
DRIVE_SCOPES = ["https://www.googleapis.com/auth/drive.readonly"]
DOCS_HINT = "see docs/google_drive.md"
# The cached OAuth sign-in, kept beside the OAuth client file (get_data.drive_credentials_file).
TOKEN_FILE_NAME = "drive-token.json"
# A request that hangs (a stalled connection) fails after this long and is retried like a drop.
REQUEST_TIMEOUT_SECONDS = 120


def token_path(settings: GetDataConfig) -> Path:
    """Where the OAuth sign-in is cached: beside the OAuth client file."""
    return Path(settings.drive_credentials_file).with_name(TOKEN_FILE_NAME)


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
            credentials_file, token_path(settings), authorize or _run_installed_app_flow
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



def rejected_credentials_message(settings: GetDataConfig) -> str:
    where = (
        f"the key in {settings.drive_credentials_file}" if settings.drive_auth == "service_account"
        else f"the cached token {token_path(settings)} (delete it to sign in again)"
    )
    return (
        f"Google Drive rejected the credentials ({where}, get_data.drive_auth={settings.drive_auth!r}); "
        f"provide a valid service-account key or OAuth sign-in ({DOCS_HINT})"
    )



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

