"""Downloading a job's outputs: the frames (or kept tiles) the database says the job has, or an
OpenJD job's files (by their relative paths), each checked against the SHA-256 recorded with it,
written under a temporary name and renamed, and never outside the destination. Whatever else
lies under the job's keys is reported, not fetched."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import (
    InputError,
    NotFoundError,
    RenderFarmError,
    StorageError,
    VerificationError,
)
from renderfarm.storage.retry import retrying

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.models import Job
    from renderfarm.storage import ObjectInfo, Storage

DOWNLOAD_RETRY = 60.0  # seconds a download keeps retrying a storage server that is restarting
# A new file, never an existing one or a link's target (its name is random; this makes sure).
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Output:
    """One output of a job: where the farm commits it, and its file name below the destination."""

    key: str
    name: str
    sha256: str | None = None  # as the database recorded it when it was committed (OpenJD files)


@dataclass
class Downloaded:
    """What one download did: of the `expected` outputs the job's row names, the `paths` now
    intact in the destination (fetched, or there already), the names `missing` from storage and
    one line per output `failed` (it did not arrive intact); the keys `skipped` under the job's
    prefix that are none of its outputs; and the frames `not_rendered` (`farm task skip`)."""

    expected: int
    paths: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_rendered: list[int] = field(default_factory=list)  # frames skipped (`farm task skip`): not expected


def output_prefix(job_id: str, *, tiles: bool = False) -> str:
    from renderfarm.storage.keys import frames_prefix, tiles_prefix

    return tiles_prefix(job_id) if tiles else frames_prefix(job_id)


def job_outputs(job: Job, *, tiles: bool = False, leaving: list[int] = ()) -> list[Output]:
    """A job's frames (`name.FRAME.ext`), or with `tiles` the tiles of its grid, frame by frame
    (`name.FRAME/TILE.ext`): names made from the job's own row, never from a stored key; the
    frames `leaving` out (skipped) are not among them."""
    from renderfarm.frames import parse_frames
    from renderfarm.images import extension
    from renderfarm.storage.keys import frame_key, tile_key

    ext = extension(job.output_format)
    frames = parse_frames(job.frames)
    if leaving:
        left = set(leaving)
        frames = [f for f in frames if f not in left]
    if tiles:
        from renderfarm.manager.expected import job_tiles

        keys = [tile_key(job.id, job.name, f, tile.index, ext) for f in frames for tile in job_tiles(job)]
    else:
        keys = [frame_key(job.id, job.name, f, ext) for f in frames]
    prefix = output_prefix(job.id, tiles=tiles)
    return [Output(key, key.removeprefix(prefix)) for key in keys]


def openjd_outputs(settings: Settings, job_id: str) -> list[Output]:
    """An OpenJD job's committed files, named by their paths relative to the session's params/
    folder (where two steps wrote one path, the later commit's), as the database records them."""
    from sqlalchemy import select

    from renderfarm.db import session_scope
    from renderfarm.models import JobOutput
    from renderfarm.status import reader_engine

    engine = reader_engine(settings)
    try:
        with session_scope(engine) as session:
            rows = session.execute(select(JobOutput.path, JobOutput.key, JobOutput.sha256)
                                   .where(JobOutput.job_id == job_id)
                                   .order_by(JobOutput.committed_at, JobOutput.id)).all()
    finally:
        engine.dispose()
    return list({path: Output(key, path, sha256) for path, key, sha256 in rows}.values())


def read_job(settings: Settings, job_id: str) -> tuple[Job, list[int]]:
    """The job's row, and the frames of its tasks skipped (`farm task skip`): never rendered."""
    from sqlalchemy import select

    from renderfarm.db import session_scope
    from renderfarm.frames import parse_frames
    from renderfarm.models import Job, Task, TaskKind, TaskState
    from renderfarm.status import check_schema, reader_engine

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"job {job_id!r}: no such job (no job was ever submitted here)")
    try:
        with session_scope(engine) as session:
            check_schema(session)
            job = session.get(Job, job_id)
            specs = session.scalars(select(Task.frames).where(
                Task.job_id == job_id, Task.state == TaskState.SKIPPED.value,
                Task.kind != TaskKind.TILE.value)).all()  # a tiled frame's assembly names it once
    finally:
        engine.dispose()
    if job is None:
        raise NotFoundError(f"job {job_id!r}: no such job")
    return job, sorted({frame for spec in specs for frame in parse_frames(spec)})


