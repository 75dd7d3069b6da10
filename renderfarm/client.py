"""What the artist's side does: check and submit a shot, wait for it, read its logs (downloads: downloads.py)."""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderfarm import keys, streams
from renderfarm.capabilities import check_tags
from renderfarm.errors import FarmNotRunningError, InputError, NotFoundError, RenderFarmError
from renderfarm.planning import PRIORITY_DEFAULT, slug
from renderfarm.redisconn import NOT_RUNNING_HINT, connect
from renderfarm.renderers.registry import check_scene_path, get_renderer
from renderfarm.storage.base import sha256_file
from renderfarm.storage.keys import scene_key

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.status import JobStatus
    from renderfarm.wire import JobSpec, Reply


@dataclass(frozen=True)
class Submission:
    """A shot as the artist asked for it (not yet checked)."""

    scene: Path
    frames: str | None = None
    chunk: object = 1
    renderer: str | None = None  # None: from the scene's suffix (`.blend`: blender, else builtin)
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
    frame_by_frame: bool = False  # with `after`: each frame starts once that job's same frame is done
    first_last: bool = False
    site: str | None = None  # render only at this site
    prefer: str | None = None  # cheapest, greenest or fastest (with a deadline: when and where it renders)
    deadline: str | None = None  # when it must be done: ISO 8601, local time unless it names its zone
    requires: tuple[str, ...] = ()  # tags a worker must have (`--require gpu`)
    resolution: str | None = None  # WxH instead of the scene's own (renderers that take it)
    samples: object = None  # samples per pixel instead of the scene's own
    allow_scripts: bool = False  # let a .blend's auto-run scripts run
    renderer_version: str | None = None  # the renderer version workers must have (default: the scene's)
    notify: str | None = None  # a webhook URL told when the job ends (besides FARM_WEBHOOK_URL)


def current_user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


PLACEHOLDER_SHA = "0" * 64  # the scene's hash is known only once it is packed


def renderer_for(scene: Path, asked: str | None) -> str:
    """The renderer a submission names, or the one its scene's suffix calls for (`.blend`: Blender)."""
    if asked:
        return asked
    from renderfarm.renderers.registry import RENDERERS

    suffix = scene.suffix.lower()
    return next((name for name, r in RENDERERS.items() if suffix in r.suffixes and name != "null"), "builtin")


def check_submission(settings: Settings, sub: Submission) -> JobSpec:
    """Check everything that can be checked without the farm: the submission as the manager will
    parse it, with the farm's caps (the scene's key and hash are filled in once it is packed).
    Raises InputError (SceneError, FrameSpecError, WireError) naming the field."""
    import json

    from renderfarm.wire import JobSpec, Limits
    from renderfarm.wire.submission import check_following

    check_following(sub.after, sub.frame_by_frame)
    limits = Limits.of(settings)
    renderer = get_renderer(renderer_for(Path(sub.scene), sub.renderer))
    scene = check_scene_path(renderer, Path(sub.scene))
    info = renderer.describe(scene, limits)
    options = _render_options(renderer, sub)
    width, height = options.pop("resolution", (info.width, info.height))
    version = options.pop("version", info.version if "version" in renderer.options else None)
    frames = (sub.frames if sub.frames is not None else info.frames).strip()
    grid = _tile_grid(sub)
    suffix = ".zip" if scene.suffix.lower() == ".blend" else scene.suffix.lower()
    doc: dict[str, Any] = {
        "name": slug(sub.name or scene.stem),
        "owner": slug(sub.owner or current_user(), "owner")[:64],
        "renderer": renderer.name,
        "scene_name": scene.name[:255],
        "scene_key": scene_key(PLACEHOLDER_SHA, suffix),
        "scene_sha256": PLACEHOLDER_SHA,
        "frames": frames,
        "chunk": cli_number(sub.chunk),
        "priority": cli_number(sub.priority),
        "pool": slug(sub.pool, "pool")[:64],
        "width": width,
        "height": height,
        "output_format": sub.format,
        "timeout": cli_number(sub.timeout, real=True),
        "tiles": grid.text() if grid else None,
        "keep_tiles": bool(sub.keep_tiles) or None,
        "max_workers": cli_number(sub.max_workers),
        "first_last": sub.first_last or None,
        "site": settings.site(sub.site).name if sub.site is not None else None,
        "prefer": sub.prefer,
        "deadline": _deadline(sub.deadline),
        "requires": list(check_tags(sub.requires)),
        "renderer_version": version,
        "render_options": options or None,
        "notify": sub.notify,
    }
    doc = {k: v for k, v in doc.items() if v is not None}
    return JobSpec.parse(json.dumps(doc), limits=limits)


