"""What the artist's side does: check and submit a shot, wait for it, download its frames."""

from __future__ import annotations

import getpass
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderfarm import keys, streams
from renderfarm.capabilities import check_tags
from renderfarm.errors import FarmNotRunningError, FrameSpecError, InputError, NotFoundError, RenderFarmError
from renderfarm.planning import (
    PRIORITY_DEFAULT,
    check_chunk,
    check_priority,
    check_task_count,
    check_timeout,
    new_job_id,
    slug,
)
from renderfarm.frames import parse_frames
from renderfarm.images import check_format
from renderfarm.redisconn import NOT_RUNNING_HINT, connect
from renderfarm.renderers.registry import check_scene_path, get_renderer
from renderfarm.storage.keys import frames_prefix, scene_key
from renderfarm.storage.retry import retrying

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.status import JobStatus

SUBMIT_TIMEOUT = 60.0
DOWNLOAD_RETRY = 60.0  # seconds a download keeps retrying a storage server that is restarting


@dataclass(frozen=True)
class Submission:
    """A shot as the artist asked for it (not yet checked)."""

    scene: Path
    frames: str | None = None
    chunk: object = 1
    renderer: str = "builtin"
    priority: object = PRIORITY_DEFAULT
    pool: str = "default"
    name: str | None = None
    owner: str | None = None
    timeout: object = None  # seconds per task; None: the farm's default
    tiles: str | None = None  # a CxR tile grid
    tile_size: object = None  # or tiles of at most this many pixels square
    format: str = "png"
    keep_tiles: bool = False
    max_workers: object = None  # at most this many workers at once
    after: str | None = None  # a job (id or prefix) that must be done before this one starts
    first_last: bool = False
    site: str | None = None  # render only at this site
    prefer: str | None = None  # "cheapest": the cheapest site with idle workers first
    requires: tuple[str, ...] = ()  # tags a worker must have (`--require gpu`)
    resolution: str | None = None  # WxH instead of the scene's own (renderers that take it)
    samples: object = None  # samples per pixel instead of the scene's own
    allow_scripts: bool = False  # let a .blend's auto-run scripts run
    renderer_version: str | None = None  # the renderer version workers must have (default: the scene's)


def current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def check_submission(settings: Settings, sub: Submission) -> dict[str, Any]:
    """Check everything that can be checked without the farm; returns the intent's body without
    the scene's storage key. Raises InputError (or SceneError, FrameSpecError) naming the field."""
    renderer = get_renderer(sub.renderer)
    chunk = check_chunk(sub.chunk)
    priority = check_priority(sub.priority)
    timeout = check_timeout(sub.timeout)
    scene = check_scene_path(renderer, Path(sub.scene))
    info = renderer.describe(scene)
    options = _render_options(renderer, sub)
    width, height = options.pop("resolution", (info.width, info.height))
    version = options.pop("version", info.version if "version" in renderer.options else None)
    frames = (sub.frames if sub.frames is not None else info.frames).strip()
    fmt = check_format(sub.format)
    if fmt not in renderer.formats:
        raise InputError(f"format: the {renderer.name} renderer writes {', '.join(renderer.formats)}, not {fmt}")
    grid = _tile_grid(sub)
    tile_count = len(grid.split(width, height)) if grid else 0
    frame_count = check_task_count(frames, chunk, settings.max_tasks, tile_count)
    if renderer.name == "blender" and any(f < 0 for f in parse_frames(frames)):
        raise FrameSpecError(f"frames: {frames[:40]!r} holds negative frames, which Blender's -f cannot name")
    max_workers = None
    if sub.max_workers is not None:
        text = str(sub.max_workers).strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise InputError(f"max-workers: {sub.max_workers!r} must be a whole number of at least 1")
        max_workers = int(text)
    return {
        "name": slug(sub.name or scene.stem),
        "owner": slug(sub.owner or current_user(), "owner"),
        "renderer": renderer.name,
        "scene_name": scene.name,
        "frames": frames,
        "frame_count": frame_count,
        "chunk": chunk,
        "priority": priority,
        "pool": slug(sub.pool, "pool"),
        "width": width,
        "height": height,
        "output_format": fmt,
        **({"timeout": timeout} if timeout is not None else {}),
        **({"tiles": grid.text(), "keep_tiles": bool(sub.keep_tiles)} if grid else {}),
        **({"max_workers": max_workers} if max_workers is not None else {}),
        **({"first_last": True} if sub.first_last else {}),
        **({"site": settings.site(sub.site).name} if sub.site is not None else {}),
        **({"prefer": _prefer(sub.prefer)} if sub.prefer is not None else {}),
        **({"requires": list(tags)} if (tags := check_tags(sub.requires)) else {}),
        **({"renderer_version": version} if version else {}),
        **({"render_options": options} if options else {}),
    }


