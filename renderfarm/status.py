"""Read-only views of the farm for the CLI: jobs, a job's progress, its tasks, the workers.

Reads go straight to the database (never through the manager) and work with the farm down.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select

from renderfarm.capabilities import parse_capabilities, worker_view
from renderfarm.errors import InputError, NotFoundError, SchemaMissing
from renderfarm.jobstatus import JOB_COLUMNS, JobStatus, summarize, summarize_steps
from renderfarm.models import (
    ATTEMPT_ACTIVE,
    Attempt,
    AttemptState,
    Job,
    JobState,
    Node,
    Task,
    TaskKind,
    TaskState,
    Worker,
    WorkerState,
    held_state,
)
from renderfarm.scheduling import WorkerView
from renderfarm.states import WORKER_SLEEPING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from renderfarm.config import Settings


def reader_engine(settings: Settings) -> Engine | None:
    """An engine for reading, or None when the local SQLite database does not exist yet."""
    from renderfarm.db import make_engine

    url = settings.database_url
    if url.startswith("sqlite") and not settings.database_file.exists() and str(settings.database_file) in url:
        return None
    return make_engine(url)


def check_schema(session: Session) -> None:
    from sqlalchemy import inspect

    # The session's own connection: a second one from the pool would, on the manager's SQLite
    # writer engine, wait on this session's BEGIN IMMEDIATE until "database is locked".
    if not inspect(session.connection()).has_table("jobs"):
        raise SchemaMissing("the database has no renderfarm tables yet: start the manager (`farm up -d`) first")


def resolve_job(session: Session, prefix: str) -> Job:
    """The job whose id is `prefix` or starts with it; unique prefixes only."""
    check_schema(session)
    prefix = prefix.strip().lower()
    if not prefix or not prefix.isalnum():
        raise NotFoundError(f"job {prefix!r}: not a job id")
    job = session.get(Job, prefix)
    if job is not None:
        return job
    matches = session.scalars(select(Job).where(Job.id.startswith(prefix)).order_by(Job.id).limit(6)).all()
    if not matches:
        raise NotFoundError(f"job {prefix!r}: no such job")
    if len(matches) > 1:
        shown = ", ".join(j.id for j in matches[:5])
        raise NotFoundError(f"job {prefix!r}: ambiguous prefix (matches {shown}{'...' if len(matches) > 5 else ''})")
    return matches[0]


def job_status(session: Session, job: Job, now: float | None = None, workers: list[WorkerView] | None = None) -> JobStatus:
    from renderfarm.report import job_costs

    whole = Task.kind != TaskKind.TILE.value  # render tasks and assemblies finish frames
    rows = session.execute(
        select(
            Task.state,
            func.count(),
            func.coalesce(func.sum(case((whole, Task.frame_count), else_=0)), 0),
            func.coalesce(func.sum(Task.weight), 0.0),
            func.coalesce(func.sum(Task.weight * Task.progress), 0.0),
        )
        .where(Task.job_id == job.id)
        .group_by(Task.state)
    ).all()
    workers = live_worker_views(session) if workers is None else workers
    after_state = session.scalar(select(Job.state).where(Job.id == job.after)) if job.after else None
    status = summarize({c: getattr(job, c) for c in JOB_COLUMNS}, rows, job_costs(session, job.id), now, workers,
                       after_state)
    return replace(status, steps=_steps(session, job)) if job.openjd_steps else status


def _steps(session: Session, job: Job) -> list:
    """An OpenJD job's steps (renderfarm.jobstatus.summarize_steps)."""
    rows = session.execute(
        select(Task.step, Task.state, func.count(), func.coalesce(func.sum(Task.progress), 0.0), func.min(Task.index))
        .where(Task.job_id == job.id, Task.step.is_not(None)).group_by(Task.step, Task.state)
    ).all()
    texts = session.execute(
        select(Task.step, Attempt.status_text).join(Task, Task.id == Attempt.task_id)
        .where(Attempt.job_id == job.id, Attempt.state == AttemptState.RUNNING.value, Attempt.status_text.is_not(None))
        .order_by(Attempt.id.desc())
    ).all()
    return summarize_steps(job.openjd_steps, rows, texts)


def live_worker_views(session: Session) -> list[WorkerView]:
    """The scheduler's view of every worker not offline, as the manager last recorded it."""
    rows = session.execute(
        select(Worker.name, Worker.pool, Worker.site, Worker.capabilities).where(Worker.state != WorkerState.OFFLINE.value)
    ).all()
    return [worker_view(*row) for row in rows]