def _deadline(text: str | None) -> float | None:
    """`--deadline 2026-12-06T09:00` as epoch seconds: local time unless it names its zone; one
    already past is refused."""
    from datetime import datetime

    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"deadline: {text[:40]!r} is not a date and time (e.g. 2026-12-06T09:00)") from None
    at = when.timestamp()  # a naive time is local
    if at <= time.time():
        raise InputError(f"deadline: {text[:40]} is already past")
    return at


def cli_number(value: object, *, real: bool = False) -> object:
    """A number typed on the command line as the number it is; anything else as the text it is,
    for the submission's parse to refuse by name."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if re.fullmatch(r"[+-]?[0-9]{1,30}", text):
        return int(text)
    if real and re.fullmatch(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?", text):
        number = float(text)
        return number if math.isfinite(number) else text
    return text


def _render_options(renderer, sub: Submission) -> dict[str, Any]:
    """The options beyond frames and format that the submission gives, for the renderers that take
    them: `resolution` (w, h), `samples`, `allow_scripts`, `version`."""
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
        options["samples"] = cli_number(given["samples"])
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


def _tile_grid(sub: Submission):
    from renderfarm.tiles import grid_of_size, parse_grid

    if sub.tiles is not None and sub.tile_size is not None:
        raise InputError("tiles: give --tiles or --tile-size, not both")
    if sub.tiles is not None:
        return parse_grid(sub.tiles)
    if sub.tile_size is not None:
        return grid_of_size(sub.tile_size)
    return None


class SubmitTimeout(FarmNotRunningError):
    """The manager did not answer a submission in time; it may still make the job."""


def new_request_id() -> str:
    return uuid.uuid4().hex


def submit(settings: Settings, sub: Submission, *, request_id: str | None = None,
           warn: Callable[[str], None] = lambda _: None) -> str:
    """Check the shot, upload its scene (once per content), hand it to the manager; returns the
    job id once the manager has committed the job. The same `request_id` sent again (after a
    timeout) never makes a second job."""
    from renderfarm.wire import Limits, SubmitIntent

    request_id = request_id or new_request_id()
    if not re.fullmatch(r"[0-9a-f]{32}", request_id):
        raise InputError(f"request-id: {request_id[:40]!r} is not 32 hex digits (as `farm submit` printed it)")
    spec = check_submission(settings, sub)
    if sub.after is not None:
        after, state = resolve_job(settings, sub.after)
        if state in ("failed", "cancelled"):
            warn(f"job {after} is {state}: this job waits until it is retried and done (`farm retry {after}`)")
        spec = spec.model_copy(update={"after": after, "frame_by_frame": sub.frame_by_frame})
    r = connect(settings)
    if not r.exists(keys.MANAGER_LEADER):
        raise FarmNotRunningError(f"the farm's manager is not running; {NOT_RUNNING_HINT}")
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    with tempfile.TemporaryDirectory(prefix="farm-submit-") as packing:
        scene = get_renderer(spec.renderer).package(Path(sub.scene), Path(packing), Limits.of(settings))
        sha = sha256_file(scene)
        key = scene_key(sha, scene.suffix.lower())
        if storage.head(key) is None:
            storage.put_file(key, scene, sha256=sha)
    # Our own hash of our own pack: the fields the parse above could not know yet.
    intent = SubmitIntent(request_id=request_id, job=spec.model_copy(update={"scene_key": key, "scene_sha256": sha}))
    return hand_over(settings, r, intent)


def hand_over(settings: Settings, r, intent) -> str:
    """Send a submit intent and wait for the manager's answer; returns the job's id."""
    request_id = intent.request_id
    streams.send_intent(r, intent)
    try:
        reply = streams.await_reply(r, request_id, settings_wait(settings))
    except FarmNotRunningError:
        raise SubmitTimeout(
            f"the manager did not answer within {settings_wait(settings):g} s; it may still make the job when it "
            f"does. See `farm jobs`, or run the same command again with --request-id {request_id}: "
            "the same request never makes a second job"
        ) from None
    if not reply.ok:
        raise InputError(str(reply.error))
    return str(reply.job_id)


def settings_wait(settings: Settings) -> float:
    """How long the CLI waits for the manager's answer to an intent (FARM_SUBMIT_WAIT)."""
    return settings.submit_wait


