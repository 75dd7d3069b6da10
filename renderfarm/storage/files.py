"""The file:// storage backend, for studios whose nodes share a filesystem."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from renderfarm.errors import StorageError
from renderfarm.storage.base import ObjectInfo, check_key, check_prefix

# Our SHA-256 of an object, kept with the file as S3 keeps it in the object's metadata. Set on
# the temporary file before its rename, so an object and its digest appear together.
SHA256_XATTR = "user.renderfarm.sha256"
# Each directory below the root is opened on its own, relative to its parent and without
# following a symbolic link, so no key can lead outside the root, whatever the tree holds.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a key must not wait for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_PREFIX = ".put-"


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class _Missing(Exception):
    """No object under a key: nothing there, a directory of other keys, or a file where one of
    its parent directories should be (S3 can hold both `a` and `a/b`; disk cannot)."""


def _copy(src, dst, digest) -> None:
    """Copy a stream in 1 MiB blocks, hashing what passes."""
    for block in iter(lambda: src.read(1 << 20), b""):
        digest.update(block)
        dst.write(block)


def _recorded_sha256(fd: int) -> str | None:
    try:
        value = os.getxattr(fd, SHA256_XATTR).decode("ascii", "replace")
    except OSError:  # none recorded, or a filesystem without extended attributes
        return None
    return value if len(value) == 64 else None


def _record_sha256(fd: int, sha256: str) -> None:
    try:
        os.setxattr(fd, SHA256_XATTR, sha256.encode("ascii"))
    except OSError as e:
        # A filesystem without user attributes (NFSv3, SMB) keeps the object without its digest.
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise


class FileStorage:
    """Objects as files under a root directory. Writes are atomic (temporary file, then
    rename). A symbolic link, or anything else that is not a plain file or directory, below
    the root is refused: a node that can write into the shared tree must not make the farm
    read, overwrite or delete anything outside it."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    @classmethod
    def from_url(cls, url: str) -> FileStorage:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"storage_url {url!r}: file:// URLs take no host (write file:///path)")
        return cls(Path(unquote(parts.path)), url)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot create {self.root} ({e.strerror})") from None

    def _refused(self, key: str, where: str, what: str = "a symbolic link") -> StorageError:
        return StorageError(f"storage {self.url}: refused {key}: {where} is {what}")

    def _is_link(self, dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _walk(self, key: str, parts: list[str], *, create: bool = False) -> int:
        """An open descriptor of the directory root/parts, reached one directory at a time.
        _Missing when one is not there (or is a file); refused when one is a symbolic link."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise _Missing from None
        try:
            for depth, part in enumerate(parts, 1):
                if create:
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if self._is_link(fd, part):
                        raise self._refused(key, "/".join(parts[:depth])) from None
                    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
                        raise _Missing from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent(self, key: str, *, create: bool = False) -> tuple[int, str]:
        """The open directory that holds `key`, and the key's last part."""
        *parents, name = check_key(key).split("/")
        return self._walk(key, parents, create=create), name

    def _open_file(self, key: str) -> int:
        """A descriptor open for reading on the plain file under `key`; _Missing if none."""
        dir_fd, name = self._parent(key)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP or self._is_link(dir_fd, name):
                raise self._refused(key, key) from None
            if isinstance(e, (FileNotFoundError, NotADirectoryError)):
                raise _Missing from None
            raise
        finally:
            os.close(dir_fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise _Missing
            raise self._refused(key, key, "not a plain file")
        return fd

    def _open(self, key: str) -> int:
        try:
            return self._open_file(key)
        except _Missing:
            raise StorageError(f"storage {self.url}: no object {key}") from None
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot read {key} ({e.strerror})") from None

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> str:
        """Store a file; `sha256` (the caller's digest of it) is kept with it, as S3 keeps it
        in the object's metadata. Returns the SHA-256 of the bytes stored."""
        digest = hashlib.sha256()

        def fill(dst) -> None:
            with path.open("rb") as src:
                _copy(src, dst, digest)

        self._write(key, fill, sha256)
        return digest.hexdigest()

    def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> None:
        self._write(key, lambda dst: dst.write(data), sha256)

    def _write(self, key: str, fill: Callable, sha256: str | None = None) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            dir_fd, name = self._parent(key, create=True)
        except _Missing:  # a file where a directory of the key should be
            raise StorageError(f"storage {self.url}: cannot write {key} (Not a directory)") from None
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot write {key} ({e.strerror})") from None
        try:
            if self._is_link(dir_fd, name):
                raise self._refused(key, key)
            tmp = f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
            try:
                with os.fdopen(os.open(tmp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd), "wb") as dst:
                    fill(dst)
                    dst.flush()
                    # Other nodes of a shared filesystem must read what this one wrote.
                    os.chmod(dst.fileno(), _FILE_MODE)
                    if sha256:
                        _record_sha256(dst.fileno(), sha256)
                # rename() replaces the name itself: were it swapped for a link meanwhile, the
                # link goes, never what it points to.
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                raise
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot write {key} ({e.strerror})") from None
        finally:
            os.close(dir_fd)

    def get_bytes(self, key: str) -> bytes:
        with os.fdopen(self._open(key), "rb") as f:
            return f.read()

    def presigned_get(self, key: str, expires: float) -> str | None:
        """None: the nodes of a shared filesystem read it where it lies."""
        return None

    def get_tagged(self, key: str) -> tuple[bytes, str | None]:
        """The object and its version tag (its SHA-256 here), for a copy conditional on it."""
        data = self.get_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def download_file(self, key: str, path: Path) -> ObjectInfo:
        """Copy an object to a local file; returns what was copied (size, recorded SHA-256)."""
        with os.fdopen(self._open(key), "rb") as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            return ObjectInfo(key, dst.tell(), _recorded_sha256(src.fileno()))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            fd = self._open_file(key)
        except _Missing:
            return None
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot read {key} ({e.strerror})") from None
        try:
            return ObjectInfo(key, os.fstat(fd).st_size, _recorded_sha256(fd))
        finally:
            os.close(fd)

    def copy(self, src: str, dst: str, *, if_match: str | None = None) -> None:
        """Copy an object with its recorded SHA-256 (S3 copies its metadata); with `if_match`,
        only if the source's bytes still have that SHA-256."""
        digest = hashlib.sha256()
        with os.fdopen(self._open(src), "rb") as f:
            recorded = _recorded_sha256(f.fileno())

            def fill(out) -> None:
                _copy(f, out, digest)
                if if_match is not None and digest.hexdigest() != if_match:
                    raise StorageError(f"storage {self.url}: {src} changed since it was stored (PreconditionFailed)")

            self._write(dst, fill, recorded)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                dir_fd, name = self._parent(key)
            except _Missing:
                continue
            except OSError as e:
                raise StorageError(f"storage {self.url}: cannot delete {key} ({e.strerror})") from None
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    raise self._refused(key, key)
                if not stat.S_ISDIR(mode):  # a directory of other keys is no object to delete
                    os.unlink(name, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                raise StorageError(f"storage {self.url}: cannot delete {key} ({e.strerror})") from None
            finally:
                os.close(dir_fd)

    def list(self, prefix: str, *, after: str = "") -> Iterator[ObjectInfo]:
        """Plain files whose key starts with `prefix` (a string prefix, as on S3), in key order
        (those after `after` only). Symbolic links, and everything below one, are no objects and
        are not listed."""
        check_prefix(prefix)
        # Walk from the deepest directory the prefix names in full: "jobs/a" matches jobs/a.txt too.
        base = prefix.rpartition("/")[0]
        try:
            start = self._walk(prefix, base.split("/") if base else [])
        except _Missing:
            return
        except OSError as e:
            raise StorageError(f"storage {self.url}: cannot list {prefix} ({e.strerror})") from None
        found = []
        try:
            for dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=start, follow_symlinks=False):
                for name in files:
                    if name.startswith(_TEMP_PREFIX):  # a write in progress
                        continue
                    key = os.path.normpath(os.path.join(base, dirpath, name))
                    if not key.startswith(prefix) or key <= after:
                        continue
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:  # deleted since the walk
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found.append(ObjectInfo(key, st.st_size, modified=st.st_mtime))
        finally:
            os.close(start)
        yield from sorted(found, key=lambda o: o.key)
