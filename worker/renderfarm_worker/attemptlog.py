"""An attempt's log on the worker: the renderer's output and the worker's own notes, on disk
beside the attempt and uploaded with it. Writing it never raises: on a full or read-only disk it
goes on in memory, so the failure it ends with still reaches `farm log`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from renderfarm_worker.runtime import WorkerRuntime

log = logging.getLogger("renderfarm.worker")

MEMORY_CAP = 1 << 20  # bytes kept in memory once the disk refused the log (the start is kept)


class AttemptLog:
    """The log of one attempt: `write` renderer output, `note` a `# ...` line of our own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._memory: bytearray | None = None
        self.error: OSError | None = None  # the first write error: the disk refused the log
        try:
            # Unbuffered, so what the disk refuses is known to the byte and kept: a buffered file
            # lost its buffer when the flush failed, and on a full disk the failure's own line.
            self._file = path.open("wb", buffering=0)
        except OSError as e:
            self._to_memory(e)

    def write(self, data: bytes) -> None:
        if self._file is not None:
            rest = memoryview(data)
            try:
                while rest:
                    rest = rest[self._file.write(rest):]
                return
            except OSError as e:
                data = bytes(rest)
                self._to_memory(e)
        if self._memory is not None and len(self._memory) < MEMORY_CAP:
            self._memory += data[: MEMORY_CAP - len(self._memory)]

    def note(self, text: str) -> None:
        """A line of the worker's own (`# exit 0 after ...`), on disk at once."""
        self.write(f"# {text}\n".encode("utf-8", "replace"))
        self.flush()

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as e:
                self._to_memory(e)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self._to_memory(e)
            self._file = None

    def upload(self, rt: WorkerRuntime, key: str) -> str | None:
        """Store the log at `key` (everything written so far); the key, or None if storage
        refused it (the attempt is reported all the same)."""
        from renderfarm.errors import RenderFarmError
        from renderfarm_worker.runtime import Interrupted

        self.flush()
        try:
            if self._memory is not None:
                data = bytes(self._memory)
                rt.with_storage(f"upload {key}", lambda: rt.storage.put_bytes(key, data))
            else:
                rt.with_storage(f"upload {key}", lambda: rt.storage.put_file(key, self.path))
        except (RenderFarmError, Interrupted, OSError) as e:
            log.warning("could not store the log %s: %s", key, e)
            return None
        return key

    def _to_memory(self, e: OSError) -> None:
        """The disk refused the log: keep what it holds and go on in memory."""
        if self.error is None:
            self.error = e
            log.warning("the log %s cannot be written (%s); keeping it in memory", self.path, e)
        if self._memory is None:
            try:
                self._memory = bytearray(self.path.read_bytes()[:MEMORY_CAP])
            except OSError:
                self._memory = bytearray()
            self._memory += f"# the worker's disk refused this log: {e}\n".encode("utf-8", "replace")
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