def resolve_job_id(settings: Settings, ref: str) -> str:
    """The full id of the job `ref` names (an id or a unique prefix), from the database."""
    return resolve_job(settings, ref)[0]


def resolve_job(settings: Settings, ref: str) -> tuple[str, str]:
    """The full id and state of the job `ref` names (an id or a unique prefix), from the database."""
    from renderfarm.db import session_scope
    from renderfarm.status import reader_engine
    from renderfarm.status import resolve_job as find

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"job {ref!r}: no such job (no job was ever submitted here)")
    try:
        with session_scope(engine) as session:
            job = find(session, ref)
            return job.id, job.state
    finally:
        engine.dispose()


class NothingToDo(InputError):
    """A verb asked of a job that is already where it would put it (cancel a finished job)."""


_NOTHING = {
    "cancel": "nothing to cancel", "suspend": "nothing to suspend", "resume": "it is not suspended",
    "retry": "no failed task to retry (`--all` renders every task again)",
    "priority": "its priority is already that", "set": "its settings are already those",
}


def ask_manager(settings: Settings, intent) -> Reply:
    """Send one intent to the running manager and wait for its reply; a refusal is an InputError."""
    r = connect(settings)
    if not r.exists(keys.MANAGER_LEADER):
        raise FarmNotRunningError(f"the farm's manager is not running; {NOT_RUNNING_HINT}")
    reply = streams.await_reply(r, streams.send_intent(r, intent), settings_wait(settings))
    if not reply.ok:
        raise InputError(str(reply.error))
    return reply


def send_verb(settings: Settings, verb: str, job_ref: str, **body: Any) -> Reply:
    """Ask the manager to cancel, suspend, resume, retry or reprioritise a job; returns its answer
    once applied (each verb is safe to repeat). NothingToDo when the job is already there."""
    return order_job(settings, verb, resolve_job_id(settings, job_ref), **body)


def order_job(settings: Settings, verb: str, job_id: str, **body: Any) -> Reply:
    """`send_verb` for a whole job id, as `submit` returned it: no database read, so it works
    where a Ctrl-C left the ORM's lazy imports half done (the demo's cancel)."""
    from renderfarm import wire

    kinds = {"cancel": wire.CancelIntent, "suspend": wire.SuspendIntent, "resume": wire.ResumeIntent,
             "retry": wire.RetryIntent, "priority": wire.PriorityIntent, "set": wire.SetIntent}
    reply = ask_manager(settings, kinds[verb].parse(json.dumps({"request_id": new_request_id(), "job": job_id, **body})))
    if reply.changed is False:
        raise NothingToDo(f"job {reply.job_id} is {reply.state}; {_NOTHING[verb]}")
    return reply


def task_verb(settings: Settings, action: str, refs: list[str]) -> list[Reply]:
    """Kill, retry or skip tasks named `JOB:INDEX` or `JOB:frames=SPEC` (several, of several jobs
    maybe): one intent per job and frame range, every ref checked before any is sent. Returns the
    manager's replies; NothingToDo when no task needed it."""
    from renderfarm.frames import parse_frames
    from renderfarm.wire import TaskIntent

    by_job: dict[str, list[int]] = {}
    ranges: list[tuple[str, str]] = []
    for ref in refs:
        job_ref, sep, rest = ref.partition(":")
        if not sep or not (rest.isdigit() or rest.startswith("frames=")):
            raise InputError(f"task: {ref!r} is not JOB:INDEX or JOB:frames=A-B")
        job_id = resolve_job_id(settings, job_ref)
        if rest.isdigit():
            by_job.setdefault(job_id, []).append(int(rest))
        else:
            parse_frames(rest.removeprefix("frames="))  # refused here, in the spec's own words
            ranges.append((job_id, rest.removeprefix("frames=")))
    intents = [dict(job=job, tasks=tuple(sorted(set(indexes)))) for job, indexes in by_job.items()]
    intents += [dict(job=job, frames=frames) for job, frames in ranges]
    replies = [ask_manager(settings, TaskIntent(request_id=new_request_id(), action=action, **body))
               for body in intents]
    if not any(reply.changed for reply in replies):
        what = {"kill": "none is rendering", "retry": "none has finished", "skip": "all are done or skipped"}
        raise NothingToDo(f"task {action}: nothing to do ({what[action]})")
    return replies


