"""Object storage: where scenes, attempt outputs, logs and final frames live (S3 or a shared filesystem)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from renderfarm.storage.base import ObjectInfo, Storage, check_key

if TYPE_CHECKING:
    from renderfarm.config import Settings

__all__ = ["ObjectInfo", "Storage", "check_key", "open_storage"]


def open_storage(settings: Settings, credentials: tuple[str, str] | None = None) -> Storage:
    """The storage backend named by settings.storage_url (s3:// or file://); `credentials`: S3 keys
    of its own (a node's identity) rather than the environment's or the local farm's."""
    if settings.storage_url.startswith("file://"):
        from renderfarm.storage.files import FileStorage

        return FileStorage.from_url(settings.storage_url)
    from renderfarm.storage.s3 import S3Storage

    return S3Storage.from_settings(settings, credentials)
