"""Size-based rotation of the local farm's process logs (`logs/NAME.log` in the state directory).

A log past LOG_MAX_BYTES is copied to `NAME.log.1` (the older copies move up to `NAME.log.2` ...
`NAME.log.LOG_KEEP`, the oldest is dropped) and then cut back to empty in place: each process
(Valkey, SeaweedFS, the manager, the workers) keeps writing through the descriptor it was started
with, opened for appending, so its next line lands at the start of the emptied file (what
logrotate calls copytruncate). A line written between the copy and the cut is lost; nothing else
is. The supervisor (`farm up -d`) and a foreground `farm up` check every few seconds, and a
process is never started on a log already past the size.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("renderfarm.supervisor")

LOG_MAX_BYTES = 10 * 2**20  # a log is rotated once it is past this size
LOG_KEEP = 5  # rotated copies kept of each log: at most (LOG_KEEP + 1) x LOG_MAX_BYTES per process, and a little
CHECK_EVERY = 5.0  # seconds between looks at the logs' sizes


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def rotate(path: Path, *, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Rotate one log if it is past `max_bytes`; True if it was."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:  # not written yet
        return False
    try:
        rotated(path, keep).unlink(missing_ok=True)
        for n in range(keep - 1, 0, -1):
            if rotated(path, n).exists():
                os.replace(rotated(path, n), rotated(path, n + 1))
        with path.open("rb") as src, rotated(path, 1).open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.truncate(path, 0)
    except OSError as e:  # a full disk or a log removed meanwhile: it is tried again next time
        log.warning("could not rotate %s (%s)", path, e.strerror or e)
        return False
    return True


def rotate_logs(folder: Path, *, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> list[Path]:
    """Rotate every `*.log` in `folder` that is past `max_bytes`; returns those rotated."""
    return [p for p in sorted(folder.glob("*.log")) if rotate(p, max_bytes=max_bytes, keep=keep)]
