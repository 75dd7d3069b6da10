"""The file:// storage backend, for studios whose nodes share a filesystem."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from renderfarm.errors import StorageError
from renderfarm.storage.base import ObjectInfo, check_key, check_prefix

# What a missing object looks like on disk: no file, a directory of other keys in its place, or a
# file where one of its parent directories should be (S3 can hold both `a` and `a/b`; disk cannot).
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _copy(src, dst, digest) -> None:
    """Copy a stream in 1 MiB blocks, hashing what passes."""
    for block in iter(lambda: src.read(1 << 20), b""):
        digest.update(block)
        dst.write(block)


class FileStorage:
    """Objects as files under a root directory; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    @classmethod
    def from_url(cls, url: str) -> FileStorage:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"storage_url {url!r}: file:// URLs take no host (write file:///path)")
        return cls(Path(unquote(parts.path)), url)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot create {self.root} ({e.strerror})") from None

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> str:
        digest = hashlib.sha256()

        def fill(dst) -> None:
            with path.open("rb") as src:
                _copy(src, dst, digest)

        self._write(key, fill)
        return digest.hexdigest()

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda dst: dst.write(data))

    def _write(self, key: str, fill) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
            try:
                with os.fdopen(fd, "wb") as dst:
                    fill(dst)
                # mkstemp makes 0600 files; other nodes of a shared filesystem must read them.
                os.chmod(tmp, _FILE_MODE)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot write {key} ({e.strerror})") from None

    def _open(self, key: str):
        path = self._path(key)
        try:
            return path.open("rb")
        except _MISSING:
            raise StorageError(f"storage {self.url}: no object {key}") from None
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot read {key} ({e.strerror})") from None

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def get_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The object and its version tag (its SHA-256 here), for a copy conditional on it."""
        data = self.get_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def download_file(self, key: str, path: Path) -> None:
        with self._open(key) as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except _MISSING:
            return None
        return ObjectInfo(key, st.st_size) if stat.S_ISREG(st.st_mode) else None

    def copy(self, src: str, dst: str, *, if_match: str | None = None) -> None:
        digest = hashlib.sha256()

        def fill(out) -> None:
            _copy(f, out, digest)
            if if_match is not None and digest.hexdigest() != if_match:
                raise StorageError(f"storage {self.url}: {src} changed since it was stored (PreconditionFailed)")

        with self._open(src) as f:
            self._write(dst, fill)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink()
            except _MISSING:
                pass
            except OSError as e:
                raise StorageError(f"storage {self.url}: cannot delete {key} ({e.strerror})") from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a string prefix, as on S3), in key order."""
        check_prefix(prefix)
        # Walk from the deepest directory the prefix names in full: "jobs/a" matches jobs/a.txt too.
        start = self.root / prefix.rpartition("/")[0]
        found = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".put-"):  # a write in progress
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append((key, path))
        for key, path in sorted(found):
            try:
                yield ObjectInfo(key, path.stat().st_size)
            except FileNotFoundError:  # deleted since the walk
                continue
