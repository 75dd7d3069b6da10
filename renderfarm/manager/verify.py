"""Verifying an attempt's outputs and promoting them to the job's final frame keys."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from renderfarm.errors import StorageError, VerificationError
from renderfarm.frames import frame_name
from renderfarm.storage.keys import attempt_prefix

if TYPE_CHECKING:
    from renderfarm.manager.expected import Expected
    from renderfarm.storage import Storage
    from renderfarm.wire import Output


def verify_and_promote(
    storage: Storage, outputs: list[Output], *, node: str, job_id: str, task_index: int, attempt: int, name: str,
    expected: list[Expected], fmt: str,
) -> list[str]:
    """Check every output the attempt says it wrote, here, whatever the node says: read it back
    from the attempt's own key, compare its size and SHA-256 with the node's report, decode it
    whole in the job's format and size; then promote it to its final key. Nothing but the bytes
    checked is ever promoted: they are written back from here (one PUT: on an S3 server cheaper
    than a server-side copy, which reads the object again), or, past what a task may keep in
    memory (KEEP_MAX), copied on the server, conditional on the version read. Returns the
    attempt's own copies, to be deleted once the task is committed. A transient StorageError
    (storage unreachable) passes through: that is no verdict on the attempt."""
    from renderfarm.images import extension

    prefix = attempt_prefix(node, job_id, task_index, attempt)
    by_frame = {out.frame: out for out in outputs}
    missing = [e.frame for e in expected if e.frame not in by_frame]
    if missing:
        raise VerificationError(f"no output for frame(s) {', '.join(map(str, missing))}")
    ext = extension(fmt)
    pairs = [(by_frame[want.frame], want, prefix + frame_name(name, want.frame, ext)) for want in expected]
    keep = min(KEEP_MAX // max(1, len(pairs)), FRAME_KEEP_MAX)  # the most bytes of one frame kept to write back
    # Every frame is checked before any is promoted: a task is committed whole or not at all.
    checked = _in_parallel([lambda o=out, w=want, k=key: _check(storage, o, w, k, fmt, keep)
                            for out, want, key in pairs])
    _in_parallel([lambda o=out, w=want, k=key, c=check: _promote(storage, o, w, k, *c)
                  for (out, want, key), check in zip(pairs, checked)])
    return [key for _, _, key in pairs]


KEEP_MAX = 64 * 2**20  # bytes of one task's checked frames kept in memory to be written back...
FRAME_KEEP_MAX = 16 * 2**20  # ...and of one frame; a larger one is copied on the server


def _check(storage: Storage, out: Output, want: Expected, key: str, fmt: str,
           keep: int) -> tuple[bytes | None, str | None]:
    """Read one output back and check it; returns the bytes read (when at most `keep` of them)
    and their version tag."""
    from renderfarm.images import check_image

    what = f"frame {want.frame} ({key})"
    try:
        data, tag = storage.get_tagged(key)
    except StorageError as e:
        if e.transient:
            raise
        raise VerificationError(f"{what}: missing from storage ({e})") from None
    if len(data) == 0:
        raise VerificationError(f"{what}: empty file")
    if len(data) != out.size or hashlib.sha256(data).hexdigest() != out.sha256:
        raise VerificationError(f"{what}: {len(data)} bytes do not match the reported size or SHA-256")
    check_image(data, fmt=fmt, width=want.width, height=want.height, what=what)
    return (data if len(data) <= keep else None), tag


def _promote(storage: Storage, out: Output, want: Expected, key: str, data: bytes | None, tag: str | None) -> None:
    what = f"frame {want.frame} ({key})"
    try:
        if data is not None:  # the very bytes checked
            storage.put_bytes(want.final_key, data, sha256=out.sha256)
        else:
            storage.copy(key, want.final_key, if_match=tag)
    except StorageError as e:
        if e.transient:
            raise
        text = str(e)
        if "PreconditionFailed" in text or "pre-condition" in text.lower():
            raise VerificationError(f"{what}: changed in storage while it was checked") from None
        raise VerificationError(f"{what}: missing from storage ({e})") from None


_POOL = None


def _in_parallel(calls: list) -> list:
    """Run storage calls concurrently (they wait on the network, not the CPU); their results in
    order, or the first error, raised after all have finished."""
    global _POOL
    if len(calls) == 1:
        return [calls[0]()]
    from concurrent.futures import ThreadPoolExecutor

    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="promote")
    futures = [_POOL.submit(c) for c in calls]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


def outputs_in_storage(storage: Storage, *, node: str, job_id: str, task_index: int, attempt: int,
                       frames: list[int], name: str, ext: str) -> list[Output] | None:
    """An attempt's outputs as its done event would have listed them, found in storage (the event
    was lost); None unless every frame is there. SHA-256s come from the objects' metadata."""
    from renderfarm.wire import Output

    prefix = attempt_prefix(node, job_id, task_index, attempt)
    found = []
    for frame in frames:
        key = prefix + frame_name(name, frame, ext)
        info = storage.head(key)
        if info is None or info.size < 1:
            return None
        sha = info.sha256 or hashlib.sha256(storage.get_bytes(key)).hexdigest()
        found.append(Output(frame=frame, sha256=sha, size=info.size))
    return found