def _render_options(renderer, sub: Submission) -> dict[str, Any]:
    """The options beyond frames and format that the submission gives, checked against what the
    renderer takes: `resolution` (w, h), `samples`, `allow_scripts`, `version`."""
    given = {
        "resolution": sub.resolution, "samples": sub.samples,
        "allow_scripts": sub.allow_scripts or None, "version": sub.renderer_version,
    }
    given = {k: v for k, v in given.items() if v is not None}
    for key in given:
        if key not in renderer.options:
            option = {"version": "blender-version"}.get(key, key).replace("_", "-")
            raise InputError(f"{option}: the {renderer.name} renderer does not take --{option}")
    options: dict[str, Any] = {}
    if "resolution" in given:
        options["resolution"] = _resolution(str(given["resolution"]))
    if "samples" in given:
        text = str(given["samples"]).strip()
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1_000_000:
            raise InputError(f"samples: {str(given['samples'])[:40]!r} must be a whole number from 1 to 1000000")
        options["samples"] = int(text)
    if given.get("allow_scripts"):
        options["allow_scripts"] = True
    if "version" in given:
        from renderfarm.renderers.blender import check_version_spec

        options["version"] = check_version_spec(str(given["version"]))
    return options


def _resolution(text: str) -> tuple[int, int]:
    w, sep, h = text.strip().lower().partition("x")
    if not (sep and w.isascii() and w.isdigit() and h.isascii() and h.isdigit()) or not (
        0 < int(w) <= 65536 and 0 < int(h) <= 65536
    ):
        raise InputError(f"resolution: {text[:40]!r} is not WIDTHxHEIGHT in pixels (e.g. 1920x1080)")
    return int(w), int(h)


def _prefer(value: str) -> str:
    if value != "cheapest":
        raise InputError(f"prefer: {value!r} is not one of cheapest")
    return value


def _tile_grid(sub: Submission):
    from renderfarm.tiles import grid_of_size, parse_grid

    if sub.tiles is not None and sub.tile_size is not None:
        raise InputError("tiles: give --tiles or --tile-size, not both")
    if sub.tiles is not None:
        return parse_grid(sub.tiles)
    if sub.tile_size is not None:
        return grid_of_size(sub.tile_size)
    if sub.keep_tiles:
        raise InputError("keep-tiles: the job is not tiled (add --tiles CxR or --tile-size PX)")
    return None


