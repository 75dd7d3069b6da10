"""The manager's verification of an attempt's outputs before promotion to the final frame keys."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from renderfarm.errors import VerificationError
from renderfarm.manager.expected import Expected
from renderfarm.manager.verify import verify_and_promote
from renderfarm.storage.files import FileStorage
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import Output

JOB = "a1b2c3d4"


def png(width: int, height: int, colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def storage(tmp_path):
    return FileStorage(tmp_path / "store", "file://" + str(tmp_path / "store"))


def key_of(frame: int, attempt: int = 2) -> str:
    """Where attempt 2 of task 3 writes a frame (the key the manager derives, never one it is told)."""
    return attempt_prefix("node-1", JOB, 3, attempt) + f"shot.{frame:04d}.png"


def stage(storage, frame: int, data: bytes, *, attempt: int = 2, **overrides) -> Output:
    storage.put_bytes(key_of(frame, attempt), data)
    fields = {"frame": frame, "sha256": hashlib.sha256(data).hexdigest(), "size": max(1, len(data)), **overrides}
    return Output(**fields)


def verify(storage, outputs, frames=(1, 2)):
    expected = [Expected(f, f"jobs/{JOB}/frames/shot.{f:04d}.png", 32, 18) for f in frames]
    return verify_and_promote(storage, outputs, node="node-1", job_id=JOB, task_index=3, attempt=2, name="shot",
                              expected=expected, fmt="png")


def test_verified_frames_are_promoted_and_attempt_copies_returned(storage):
    outputs = [stage(storage, 1, png(32, 18)), stage(storage, 2, png(32, 18))]
    leftovers = verify(storage, outputs)
    assert leftovers == [key_of(1), key_of(2)]
    finals = [f"jobs/{JOB}/frames/shot.0001.png", f"jobs/{JOB}/frames/shot.0002.png"]
    assert sorted(o.key for o in storage.list(f"jobs/{JOB}/frames/")) == finals
    assert storage.get_bytes(finals[0]) == png(32, 18)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: [stage(s, 1, png(32, 18))], "no output for frame(s) 2"),
        (lambda s: [stage(s, 1, png(32, 18)), stage(s, 2, png(32, 18)[:60])], "truncated 8-bit PNG"),
        (lambda s: [stage(s, 1, png(32, 18)), stage(s, 2, png(64, 18))], "64x18 pixels, expected 32x18"),
        (lambda s: [stage(s, 1, png(32, 18)), stage(s, 2, b"")], "empty file"),
        (lambda s: [stage(s, 1, png(32, 18)), stage(s, 2, png(32, 18), sha256="0" * 64)], "do not match"),
        (lambda s: [stage(s, 1, png(32, 18)), stage(s, 2, png(32, 18), attempt=1)], "missing from storage"),
        (lambda s: [stage(s, 1, png(32, 18)), stage(s, 2, b"GIF89a" + bytes(40))], "not a PNG file, expected 8-bit PNG"),
    ],
    ids=["missing", "truncated", "wrong-size", "empty", "sha-mismatch", "other-attempt", "not-png"],
)
def test_bad_outputs_are_rejected_and_nothing_promoted(storage, make, message):
    outputs = make(storage)
    with pytest.raises(VerificationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify(storage, outputs)
    assert not list(storage.list(f"jobs/{JOB}/frames/"))


def test_object_deleted_after_the_event_is_reported(storage):
    outputs = [stage(storage, 1, png(32, 18)), stage(storage, 2, png(32, 18))]
    storage.delete([key_of(2)])
    with pytest.raises(VerificationError, match="missing from storage"):
        verify(storage, outputs)


def tagged(storage, frame: int, data: bytes) -> Output:
    """An output as a worker reports it: uploaded from a file, with the tag storage gave it."""
    import tempfile
    from pathlib import Path

    key = key_of(frame)
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as f:
        f.write(data)
    etag = storage.put_file(key, Path(f.name))
    Path(f.name).unlink()
    return Output(frame=frame, sha256=hashlib.sha256(data).hexdigest(), size=len(data), etag=etag)


def test_checked_frames_are_written_back_with_their_digest(storage):
    outputs = [tagged(storage, 1, png(32, 18)), tagged(storage, 2, png(32, 18, (0, 9, 9)))]
    verify(storage, outputs)
    final = f"jobs/{JOB}/frames/shot.0002.png"
    assert storage.get_bytes(final) == png(32, 18, (0, 9, 9))
    assert storage.head(final).sha256 == outputs[1].sha256


def test_frames_past_what_a_task_keeps_in_memory_are_copied_on_the_server(storage, monkeypatch):
    """Past KEEP_MAX for the task, a frame is promoted by a copy conditional on the version read,
    not written back: the same bytes, with the upload's own record (here none), not the digest."""
    from renderfarm.manager import verify as verify_module

    outputs = [tagged(storage, 1, png(32, 18)), tagged(storage, 2, png(32, 18, (0, 9, 9)))]
    monkeypatch.setattr(verify_module, "KEEP_MAX", 2 * len(png(32, 18)) - 1)  # not both frames
    verify(storage, outputs)
    final = f"jobs/{JOB}/frames/shot.0002.png"
    assert storage.get_bytes(final) == png(32, 18, (0, 9, 9))
    assert storage.head(final).sha256 is None  # copied: tagged() uploads without a digest


def test_a_tagged_output_changed_or_gone_since_upload_is_rejected(storage):
    outputs = [tagged(storage, 1, png(32, 18)), tagged(storage, 2, png(32, 18))]
    storage.put_bytes(key_of(2), png(32, 18, (1, 2, 3)))  # overwritten after the event
    with pytest.raises(VerificationError, match="do not match the reported size or SHA-256"):
        verify(storage, outputs)
    storage.delete([key_of(2)])
    with pytest.raises(VerificationError, match="missing from storage"):
        verify(storage, outputs)


@pytest.mark.parametrize("forged", [b"#!/bin/sh\nrm -rf ~\n", png(64, 36)[:200], png(16, 9)],
                         ids=["any-bytes", "cut-short", "wrong-size"])
def test_a_forged_frame_with_its_own_hash_and_tag_is_never_promoted(storage, forged):
    """The node's report (SHA-256, size, the upload's tag) all agree with the forged bytes: the
    manager decodes what it reads back before it promotes anything. (Before: an output with a
    tag was promoted by a conditional copy alone, and these bytes became frame 2.)"""
    outputs = [tagged(storage, 1, png(32, 18)), tagged(storage, 2, forged)]
    with pytest.raises(VerificationError, match="frame 2"):
        verify(storage, outputs)
    assert not list(storage.list(f"jobs/{JOB}/frames/"))
