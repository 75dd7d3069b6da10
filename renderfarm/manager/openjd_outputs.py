"""The files of OpenJD tasks: verified by the manager itself and promoted to the job's keys,
recorded in the database (table `outputs`), and handed to the tasks of the steps that depend on
them as their inputs.

Where they live in storage:

    <attempt prefix>outputs/<path>                 as the node uploaded it (its own prefix)
    jobs/<job>/outputs/<step>/<path>               committed: the manager's copy of the bytes it
                                                   checked (`farm delete` removes it with the job)

`<path>` is relative to the session's params/ folder (`FramesDir/frames/f.0001.png`); `<step>` is
the step's name made safe for a key (see `step_folder`). Two tasks of one step that write the same
path commit the same key: the one committed last is kept (and recorded)."""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import StorageError, VerificationError
from renderfarm.storage.base import sha256_file
from renderfarm.storage.keys import attempt_prefix, job_prefix

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.models import Job, Task
    from renderfarm.storage import Storage
    from renderfarm.wire import OpenJDInput, Output

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".exr": "exr"}
DECODE_MAX = 512 * 2**20  # bytes of an image decoded to check it; a larger one is checked by SHA-256 only
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Committed:
    """One output, checked and promoted: what the `outputs` table records."""

    path: str
    key: str
    size: int
    sha256: str


def outputs_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}outputs/"


def step_folder(step: str) -> str:
    """A step's name as one part of a key: itself where it is plain (`Render`), else its plain
    characters and a digest of the name (`Contact_sheet-1a2b3c4d`), so two names never meet."""
    safe = _UNSAFE.sub("_", step)[:48].strip(".") or "_"
    if safe == step:
        return step
    return f"{safe}-{hashlib.sha256(step.encode()).hexdigest()[:8]}"


def final_key(job_id: str, step: str, path: str) -> str:
    return f"{outputs_prefix(job_id)}{step_folder(step)}/{path}"


def final_keys(job_id: str, step: str, outputs: list[Output]) -> list[str]:
    return [final_key(job_id, step, o.path) for o in outputs if o.path is not None]


def verify_and_promote_files(storage: Storage, outputs: list[Output], *, node: str, job_id: str, task_index: int,
                             attempt: int, step: str) -> tuple[list[str], list[Committed]]:
    """Check every file an OpenJD attempt says it wrote, here: read it back from the attempt's own
    key, compare its size and SHA-256 with the node's report, decode it whole if it is an image
    (by its suffix: PNG, JPEG, TIFF, EXR); then write the very bytes checked to its final key.
    Every file is checked before any is promoted. Returns the attempt's own copies (to delete
    once the task is committed) and what was committed. An attempt may write no file at all."""
    from renderfarm.manager.verify import _in_parallel

    if any(o.path is None for o in outputs):
        raise VerificationError("an OpenJD task's outputs are files named by their paths, not frames")
    paths = [o.path for o in outputs]
    if len(set(paths)) != len(paths):
        raise VerificationError("the same output path is reported twice")
    if not outputs:
        return [], []
    prefix = attempt_prefix(node, job_id, task_index, attempt)
    with tempfile.TemporaryDirectory(prefix="farm-verify-") as folder:
        pairs = [(out, prefix + "outputs/" + out.path, Path(folder) / f"{i}{Path(out.path).suffix.lower()}")
                 for i, out in enumerate(outputs)]
        _in_parallel([lambda o=out, k=key, p=local: _check(storage, o, k, p) for out, key, local in pairs])
        _in_parallel([lambda o=out, p=local: _promote(storage, o, final_key(job_id, step, o.path), p)
                      for out, _key, local in pairs])
    committed = [Committed(o.path, final_key(job_id, step, o.path), o.size, o.sha256) for o in outputs]
    return [key for _, key, _ in pairs], committed


