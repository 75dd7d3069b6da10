"""AWS Signature Version 4 for the S3 backend's direct requests (renderfarm.storage.s3._Direct):
the headers botocore's S3SigV4Auth adds to the same request (tests/test_sigv4.py compares them
byte for byte), without its generic machinery: a frame's read-back or upload is signed several
times a task, and botocore's signer cost about a third of such a request's CPU time."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP = "%Y%m%dT%H%M%SZ"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Signer:
    """Signs requests with one set of credentials for one region and service."""

    def __init__(self, access_key: str, secret_key: str, token: str | None, region: str, service: str = "s3") -> None:
        self.access_key, self.secret_key, self.token = access_key, secret_key, token
        self.region, self.service = region, service
        self._key: tuple[str, bytes] | None = None  # (date, signing key): one HMAC instead of five

    def sign(self, method: str, url: str, headers: dict[str, str], payload_sha256: str,
             timestamp: str | None = None) -> dict[str, str]:
        """`headers` with X-Amz-Date, X-Amz-Content-SHA256, X-Amz-Security-Token (with a token)
        and Authorization added. `url` is already quoted, without a query string."""
        parts = urlsplit(url)
        if parts.query:
            raise ValueError("a signed direct request has no query string")
        timestamp = timestamp or time.strftime(TIMESTAMP, time.gmtime())
        out = {k: v for k, v in headers.items() if k.lower() not in _OURS}
        out["X-Amz-Date"] = timestamp
        if self.token:
            out["X-Amz-Security-Token"] = self.token
        out["X-Amz-Content-SHA256"] = payload_sha256
        canonical = {name.lower(): " ".join(value.split()) for name, value in out.items()}
        canonical.setdefault("host", _host(parts))
        names = sorted(canonical)
        signed = ";".join(names)
        request = "\n".join([
            method.upper(), parts.path or "/", "", "".join(f"{n}:{canonical[n]}\n" for n in names), signed, payload_sha256,
        ])
        date = timestamp[:8]
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        text = "\n".join([ALGORITHM, timestamp, scope, hashlib.sha256(request.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(date), text.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = f"{ALGORITHM} Credential={self.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        return out

    def _signing_key(self, date: str) -> bytes:
        if self._key is None or self._key[0] != date:
            key = f"AWS4{self.secret_key}".encode()
            for part in (date, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (date, key)
        return self._key[1]


_OURS = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "date"}


def _host(parts) -> str:
    """The Host header as botocore signs it: the host, with its port unless the scheme's own."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host
