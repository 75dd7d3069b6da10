"""The storage interface shared by the S3 and filesystem backends, and key checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from renderfarm.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the storage root), size, our SHA-256 if recorded,
    and when it was last written (seconds since the epoch, by storage's clock) where a listing says."""

    key: str
    size: int
    sha256: str | None = None
    modified: float | None = field(default=None, compare=False)


class Storage(Protocol):
    """A flat key space of immutable-ish objects. Keys are relative to the farm's storage root."""

    url: str

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> str:
        """Store a file; returns its version tag (S3's ETag; the file store's SHA-256)."""
    def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def presigned_get(self, key: str, expires: float) -> str | None:
        """A URL that reads the object for `expires` seconds without keys, where storage has them."""
    def get_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The object and its version tag, for a copy conditional on what was read."""
    def download_file(self, key: str, path: Path) -> ObjectInfo:
        """Fetch an object into a local file; returns what was fetched (size, our SHA-256 if
        recorded), both from the same read."""
    def head(self, key: str) -> ObjectInfo | None: ...
    def copy(self, src: str, dst: str, *, if_match: str | None = None) -> None:
        """Copy an object; with `if_match`, only if the source still has that version tag
        (StorageError "changed since it was stored" otherwise)."""
    def delete(self, keys: list[str]) -> None: ...
    def list(self, prefix: str, *, after: str = "") -> Iterator[ObjectInfo]:
        """The objects whose key starts with `prefix`, in key order; with `after`, only those whose
        key sorts after it (to go on from where an earlier listing stopped)."""
    def check(self) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the storage root or confuse S3 (.., leading /, empty parts,
    a trailing / that would name a directory rather than an object)."""
    if "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"storage key {key!r} is not a safe relative key")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything), or a safe key that may end with one /."""
    if not prefix:
        return prefix
    try:
        check_key(prefix.removesuffix("/"))
    except StorageError:
        raise StorageError(f"storage prefix {prefix!r} is not a safe relative prefix") from None
    return prefix


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
