"""The S3 storage backend (boto3 against AWS or any S3-compatible server), one client per process."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, urlsplit

from renderfarm.errors import InputError, StorageError
from renderfarm.storage.base import ObjectInfo, check_key, check_prefix

if TYPE_CHECKING:
    from renderfarm.config import Settings

_CLIENTS: dict[tuple, object] = {}
SINGLE_PUT_MAX = 16 * 1024 * 1024  # bytes; larger files go up (and come down) in parallel parts
PRESIGN_MAX = 7 * 24 * 3600  # seconds: the longest a SigV4 presigned URL may last
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500", "502", "504"}
_TRANSIENT_WORDS = ("Could not connect", "Connection was closed", "timed out", "ServiceUnavailable", "SlowDown", "InternalError", "Service Unavailable")


def _client(endpoint: str | None, region: str, checksums: str, credentials: tuple[str, str] | None):
    """One boto3 client per endpoint and process: creating one costs ~100 ms."""
    cache_key = (endpoint, region, checksums, credentials, os.getpid())
    if cache_key not in _CLIENTS:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            signature_version="s3v4",  # presigned URLs too (botocore presigns with SigV2 otherwise)
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
            s3={"addressing_style": "path"} if endpoint else {},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=16,
        )
        kwargs = {}
        if credentials:
            kwargs = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
        _CLIENTS[cache_key] = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, config=config, **kwargs
        )
    return _CLIENTS[cache_key]


class S3Storage:
    """Objects in one bucket under a key prefix."""

    def __init__(self, url: str, bucket: str, prefix: str, client, *, direct: bool = False) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = client
        self._direct = _Direct(client, bucket) if direct else None

    @classmethod
    def from_settings(cls, settings: Settings, credentials: tuple[str, str] | None = None) -> S3Storage:
        parts = urlsplit(settings.storage_url)
        prefix = parts.path.strip("/")
        return cls(
            settings.storage_url,
            parts.netloc,
            f"{prefix}/" if prefix else "",
            _client(settings.s3_endpoint_url, settings.s3_region, settings.s3_checksums,
                    credentials or local_credentials(settings)),
            # Plain signed requests need a path-style endpoint and no checksums beyond the SHA-256
            # signature: an S3-compatible server (the local farm's own), not AWS itself.
            direct=settings.s3_endpoint_url is not None and settings.s3_checksums == "when_required",
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, action: str, key: str, e: Exception) -> StorageError:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            why = f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            transient = status >= 500 or err.get("Code") in _TRANSIENT_CODES
        else:
            why = str(e)
            # s3transfer wraps the cause of a failed upload in its message only.
            transient = isinstance(e, (ConnectionError, HTTPClientError)) or (
                isinstance(e, S3UploadFailedError) and any(w in why for w in _TRANSIENT_WORDS)
            )
        return StorageError(f"storage s3://{self.bucket}/{self.prefix}{key}: {action} failed ({why})", transient=transient)

    def check(self) -> None:
        """Create the bucket if it is missing (the local farm's first start)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise self._fail("head bucket", "", e) from None
            try:
                self._s3.create_bucket(Bucket=self.bucket)
            except (BotoCoreError, ClientError) as e2:
                raise self._fail("create bucket", "", e2) from None
        except BotoCoreError as e:
            raise self._fail("head bucket", "", e) from None

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> str:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        metadata = {"sha256": sha256} if sha256 else {}
        try:
            if path.stat().st_size <= SINGLE_PUT_MAX:
                # One PUT: s3transfer's thread pool costs more than it saves on a small file. The
                # body as bytes: botocore sends a file with `Expect: 100-continue` and waits for
                # the server's go-ahead, one more round trip per upload on a long link.
                body = path.read_bytes()
                if self._direct is not None:
                    headers = {"x-amz-meta-sha256": sha256} if sha256 else {}
                    reply = self._direct.send("PUT", self._key(key), headers, body)
                    if reply is not None and reply.headers.get("ETag"):
                        return reply.headers["ETag"]
                return self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, Metadata=metadata)["ETag"]
            self._s3.upload_file(str(path), self.bucket, self._key(key), ExtraArgs={"Metadata": metadata})
            return self._s3.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"]
        except (BotoCoreError, ClientError, S3UploadFailedError) as e:
            raise self._fail("upload", key, e) from None

    def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._direct is not None:
            headers = {"x-amz-meta-sha256": sha256} if sha256 else {}
            reply = self._direct.send("PUT", self._key(key), headers, data)
            if reply is not None and reply.headers.get("ETag"):
                return
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                Metadata={"sha256": sha256} if sha256 else {})
        except (BotoCoreError, ClientError) as e:
            raise self._fail("put", key, e) from None

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (BotoCoreError, ClientError) as e:
            raise self._fail("get", key, e) from None

    def get_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The object and its version tag (ETag), for a copy conditional on what was read."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self._direct is not None:
            reply = self._direct.send("GET", self._key(key), {})
            if reply is not None:
                return reply.content, reply.headers.get("ETag")
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response.get("ETag")
        except (BotoCoreError, ClientError) as e:
            raise self._fail("get", key, e) from None

    def download_file(self, key: str, path: Path) -> ObjectInfo:
        """One GET straight away (s3transfer first asks for the size: one more round trip on a
        long link); a large object is fetched again by s3transfer, in parallel ranges. Returns
        what the GET found: the size and our SHA-256 if recorded (replaced meanwhile, the
        object's bytes will not match that SHA-256)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            info = ObjectInfo(key, response["ContentLength"], response.get("Metadata", {}).get("sha256"))
            body = response["Body"]
            if response["ContentLength"] > SINGLE_PUT_MAX:
                body.close()
                self._s3.download_file(self.bucket, self._key(key), str(path))
                return info
            with path.open("wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)
            return info
        except (BotoCoreError, ClientError) as e:
            raise self._fail("download", key, e) from None

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("head", key, e) from None
        except BotoCoreError as e:
            raise self._fail("head", key, e) from None
        return ObjectInfo(key, r["ContentLength"], r.get("Metadata", {}).get("sha256"))

    def copy(self, src: str, dst: str, *, if_match: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._direct is not None:
            headers = {"x-amz-copy-source": quote(f"/{self.bucket}/{self._key(src)}"),
                       "x-amz-metadata-directive": "COPY"}
            if if_match:
                headers["x-amz-copy-source-if-match"] = if_match
            reply = self._direct.send("PUT", self._key(dst), headers)
            # A copy can fail after its 200 has been sent: S3 then puts the error in the body.
            if reply is not None and b"<Error>" not in reply.content:
                return
        condition = {"CopySourceIfMatch": if_match} if if_match else {}
        try:
            self._s3.copy_object(
                Bucket=self.bucket,
                Key=self._key(dst),
                CopySource={"Bucket": self.bucket, "Key": self._key(src)},
                MetadataDirective="COPY",
                **condition,
            )
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"copy from {src}", dst, e) from None

    def delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            try:
                reply = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as e:
                raise self._fail("delete", keys[start], e) from None
            # DeleteObjects answers 200 and lists the keys it could not delete: those are failures too.
            errors = reply.get("Errors", [])
            if errors:
                first = errors[0]
                why = f"{first.get('Code', 'error')}: {first.get('Message', '')}".rstrip(": ")
                more = f"; {len(errors) - 1} more key(s) not deleted" if len(errors) > 1 else ""
                where = f"s3://{self.bucket}/{first.get('Key', '')}"
                raise StorageError(f"storage {where}: delete failed ({why}){more}")

    def presigned_get(self, key: str, expires: int) -> str:
        """A URL that lets whoever holds it GET the object for `expires` seconds (1 to 604800,
        SigV4's limit), signed with this store's credentials: no credentials of the reader's own."""
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= PRESIGN_MAX:
            raise InputError(f"expires: {expires!r} is not a whole number of seconds from 1 to {PRESIGN_MAX}")
        try:
            return self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires
            )
        except (BotoCoreError, ClientError) as e:
            raise self._fail("presign", key, e) from None

    def list(self, prefix: str, *, after: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        check_prefix(prefix)
        paginator = self._s3.get_paginator("list_objects_v2")
        start = {"StartAfter": self._key(after)} if after else {}
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, **start):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(self.prefix) :], obj["Size"],
                                     modified=obj["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as e:
            raise self._fail("list", prefix, e) from None


class _Direct:
    """Signed requests sent straight through the boto3 client's own connection pool, for the
    calls made once per frame: a worker's upload, and the manager's read-back and promotion.
    boto3's generic request pipeline (parameter validation, endpoint rules, a dozen event hooks,
    the response parser) costs about 0.9 ms of CPU a call; the same request signed here
    (renderfarm.storage.sigv4: botocore's S3 signer, byte for byte, at a fraction of its cost) and
    sent through the pool, much less. Only a 200 counts: anything else (an error answer, a
    redirect, a dropped connection) returns None and the caller makes the call through boto3
    again, for its retries and its error codes."""

    def __init__(self, client, bucket: str) -> None:
        self._client = client
        self._base = f"{client.meta.endpoint_url.rstrip('/')}/{quote(bucket)}/"
        self._region = client.meta.region_name or "us-east-1"
        self._origin = "{0}://{1}".format(*urlsplit(self._base)[:2])
        self._broken = False
        self._signed_as = None  # (frozen credentials, their Signer)
        self._pool = None  # the connection pool of the endpoint, once looked up

    def send(self, method: str, key: str, headers: dict[str, str], body: bytes = b""):
        """The response to a signed request, if it succeeded (status 200); otherwise None."""
        if self._broken:
            return None
        import hashlib

        from botocore.awsrequest import AWSRequest

        try:  # the client's credentials and pool are private to botocore: any change there ends this path
            credentials = self._client._get_credentials()
            http = self._client._endpoint.http_session
        except AttributeError:
            self._broken = True
            return None
        if credentials is None:  # anonymous access: boto3 knows how to send it unsigned
            return None
        url = self._base + quote(key)
        try:
            signed = self._signer(credentials.get_frozen_credentials()).sign(
                method, url, headers, hashlib.sha256(body).hexdigest())
            pool = self._pool_of(http)
            if pool is None:
                reply = http.send(AWSRequest(method=method, url=url, headers=signed, data=body).prepare())
                return reply if reply.status_code == 200 else None
            answer = pool.urlopen(method, url[len(self._origin):], body=body or None, headers=signed, retries=False,
                                  redirect=False, assert_same_host=False, preload_content=True, decode_content=False)
        except Exception:  # whatever went wrong, boto3's own path decides
            self._pool = None
            return None
        return _Reply(answer.status, answer.headers, answer.data) if answer.status == 200 else None

    def _pool_of(self, http):
        """The urllib3 pool botocore's session sends this endpoint's requests through (its TLS
        settings and timeouts), used straight: botocore's send looks up proxies and parses the
        URL each time, and wraps the answer, a tenth of a millisecond a request. None where a
        proxy is set for the endpoint: botocore's own send goes through it."""
        if self._pool is None:
            if http._proxy_config.proxy_url_for(self._base):
                return None
            pool = http._get_connection_manager(self._base, None).connection_from_url(self._base)
            http._setup_ssl_cert(pool, self._base, http._verify)
            self._pool = pool
        return self._pool

    def _signer(self, frozen):
        """A signer of these credentials (refreshed ones get a new one)."""
        from renderfarm.storage.sigv4 import Signer

        if self._signed_as is None or self._signed_as[0] != frozen:
            self._signed_as = (frozen, Signer(frozen.access_key, frozen.secret_key, frozen.token, self._region))
        return self._signed_as[1]


class _Reply(NamedTuple):
    status_code: int
    headers: Mapping[str, str]  # urllib3's: case-insensitive
    content: bytes


def local_credentials(settings: Settings) -> tuple[str, str] | None:
    """The local farm's generated S3 credentials, when the endpoint is the local farm's own
    (whatever AWS keys the environment holds are for other endpoints)."""
    if settings.s3_endpoint_url is None or settings.sources.get("s3_endpoint_url") != "local farm":
        return None
    from renderfarm.config import read_local_file

    local = read_local_file(settings.state_dir)
    if "s3_access_key" in local and "s3_secret_key" in local:
        return local["s3_access_key"], local["s3_secret_key"]
    return None