def remove_jobs(settings: Settings, verb: str, refs: list[str], *, cancel: bool = False,
                keep_frames: bool = False) -> list[Reply]:
    """Delete or archive jobs (`verb`): every ref resolved and checked before any is sent (an
    unfinished job is refused unless `cancel` deletes it). Returns the manager's replies, one per
    job; a full id no longer in the database is sent as it is (the manager says whether that job
    was deleted)."""
    import re

    from renderfarm.states import JOB_FINAL
    from renderfarm.wire import ArchiveIntent, DeleteIntent

    final = {s.value for s in JOB_FINAL}
    ids: list[str] = []
    for ref in refs:
        try:
            job_id, state = resolve_job(settings, ref)
        except NotFoundError:
            if verb != "delete" or not re.fullmatch(r"[0-9a-f]{8,16}", ref):
                raise
            job_id, state = ref, None
        if state is not None and state not in final and not (verb == "delete" and cancel):
            hint = "cancel it first, or `farm delete --cancel`" if verb == "delete" else \
                "only a done, failed or cancelled job is archived"
            raise InputError(f"job {job_id} is {state}: {hint}")
        if job_id not in ids:
            ids.append(job_id)
    if verb == "delete":
        intents = [DeleteIntent(request_id=new_request_id(), job=j, cancel=cancel, keep_frames=keep_frames)
                   for j in ids]
    else:
        intents = [ArchiveIntent(request_id=new_request_id(), job=j) for j in ids]
    return [ask_manager(settings, intent) for intent in intents]


def hold_worker(settings: Settings, name: str, hold: str) -> Reply:
    """Ask the manager to drain, disable or enable a worker; its reply's `state` is what the
    worker is now (`draining`, `drained`, `disabled`, `enabled`)."""
    from renderfarm.nodes import check_node_name
    from renderfarm.wire import WorkerHoldIntent

    check_node_name(name)
    return ask_manager(settings, WorkerHoldIntent(request_id=new_request_id(), name=name, hold=hold))


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
    """Print a running attempt's renderer output as it comes, until the attempt ends, then what
    its stored log holds beyond that (the protocol's lines are not sent live, and the log's last
    lines say how the renderer ended); an attempt that has ended already gets its stored log."""
    from renderfarm.db import session_scope
    from renderfarm.models import ATTEMPT_ACTIVE, Attempt
    from renderfarm.status import reader_engine

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"task {task_ref!r}: no such task (no job was ever submitted here)")
    active = {s.value for s in ATTEMPT_ACTIVE}

    def beyond(stored: list[str], shown: list[str]) -> list[str]:
        """The lines of `stored` after the last of `shown` (a subsequence of it), or all of
        `stored` when `shown` is not found in it in order."""
        position = 0
        for line in shown:
            line = line.rstrip("\r")
            while position < len(stored) and stored[position].rstrip("\r") != line:
                position += 1
            if position == len(stored):
                return stored
            position += 1
        return stored[position:]

    try:
        with session_scope(engine) as session:
            job, task, attempt = find_attempt(session, task_ref)
        label = f"{job.id}:{task.index}/{attempt.number}"
        if attempt.state not in active:
            with session_scope(engine) as session:
                write(read_task_log(settings, session, label))
            return
        r = connect(settings)
        last, shown = "0", []
        while True:
            got = r.xread({keys.log_stream(attempt.worker, attempt.id): last}, count=100, block=1000) or []
            for _stream, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    text = (fields.get(b"l") or b"").decode("utf-8", "replace")
                    shown.extend(text.split("\n"))
                    write(text + "\n")
            if got:
                continue
            with session_scope(engine) as session:
                ended = session.get(Attempt, attempt.id)
                state, log_key = ended.state, ended.log_key
            if state not in active:
                break
        if log_key:
            from renderfarm.storage import open_storage

            try:
                stored = open_storage(settings).get_bytes(log_key).decode("utf-8", "replace")
            except RenderFarmError as e:
                write(f"# the stored log could not be read: {e}\n")
            else:
                write("".join(line + "\n" for line in beyond(stored.splitlines(), shown)))
        write(f"# attempt {label} ended: {state}\n")
    finally:
        engine.dispose()