def list_jobs(session: Session, limit: int = 50, *, archived: bool = False) -> list[JobStatus]:
    """The newest jobs first, with their progress; archived ones only if asked."""
    check_schema(session)
    query = select(Job) if archived else select(Job).where(Job.archived_at.is_(None))
    jobs = session.scalars(query.order_by(Job.submitted_at.desc()).limit(limit)).all()
    workers = live_worker_views(session)
    return [job_status(session, j, workers=workers) for j in jobs]


@dataclass(frozen=True)
class TaskRow:
    id: str  # job:index
    index: int
    frames: str
    state: str
    worker: str | None  # the worker of the latest attempt
    progress: float
    attempts: list[dict[str, Any]]
    started_at: float | None
    finished_at: float | None
    error: str | None
    kind: str = "render"  # render (a chunk of whole frames), tile, or assemble
    tile: int | None = None  # a tile task's index in the job's grid (row-major)
    column: int | None = None  # and its column and row in the grid
    row: int | None = None
    region: dict[str, int] | None = None  # the pixels it produces: x, y, width, height
    step: str | None = None  # an OpenJD task's step, its task parameters ({NAME: {type, value}})...
    parameters: dict[str, Any] | None = None
    status_text: str | None = None  # ...its latest attempt's openjd_status text...
    outputs: list[dict[str, Any]] | None = None  # ...and its committed files: path, key, size, sha256

    def to_json(self) -> dict[str, Any]:
        """Every field; a tiled job's tasks also carry their column, row and region, an OpenJD
        job's their step, status text and output files."""
        doc = asdict(self)
        for key in ("column", "row", "region", "step", "parameters", "status_text", "outputs"):
            if doc[key] is None:
                del doc[key]
        return doc

    def what(self) -> str:
        """What the task renders, in words: `frames`, `tile 2,1` (column, row) or `assembly`."""
        if self.kind == TaskKind.TILE.value:
            return f"tile {self.tile}" if self.column is None else f"tile {self.column},{self.row}"
        return "assembly" if self.kind == TaskKind.ASSEMBLE.value else "frames"

    def region_text(self) -> str:
        """`x=320 y=0 320x180`, or `-` when the region is not known."""
        if not self.region:
            return "-"
        r = self.region
        return f"x={r['x']} y={r['y']} {r['width']}x{r['height']}"


def list_tasks(session: Session, job: Job, state: str | None = None, limit: int | None = None) -> list[TaskRow]:
    query = select(Task).where(Task.job_id == job.id).order_by(Task.index)
    if state:
        valid = {s.value for s in TaskState}
        if state not in valid:
            raise NotFoundError(f"state: {state!r} is not one of {', '.join(sorted(valid))}")
        query = query.where(Task.state == state)
    if limit:
        query = query.limit(limit)
    tasks = session.scalars(query).all()
    by_task: dict[int, list[dict[str, Any]]] = {}
    columns = (Attempt.task_id, Attempt.number, Attempt.worker, Attempt.state, Attempt.queued_at,
               Attempt.started_at, Attempt.finished_at, Attempt.error, Attempt.log_key, Attempt.progress,
               Attempt.status_text)
    if state or limit:  # a few tasks of a big job (`farm top` shows a page): only their attempts
        ids = [t.id for t in tasks]
        wheres = [Attempt.task_id.in_(ids[i : i + 500]) for i in range(0, len(ids), 500)]
    else:
        wheres = [Attempt.job_id == job.id]
    for where in wheres:
        for row in session.execute(select(*columns).where(where).order_by(Attempt.task_id, Attempt.number)):
            by_task.setdefault(row.task_id, []).append(
                {"number": row.number, "worker": row.worker, "state": row.state, "queued_at": row.queued_at,
                 "started_at": row.started_at, "finished_at": row.finished_at, "error": row.error,
                 "log_key": row.log_key,
                 **({"progress": row.progress} if row.progress is not None else {}),
                 **({"status_text": row.status_text} if row.status_text is not None else {})}
            )
    tiles = _job_tiles(job)
    files = _openjd_files(session, job, [t.id for t in tasks]) if job.openjd_template else {}
    return [
        TaskRow(f"{job.id}:{t.index}", t.index, t.frames, t.state, t.worker, t.progress,
                by_task.get(t.id, []), t.started_at, t.finished_at, t.error, t.kind, t.tile,
                **_placement(job, t, tiles),
                **({"step": t.step, "parameters": json.loads(t.parameters or "{}"), "status_text": next((a["status_text"] for a in reversed(by_task.get(t.id, []))
                                                         if "status_text" in a), None),
                    "outputs": files.get(t.id, [])} if job.openjd_template else {}))
        for t in tasks
    ]