def _check(storage: Storage, out: Output, key: str, local: Path) -> None:
    what = f"output {out.path} ({key})"
    try:
        storage.download_file(key, local)
    except StorageError as e:
        if e.transient:
            raise
        raise VerificationError(f"{what}: missing from storage ({e})") from None
    size = local.stat().st_size
    if size == 0:
        raise VerificationError(f"{what}: empty file")
    if size != out.size or sha256_file(local) != out.sha256:
        raise VerificationError(f"{what}: {size} bytes do not match the reported size or SHA-256")
    kind = IMAGE_SUFFIXES.get(local.suffix)
    if kind is not None and size <= DECODE_MAX:
        _decode(local, kind, what)


def _decode(path: Path, kind: str, what: str) -> None:
    """Decode the image whole: VerificationError unless it decodes."""
    if kind == "exr":
        from renderfarm.images import read_pixels

        read_pixels(str(path), "exr", what=what)
        return
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format is None or image.format.lower() != kind:
                raise VerificationError(f"{what}: not a {kind.upper()} image (it is {image.format or 'unknown'})")
            image.load()
    except VerificationError:
        raise
    except Exception as e:  # Pillow raises many kinds for a broken file
        raise VerificationError(f"{what}: does not decode as {kind.upper()} ({e})") from None


def _promote(storage: Storage, out: Output, key: str, local: Path) -> None:
    try:
        storage.put_file(key, local, sha256=out.sha256)
    except StorageError as e:
        if e.transient:
            raise
        raise VerificationError(f"output {out.path}: cannot be committed to {key} ({e})") from None


def record(session: Session, job_id: str, task: Task, committed: list[Committed], now: float) -> None:
    """Record a committed task's files: its earlier record (a task done again) is replaced, and so
    is another task's record of a path this one wrote again (the key now holds this one's)."""
    from sqlalchemy import delete

    from renderfarm.models import JobOutput

    session.execute(delete(JobOutput).where(JobOutput.task_id == task.id))
    paths = [c.path for c in committed]
    for start in range(0, len(paths), 500):
        session.execute(delete(JobOutput).where(JobOutput.job_id == job_id, JobOutput.step == task.step,
                                                JobOutput.path.in_(paths[start:start + 500])))
    session.add_all(JobOutput(job_id=job_id, task_id=task.id, step=task.step, path=c.path, key=c.key,
                              size=c.size, sha256=c.sha256, committed_at=now) for c in committed)


def step_outputs(session: Session, job_id: str, steps: list[str]) -> list:
    """The recorded files of these steps, by path (where two steps wrote one path, the later
    commit's), as JobOutput rows."""
    from sqlalchemy import select

    from renderfarm.models import JobOutput

    if not steps:
        return []
    rows = session.scalars(select(JobOutput).where(JobOutput.job_id == job_id, JobOutput.step.in_(steps))
                           .order_by(JobOutput.committed_at, JobOutput.id)).all()
    return list({row.path: row for row in rows}.values())


def task_inputs(session: Session, job: Job, task: Task) -> tuple[OpenJDInput, ...]:
    """What a task of an OpenJD step finds in its session before it runs: the files the job
    brought from the artist's disk (renderfarm.openjd_assets), then every file of the steps its
    step depends on, which win over an asset at the same path (their URLs are added when the
    order is sealed)."""
    import json

    from renderfarm.manager.stepdeps import _template
    from renderfarm.wire import OpenJDInput

    assets = _template(job.openjd_template).get("assets", []) if job.openjd_template else []
    after = json.loads(job.openjd_steps or "{}").get(task.step, {}).get("after", [])
    found = {a["path"]: OpenJDInput(path=a["path"], key=f"assets/{a['sha256']}", size=a["size"],
                                    sha256=a["sha256"]) for a in assets}
    for row in step_outputs(session, job.id, list(after)):
        found[row.path] = OpenJDInput(path=row.path, key=row.key, size=row.size, sha256=row.sha256)
    return tuple(found.values())
