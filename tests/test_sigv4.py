"""The direct requests' SigV4 signer (renderfarm.storage.sigv4) against botocore's own
S3SigV4Auth on the same requests, header for header: keys that need quoting, metadata and copy
headers, a session token, default and other ports, an IPv6 endpoint, a body and none."""

from __future__ import annotations

import datetime
import hashlib
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from renderfarm.storage.sigv4 import Signer

WHEN = datetime.datetime(2026, 12, 6, 9, 1, 2)
CASES = [
    ("GET", "http://127.0.0.1:8333/farm/", "nodes/n1/jobs/j1/1/1/shot.0001.png", {}, b"", None),
    ("PUT", "http://127.0.0.1:8333/farm/", "jobs/j1/frames/shot.0001.png", {"x-amz-meta-sha256": "ab" * 32}, b"\x89PNG" * 50, None),
    ("PUT", "https://s3.example.com/my bucket/", "a b/ü+%/ö~!*'().png", {"x-amz-copy-source": "/farm/a%20b",
                                                                          "x-amz-copy-source-if-match": '"etag  1"'}, b"", "TOKEN/+=="),
    ("GET", "https://s3.example.com:443/farm/", "k", {}, b"", None),
    ("HEAD", "http://[::1]:9000/farm/", "k/../x", {"X-Amz-Meta-Sha256": "  spaced   value "}, b"", None),
]


@pytest.mark.parametrize(("method", "base", "key", "headers", "body", "token"), CASES)
def test_signed_as_botocore_signs(monkeypatch, method, base, key, headers, body, token):
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: WHEN)
    url = base + quote(key)
    theirs = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token), "s3", "eu-west-3").add_auth(theirs)
    ours = Signer("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token, "eu-west-3").sign(
        method, url, headers, hashlib.sha256(body).hexdigest(), WHEN.strftime("%Y%m%dT%H%M%SZ"))
    assert ours == dict(theirs.headers.items())


def test_a_new_day_signs_with_that_days_key():
    signer = Signer("AK", "SK", None, "us-east-1")
    one = signer.sign("GET", "http://h/b/k", {}, hashlib.sha256(b"").hexdigest(), "20261206T235959Z")
    two = signer.sign("GET", "http://h/b/k", {}, hashlib.sha256(b"").hexdigest(), "20261207T000000Z")
    assert "20261207/us-east-1/s3/aws4_request" in two["Authorization"]
    fresh = Signer("AK", "SK", None, "us-east-1").sign("GET", "http://h/b/k", {}, hashlib.sha256(b"").hexdigest(),
                                                        "20261207T000000Z")
    assert two == fresh and one["Authorization"] != two["Authorization"]