def submit(settings: Settings, sub: Submission) -> str:
    """Check the shot, upload its scene (once per content), hand it to the manager; returns the
    job id once the manager has committed the job."""
    body = check_submission(settings, sub)
    if sub.after is not None:
        body["after"] = resolve_job_id(settings, sub.after)
    r = connect(settings)
    if not r.exists(keys.MANAGER_LEADER):
        raise FarmNotRunningError(f"the farm's manager is not running; {NOT_RUNNING_HINT}")
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    with tempfile.TemporaryDirectory(prefix="farm-submit-") as packing:
        scene = get_renderer(sub.renderer).package(Path(sub.scene), Path(packing))
        sha = _sha256(scene)
        key = scene_key(sha, scene.suffix.lower())
        if storage.head(key) is None:
            storage.put_file(key, scene, sha256=sha)
    body.update(job_id=new_job_id(), scene_key=key, scene_sha256=sha)
    for _ in range(3):  # a job id collision (1 in 4 billion) is answered with a fresh id
        request = streams.send_intent(r, "submit", body)
        reply = streams.await_reply(r, request, SUBMIT_TIMEOUT)
        if reply.get("ok"):
            return str(reply["job_id"])
        if "is taken" not in str(reply.get("error")):
            raise InputError(str(reply.get("error")))
        body["job_id"] = new_job_id()
    raise RenderFarmError("could not find a free job id")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def resolve_job_id(settings: Settings, ref: str) -> str:
    """The full id of the job `ref` names (an id or a unique prefix), from the database."""
    from renderfarm.db import session_scope
    from renderfarm.status import reader_engine, resolve_job

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"job {ref!r}: no such job (no job was ever submitted here)")
    try:
        with session_scope(engine) as session:
            return resolve_job(session, ref).id
    finally:
        engine.dispose()


def send_verb(settings: Settings, verb: str, job_ref: str, **body: Any) -> dict[str, Any]:
    """Ask the manager to cancel, suspend, resume, retry or reprioritise a job; returns its answer
    once applied (each verb is safe to repeat)."""
    job_id = resolve_job_id(settings, job_ref)
    r = connect(settings)
    if not r.exists(keys.MANAGER_LEADER):
        raise FarmNotRunningError(f"the farm's manager is not running; {NOT_RUNNING_HINT}")
    reply = streams.await_reply(r, streams.send_intent(r, verb, {"job": job_id, **body}), SUBMIT_TIMEOUT)
    if not reply.get("ok"):
        raise InputError(str(reply.get("error")))
    return reply


def wait_for_job(
    settings: Settings, job_id: str, on_update: Callable[[JobStatus], None], *, poll: float = 0.5,
    timeout: float | None = None,
) -> JobStatus:
    """Poll the database until the job is finished; `on_update` sees every reading."""
    from renderfarm.db import session_scope
    from renderfarm.models import JOB_FINAL
    from renderfarm.status import job_status, reader_engine, resolve_job

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"job {job_id!r}: no such job (the database is empty)")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            with session_scope(engine) as session:
                status = job_status(session, resolve_job(session, job_id))
            on_update(status)
            if status.state in {s.value for s in JOB_FINAL}:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise RenderFarmError(f"job {job_id}: not finished after {timeout:g} s ({status.state}, {status.progress:.0%})")
            time.sleep(poll)
    finally:
        engine.dispose()


def frame_objects(settings: Settings, job_id: str):
    """The final frames of a job in storage, in key order."""
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    return storage, sorted(storage.list(frames_prefix(job_id)), key=lambda o: o.key)


def tile_objects(settings: Settings, job_id: str):
    """The committed tiles of a job still in storage, in key order: all of them for a job
    submitted with --keep-tiles, otherwise those of frames not assembled yet."""
    from renderfarm.storage import open_storage
    from renderfarm.storage.keys import tiles_prefix

    storage = open_storage(settings)
    return storage, sorted(storage.list(tiles_prefix(job_id)), key=lambda o: o.key)


def download(
    settings: Settings, job_id: str, dest: Path, on_progress: Callable[[int, int, str], None] = lambda *_: None,
    *, tiles: bool = False,
) -> list[Path]:
    """Copy a job's final frames into `dest` (with `tiles`, its committed tiles instead, as
    `dest/<name>.<frame>/<tile>.<ext>`); a file already there with the same size is kept."""
    from renderfarm.storage.keys import tiles_prefix

    storage, objects = tile_objects(settings, job_id) if tiles else frame_objects(settings, job_id)
    prefix = tiles_prefix(job_id) if tiles else frames_prefix(job_id)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, obj in enumerate(objects, 1):
        name = _relative_name(obj.key, prefix)
        target = dest / name
        if not (target.exists() and target.stat().st_size == obj.size):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.part"
            retrying(f"download {obj.key}", lambda: storage.download_file(obj.key, tmp), within=DOWNLOAD_RETRY)
            os.replace(tmp, target)
        paths.append(target)
        on_progress(i, len(objects), name)
    return paths