def download(
    settings: Settings, job_id: str, dest: Path,
    on_progress: Callable[[int, int, str], None] = lambda *_: None, *, tiles: bool = False,
) -> Downloaded:
    """Copy a job's frames (with `tiles`, its tiles still in storage, as
    `dest/<name>.<frame>/<tile>.<ext>`) into `dest`. A file already there is kept when it
    matches the SHA-256 recorded with its object. An output that does not arrive intact is
    listed in `failed` and the others still come; only storage that stays unreachable stops it."""
    from renderfarm.storage import open_storage

    job, not_rendered = read_job(settings, job_id)
    if job.openjd_template and not tiles:  # its files, by their paths (see openjd_outputs)
        from renderfarm.manager.openjd_outputs import outputs_prefix

        outputs, not_rendered, prefix = openjd_outputs(settings, job.id), [], outputs_prefix(job.id)
    else:
        outputs = job_outputs(job, tiles=tiles, leaving=not_rendered)
        prefix = output_prefix(job.id, tiles=tiles)
    storage = open_storage(settings)
    listing = retrying(f"list {prefix}", lambda: list(storage.list(prefix)), within=DOWNLOAD_RETRY)
    stored = {o.key: o for o in listing}
    wanted = {out.key for out in outputs}
    result = Downloaded(len(outputs), skipped=sorted(key for key in stored if key not in wanted),
                        not_rendered=not_rendered)
    present = [out for out in outputs if out.key in stored]
    result.missing = [out.name for out in outputs if out.key not in stored]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"dest: cannot create {dest} ({e.strerror})") from None
    for i, out in enumerate(present, 1):
        try:
            result.paths.append(_fetch(storage, out, dest, stored[out.key]))
        except StorageError as e:
            if e.transient:  # unreachable for DOWNLOAD_RETRY: so would it be for the next output
                raise
            result.failed.append(f"{out.name}: {e}")
        except RenderFarmError as e:
            result.failed.append(f"{out.name}: {e}")
        on_progress(i, len(present), out.name)
    return result


def _fetch(storage: Storage, out: Output, dest: Path, listed: ObjectInfo) -> Path:
    """One output into `dest`, intact, or an error saying why not."""
    from renderfarm.storage.base import sha256_file

    target = target_below(dest, out.name, depth=OPENJD_DEPTH if out.sha256 else 2)
    try:
        if _is_file(target) and target.stat().st_size == listed.size:
            info = retrying(f"head {out.key}", lambda: storage.head(out.key), within=DOWNLOAD_RETRY)
            if info is not None and info.sha256 and out.sha256 in (None, info.sha256) \
                    and sha256_file(target) == info.sha256:
                return target
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        os.close(os.open(tmp, _NEW_FILE, 0o666))
    except OSError as e:
        raise InputError(f"cannot write {target} ({e.strerror})") from None
    try:
        info = retrying(f"download {out.key}", lambda: storage.download_file(out.key, tmp),
                        within=DOWNLOAD_RETRY)
        digest = sha256_file(tmp)
        if not info.sha256:
            raise VerificationError(f"no SHA-256 is recorded with {out.key}: not kept")
        if digest != info.sha256:
            raise VerificationError(f"SHA-256 {digest[:16]}... does not match the {info.sha256[:16]}... "
                                    f"recorded with {out.key}: not kept")
        if out.sha256 is not None and digest != out.sha256:
            raise VerificationError(f"SHA-256 {digest[:16]}... does not match the {out.sha256[:16]}... "
                                    f"the farm recorded for {out.name}: not kept")
        os.replace(tmp, target)
    except OSError as e:
        raise InputError(f"cannot write {target} ({e.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


OPENJD_DEPTH = 16  # parts of an OpenJD file's path (renderfarm.wire.base.OUTPUT_PATH_DEPTH)


def target_below(dest: Path, name: str, depth: int = 2) -> Path:
    """Where `name` goes below `dest`; its folders (a tile's frame, an OpenJD file's) made, at
    most `depth` parts, and never a link out (a download here; a worker placing an OpenJD task's
    inputs in its session too)."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\x00" in p or "\\" in p for p in parts) or len(parts) > depth:
        raise InputError(f"{name!r} is not a file name to write below {dest}")
    folder = dest
    for part in parts[:-1]:
        folder = folder / part
        try:
            folder.mkdir(exist_ok=True)
            mode = folder.lstat().st_mode
        except OSError as e:
            raise InputError(f"cannot create {folder} ({e.strerror})") from None
        if not stat.S_ISDIR(mode):
            raise InputError(f"{folder} is not a folder (a link?): nothing written through it")
    return folder / parts[-1]


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False

