"""The worker's scene cache (`scratch/scenes/`): each downloaded scene (`<sha256><suffix>`) or
unpacked pack (`<sha256>/`) is one entry, kept for the next task of the same scene; beyond the
cap (FARM_SCENE_CACHE_GB) the least recently used entries are evicted, never the one in use.
An entry's modification time is when it was last used; names starting with a dot are downloads
and unpacks in progress, neither counted nor touched."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("renderfarm.worker")


def entry_size(path: Path) -> int:
    """Bytes an entry holds: a file's size, or the sum of the files below a folder (links not
    followed)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
        total = 0
        for folder, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    pass
        return total
    except FileNotFoundError:
        return 0


def use(path: Path) -> None:
    """Mark an entry used now."""
    now = time.time()
    os.utime(path, (now, now), follow_symlinks=False)


def evict(folder: Path, cap_bytes: int, in_use: set[str]) -> list[str]:
    """Remove the least recently used entries of `folder` until it holds at most `cap_bytes`,
    never one named in `in_use` (which may on its own be over the cap); returns the names
    removed, oldest first."""
    entries = []
    try:
        listed = list(folder.iterdir())
    except FileNotFoundError:
        return []
    for path in listed:
        if path.name.startswith("."):
            continue
        try:
            used = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        entries.append((used, path.name, path, entry_size(path)))
    total = sum(size for *_, size in entries)
    removed = []
    for _used, name, path, size in sorted(entries):
        if total <= cap_bytes:
            break
        if name in in_use:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        total -= size
        removed.append(name)
    if removed:
        log.info("scene cache: evicted %d scene(s) beyond %d bytes: %s", len(removed), cap_bytes, ", ".join(removed))
    return removed