def _relative_name(key: str, prefix: str) -> str:
    """Where an object under `prefix` goes below the destination; never outside it."""
    from renderfarm.errors import StorageError

    parts = key[len(prefix):].split("/")
    if not key.startswith(prefix) or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"download: storage key {key[:200]!r} is not a file name under {prefix!r}")
    return "/".join(parts)


def find_attempt(session, task_ref: str):
    """The job, task and attempt `JOB:INDEX` (latest attempt) or `JOB:INDEX/ATTEMPT` names."""
    from sqlalchemy import select

    from renderfarm.models import Attempt, Task
    from renderfarm.status import resolve_job

    job_ref, sep, rest = task_ref.partition(":")
    index_text, _, attempt_text = rest.partition("/")
    if not sep or not index_text.isdigit() or (attempt_text and not attempt_text.isdigit()):
        raise InputError(f"task: {task_ref!r} is not JOB:INDEX or JOB:INDEX/ATTEMPT")
    job = resolve_job(session, job_ref)
    task = session.scalars(select(Task).where(Task.job_id == job.id, Task.index == int(index_text))).first()
    if task is None:
        raise NotFoundError(f"task {job.id}:{index_text}: no such task (the job has {job.task_count})")
    query = select(Attempt).where(Attempt.task_id == task.id).order_by(Attempt.number.desc())
    if attempt_text:
        query = query.where(Attempt.number == int(attempt_text))
    attempt = session.scalars(query).first()
    if attempt is None:
        raise NotFoundError(f"task {job.id}:{task.index}: no attempt {attempt_text or 'yet'}")
    return job, task, attempt


def read_task_log(settings: Settings, session, task_ref: str) -> str:
    """The stored renderer log of `JOB:INDEX` (latest attempt) or `JOB:INDEX/ATTEMPT`."""
    from renderfarm.storage import open_storage

    job, task, attempt = find_attempt(session, task_ref)
    if not attempt.log_key:
        raise NotFoundError(f"task {job.id}:{task.index}/{attempt.number}: no log stored (attempt is {attempt.state})")
    return open_storage(settings).get_bytes(attempt.log_key).decode("utf-8", "replace")


def follow_task_log(settings: Settings, task_ref: str, write: Callable[[str], None]) -> None:
    """Print a running attempt's renderer output as it comes, until the attempt ends (or its
    stored log, if it has ended already)."""
    from renderfarm.db import session_scope
    from renderfarm.models import ATTEMPT_ACTIVE
    from renderfarm.status import reader_engine

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"task {task_ref!r}: no such task (no job was ever submitted here)")
    active = {s.value for s in ATTEMPT_ACTIVE}
    try:
        with session_scope(engine) as session:
            job, task, attempt = find_attempt(session, task_ref)
        if attempt.state not in active:
            with session_scope(engine) as session:
                write(read_task_log(settings, session, f"{job.id}:{task.index}/{attempt.number}"))
            return
        r = connect(settings)
        last = "0"
        while True:
            got = r.xread({keys.log_stream(attempt.id): last}, count=100, block=1000) or []
            for _stream, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    write((fields.get(b"l") or b"").decode("utf-8", "replace") + "\n")
            if not got:
                with session_scope(engine) as session:
                    from renderfarm.models import Attempt

                    state = session.get(Attempt, attempt.id).state
                if state not in active:
                    write(f"# attempt {job.id}:{task.index}/{attempt.number} ended: {state}\n")
                    return
    finally:
        engine.dispose()