def _openjd_files(session: Session, job: Job, task_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The committed files of these tasks of an OpenJD job, by task."""
    from renderfarm.models import JobOutput

    files: dict[int, list[dict[str, Any]]] = {}
    for start in range(0, len(task_ids), 500):
        for row in session.scalars(select(JobOutput).where(
                JobOutput.job_id == job.id, JobOutput.task_id.in_(task_ids[start:start + 500]))
                .order_by(JobOutput.path)):
            files.setdefault(row.task_id, []).append(
                {"path": row.path, "key": row.key, "size": row.size, "sha256": row.sha256})
    return files


def _job_tiles(job: Job) -> list:
    """The tiles of a tiled job's frames (none for a job rendered whole, or a grid that no longer
    parses: a listing must still show the tasks)."""
    from renderfarm.tiles import parse_grid

    if not job.tiles:
        return []
    try:
        return parse_grid(job.tiles).split(job.width, job.height)
    except InputError:
        return []


def _placement(job: Job, task: Task, tiles: list) -> dict[str, Any]:
    """Where a tiled job's task puts its pixels: a tile's column, row and region, or the whole
    frame for an assembly (nothing for a job rendered whole: every task renders whole frames)."""
    if task.kind == TaskKind.RENDER.value:
        return {}
    if task.kind == TaskKind.ASSEMBLE.value:
        return {"region": {"x": 0, "y": 0, "width": job.width, "height": job.height}}
    if task.tile is None or not 0 <= task.tile < len(tiles):
        return {}
    tile = tiles[task.tile]
    return {"column": tile.column, "row": tile.row,
            "region": {"x": tile.x, "y": tile.y, "width": tile.width, "height": tile.height}}


@dataclass(frozen=True)
class WorkerRow:
    name: str
    host: str
    pid: int
    pool: str
    state: str
    current_task: str | None
    last_heartbeat: float | None  # epoch seconds of the last heartbeat seen
    cores: int
    version: str
    site: str = "local"
    capabilities: dict[str, Any] | None = None  # renderers, memory, GPU, tags, as it advertised them
    hold: str | None = None  # "drain" or "disable" (`farm worker drain|disable`)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def busy_workers(session: Session, names: list[str] | None = None) -> set[str]:
    """The workers (of `names`, or all) holding a live attempt: queued for them or running."""
    query = select(Attempt.worker).where(Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE]))
    if names is not None:
        query = query.where(Attempt.worker.in_(names))
    return set(session.scalars(query.distinct()))


def list_workers(session: Session, live: dict[str, dict] | None = None) -> list[WorkerRow]:
    """Workers the database knows, with live heartbeat data from Redis when it is reachable. A
    held worker that is there and awake shows its hold: `draining`, `drained` or `disabled`; an
    asleep one shows `asleep` or `waking` (its hold beside it, in `hold`)."""
    check_schema(session)
    rows = {w.name: w for w in session.scalars(select(Worker).order_by(Worker.name)).all()}
    holds = dict(session.execute(select(Node.name, Node.hold).where(Node.hold.is_not(None))).all())
    busy = busy_workers(session) if holds else set()
    out = []
    for name in sorted(set(rows) | set(live or {})):
        w = rows.get(name)
        beat = (live or {}).get(name)
        state = w.state if w else WorkerState.IDLE.value
        task = w.current_task if w else None
        if beat is not None:
            state = beat.get("state", state)
            task = beat.get("task", task)
        elif live is not None and state not in (WorkerState.OFFLINE.value, *WORKER_SLEEPING):
            state = "missing"  # no heartbeat: dead, or the manager has not noticed yet
        if w is not None and w.state in WORKER_SLEEPING:
            state = w.state  # the manager's word: told to sleep (and maybe woken), not seen awake since
        elif state == WorkerState.ASLEEP.value:
            state = WorkerState.IDLE.value  # woken by the manager, its first task not taken yet
        if name in holds and state not in (WorkerState.OFFLINE.value, *WORKER_SLEEPING, "missing"):
            state = held_state(holds[name], busy=name in busy)
        out.append(
            WorkerRow(
                name=name,
                host=(beat or {}).get("host") or (w.host if w else ""),
                pid=int((beat or {}).get("pid") or (w.pid if w else 0)),
                pool=(beat or {}).get("pool") or (w.pool if w else "default"),
                state=state,
                current_task=task,
                last_heartbeat=(beat or {}).get("ts") or (w.last_seen if w else None),
                cores=int((beat or {}).get("cores") or (w.cores if w else 1)),
                version=(beat or {}).get("version") or (w.version if w else ""),
                site=(beat or {}).get("site") or (w.site if w else "local"),
                capabilities=parse_capabilities((beat or {}).get("capabilities") or (w.capabilities if w else None)),
                hold=holds.get(name),
            )
        )
    return out


def active_job_count(session: Session) -> int:
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
    )

