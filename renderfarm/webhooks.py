"""Webhooks: which URLs may receive them, what a notification's POST carries and how it is signed,
how long to wait before trying again, and the POST itself (the standard library's HTTP client).

A POST's body is the notification's JSON, recorded with the state change that caused it (see
renderfarm.outbox); its headers name the event and, with FARM_WEBHOOK_SECRET set, sign the body:
`X-Farm-Signature: sha256=<hex HMAC-SHA256 of the raw body>`. No database, no ORM: the CLI and
the submission's parse check URLs with this module too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from renderfarm.errors import InputError, shown
from renderfarm.urls import mask_url

MAX_URL = 2048  # characters in a webhook URL
BACKOFF_FIRST = 2.0  # seconds before the second try; each later wait doubles...
BACKOFF_MAX = 600.0  # ...up to this
ERROR_MAX = 500  # characters of a failure kept
SIGNATURE_HEADER = "X-Farm-Signature"
EVENT_ID_HEADER = "X-Farm-Event-Id"
EVENT_HEADER = "X-Farm-Event"
TIMESTAMP_HEADER = "X-Farm-Timestamp"
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class EventKind(str, Enum):
    """What a notification tells."""

    JOB_DONE = "job.done"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    TASK_FAILED = "task.failed"  # a task used up its attempts


def check_webhook_url(url: str, what: str = "notify") -> str:
    """An http(s) URL with a host, printable ASCII, at most MAX_URL characters: anything else
    (file:, gopher:, a bare path) is refused naming the value."""
    if not isinstance(url, str) or not url:
        raise InputError(f"{what}: a webhook URL may not be empty")
    if len(url) > MAX_URL:
        raise InputError(f"{what}: {shown(mask_url(url), 60)} is {len(url)} characters, over {MAX_URL}")
    if not _PRINTABLE.match(url):
        raise InputError(f"{what}: {shown(mask_url(url), 60)} holds spaces or characters a URL may not")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as e:
        raise InputError(f"{what}: {shown(mask_url(url), 60)} is not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what}: {shown(mask_url(url), 60)} is not an http:// or https:// URL")
    return url


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """Whether a signature header matches the body (what a receiver does; the tests use it)."""
    return header is not None and hmac.compare_digest(header, sign(body, secret))


def headers(body: bytes, event_id: str, kind: str, secret: str | None, now: float) -> dict[str, str]:
    """The POST's headers: JSON, the event and its id, when it was sent, and the signature."""
    out = {
        "Content-Type": "application/json",
        "User-Agent": "renderfarm-webhook/1",
        EVENT_HEADER: kind,
        EVENT_ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(int(now)),
    }
    if secret:
        out[SIGNATURE_HEADER] = sign(body, secret)
    return out


def retry_delay(tries: int) -> float:
    """Seconds to wait after the `tries`-th failed try: 2, 4, 8... up to BACKOFF_MAX."""
    return min(BACKOFF_FIRST * 2 ** max(tries - 1, 0), BACKOFF_MAX)


@dataclass(frozen=True)
class Outcome:
    """How one POST went: the HTTP status (None when none came back) and why it failed."""

    status: int | None
    error: str | None = None
    seconds: float = 0.0

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: bytes, head: dict[str, str], timeout: float) -> Outcome:
    """POST once, waiting at most `timeout` seconds to connect and for each read; redirects are
    not followed (a 3xx is a failure, so a URL cannot bounce the farm somewhere else)."""
    import http.client
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=body, headers=head, method="POST")
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return Outcome(None, f"{type(reason).__name__}: {reason}"[:ERROR_MAX], time.monotonic() - started)
    seconds = time.monotonic() - started
    if 200 <= status < 300:
        return Outcome(status, None, seconds)
    return Outcome(status, f"HTTP {status}", seconds)
