"""What `farm top` shows: one snapshot of jobs, workers, queues, throughput and recent failures.

Read straight from the database (the truth) and Redis (live heartbeats and queues); with Redis
down the snapshot still holds the database's view and says that the farm is not running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

from renderfarm.errors import FarmNotRunningError, NotFoundError
from renderfarm.models import AttemptState, JobState, WorkerState
from renderfarm.redisconn import NOT_RUNNING_HINT

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.status import JobStatus, TaskRow, WorkerRow

THROUGHPUT_MINUTES = 10
RECENT_FINISHED = 20  # finished jobs shown below the active ones
MAX_ACTIVE = 200
RECENT_FAILURES = 5
ACTIVE_JOB_STATES = (JobState.RUNNING.value, JobState.QUEUED.value, JobState.SUSPENDED.value)

FARM_DOWN = f"the farm is not running (showing the database only); {NOT_RUNNING_HINT}"
MANAGER_DOWN = f"the farm's manager is not running; {NOT_RUNNING_HINT}"
NO_DATABASE = "no job was ever submitted here"


@dataclass(frozen=True)
class WorkerLine:
    """A worker as top shows it: its row, how old its last heartbeat is, its queue's depth."""

    name: str
    state: str
    current_task: str | None
    heartbeat_age: float | None  # seconds
    pool: str
    queued: int | None  # attempts waiting in its RQ queue; None when Redis is down


@dataclass(frozen=True)
class Throughput:
    """Attempts finished (done) per minute, oldest minute first; the last one is the minute to now."""

    per_minute: list[int]

    @property
    def last(self) -> int:
        return self.per_minute[-1] if self.per_minute else 0

    @property
    def average(self) -> float:
        return sum(self.per_minute) / len(self.per_minute) if self.per_minute else 0.0


@dataclass(frozen=True)
class Failure:
    """A failed attempt: which (JOB:INDEX/ATTEMPT), where, when, and the first line of its error."""

    task: str
    job_name: str
    worker: str
    finished_at: float | None
    first_line: str


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    jobs: list[JobStatus] = field(default_factory=list)
    workers: list[WorkerLine] = field(default_factory=list)
    queues: dict[str, int] | None = None  # RQ queue length per worker; None when Redis is down
    throughput: Throughput = field(default_factory=lambda: Throughput([0] * THROUGHPUT_MINUTES))
    failures: list[Failure] = field(default_factory=list)
    farm_running: bool = False  # Redis answers
    manager_running: bool = False  # and a manager holds the leader lock
    notes: list[str] = field(default_factory=list)  # what the status line should say
    dead_letters: int | None = None  # entries the manager put aside; None when Redis is down


def first_line(text: str | None) -> str:
    """The first non-blank line of an error, stripped."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return "(no error message)"


class Dashboard:
    """Keeps one database engine and one Redis client for a refreshing view of the farm."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._redis: Redis | None = None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------------

    def engine(self) -> Engine | None:
        """The reading engine, or None while the local SQLite database does not exist yet."""
        from renderfarm.status import reader_engine

        if self._engine is None:
            self._engine = reader_engine(self.settings)
        return self._engine

    def redis(self) -> Redis:
        """The farm's Redis; raises FarmNotRunningError while it does not answer."""
        from renderfarm.redisconn import connect

        if self._redis is None:
            self._redis = connect(self.settings, timeout=1.0)
        return self._redis

    def _drop_redis(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def _session(self):
        from renderfarm.db import session_scope

        engine = self.engine()
        return None if engine is None else session_scope(engine)

    # -- the snapshot -----------------------------------------------------------------------------

    def snapshot(self, *, now: float | None = None) -> Snapshot:
        """Everything top shows, read now. Redis being down is a note, not an error; a database
        that cannot be read raises DatabaseError."""
        import redis as redis_lib

        from renderfarm import keys, presence
        from renderfarm.queues import queue_depths

        now = time.time() if now is None else now
        notes: list[str] = []
        live = None
        manager = False
        dead_letters = None
        try:
            r = self.redis()
            live = presence.live_workers(r, now)
            manager = bool(r.exists(keys.MANAGER_LEADER))
            dead_letters = int(r.xlen(keys.DEAD_LETTERS))
        except (FarmNotRunningError, redis_lib.RedisError):
            self._drop_redis()
            notes.append(FARM_DOWN)
        if live is not None and not manager:
            notes.append(MANAGER_DOWN)

        reader = self._session()
        if reader is None:
            return Snapshot(taken_at=now, farm_running=live is not None, manager_running=manager,
                            notes=notes + [NO_DATABASE])
        with _reading(self.settings), reader as session:
            from renderfarm.status import SchemaMissing, check_schema, list_workers

            try:
                check_schema(session)
            except SchemaMissing as e:
                return Snapshot(taken_at=now, farm_running=live is not None, manager_running=manager,
                                notes=notes + [str(e)])
            jobs = active_and_recent_jobs(session, now)
            rows = list_workers(session, live)
            running = running_tasks(session)
            throughput = Throughput(finished_per_minute(session, now))
            failures = recent_failures(session)

        queues = None
        if live is not None:
            watched = [w.name for w in rows if w.state != WorkerState.OFFLINE.value]
            try:
                queues = queue_depths(self.redis(), watched)
            except (FarmNotRunningError, redis_lib.RedisError):
                self._drop_redis()
        workers = [worker_line(w, now, queues, running) for w in _live_first(rows)]
        return Snapshot(
            taken_at=now, jobs=jobs, workers=workers, queues=queues, throughput=throughput,
            failures=failures, farm_running=live is not None, manager_running=manager, notes=notes,
            dead_letters=dead_letters,
        )

    # -- a job's tasks and a task's log ------------------------------------------------------------

    def tasks(self, job_id: str, *, state: str | None = None, limit: int = 1000) -> list[TaskRow]:
        """A job's tasks in index order (at most `limit`), optionally only those in `state`."""
        from renderfarm.status import list_tasks, resolve_job

        reader = self._session()
        if reader is None:
            raise NotFoundError(f"job {job_id!r}: no such job ({NO_DATABASE})")
        with _reading(self.settings), reader as session:
            return list_tasks(session, resolve_job(session, job_id), state, limit)

    def task_log(self, task_ref: str) -> str:
        """The stored renderer log of `JOB:INDEX[/ATTEMPT]`, or a running attempt's output so far."""
        from renderfarm.client import find_attempt, read_task_log
        from renderfarm.models import ATTEMPT_ACTIVE

        reader = self._session()
        if reader is None:
            raise NotFoundError(f"task {task_ref!r}: no such task ({NO_DATABASE})")
        with _reading(self.settings), reader as session:
            job, task, attempt = find_attempt(session, task_ref)
            if attempt.state not in {s.value for s in ATTEMPT_ACTIVE}:
                return read_task_log(self.settings, session, task_ref)
        return self._live_log(f"{job.id}:{task.index}/{attempt.number}", attempt.worker, attempt.id, attempt.state)

    def _live_log(self, label: str, worker: str, attempt_id: int, state: str) -> str:
        import redis as redis_lib

        from renderfarm import keys

        try:
            entries = self.redis().xrange(keys.log_stream(worker, attempt_id))
        except redis_lib.RedisError:
            self._drop_redis()
            raise FarmNotRunningError(
                f"task {label}: {state}, and its live output is in Redis, which does not answer") from None
        lines = [(fields.get(b"l") or b"").decode("utf-8", "replace") for _id, fields in entries]
        return f"# {label} is {state}: its output so far\n" + "\n".join(lines)


def snapshot(settings: Settings, *, now: float | None = None) -> Snapshot:
    """One snapshot of the farm, opening and closing its own connections."""
    with Dashboard(settings) as dashboard:
        return dashboard.snapshot(now=now)


def active_and_recent_jobs(session: Session, now: float) -> list[JobStatus]:
    """Active jobs in the order they render (priority first, then the oldest), then the most
    recently submitted finished ones."""
    from sqlalchemy import select

    from renderfarm.models import Job
    from renderfarm.status import job_status

    active = session.scalars(
        select(Job).where(Job.state.in_(ACTIVE_JOB_STATES))
        .order_by(Job.priority.desc(), Job.submitted_at, Job.id).limit(MAX_ACTIVE)
    ).all()
    finished = session.scalars(
        select(Job).where(Job.state.not_in(ACTIVE_JOB_STATES), Job.archived_at.is_(None))
        .order_by(Job.submitted_at.desc(), Job.id).limit(RECENT_FINISHED)
    ).all()
    return [job_status(session, job, now) for job in [*active, *finished]]


def finished_per_minute(session: Session, now: float, minutes: int = THROUGHPUT_MINUTES) -> list[int]:
    """Attempts that finished done in each of the last `minutes` minutes, oldest first."""
    from sqlalchemy import case, func, select

    from renderfarm.models import Attempt

    start = now - minutes * 60
    edges = [start + 60 * i for i in range(minutes)] + [now]

    def finished_in(lo: float, hi: float, last: bool):
        until = Attempt.finished_at <= hi if last else Attempt.finished_at < hi
        return func.coalesce(func.sum(case(((Attempt.finished_at >= lo) & until, 1), else_=0)), 0)

    # One portable query, a CASE per minute: SQLite may lack floor(), and PostgreSQL's cast to
    # integer rounds where SQLite's truncates.
    counts = [finished_in(lo, hi, i == minutes - 1) for i, (lo, hi) in enumerate(pairwise(edges))]
    row = session.execute(
        select(*counts).where(
            Attempt.state == AttemptState.DONE.value, Attempt.finished_at >= start, Attempt.finished_at <= now
        )
    ).one()
    return [int(n) for n in row]


def recent_failures(session: Session, limit: int = RECENT_FAILURES) -> list[Failure]:
    """The latest failed attempts, newest first."""
    from sqlalchemy import select

    from renderfarm.models import Attempt, Job, Task

    rows = session.execute(
        select(Attempt, Task.index, Job.name)
        .join(Task, Task.id == Attempt.task_id)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.state == AttemptState.FAILED.value)
        .order_by(Attempt.finished_at.desc(), Attempt.id.desc())
        .limit(limit)
    ).all()
    return [
        Failure(f"{a.job_id}:{index}/{a.number}", name, a.worker, a.finished_at, first_line(a.error))
        for a, index, name in rows
    ]


def running_tasks(session: Session) -> dict[str, str]:
    """The task (JOB:INDEX) each worker is running, as the database has it."""
    from sqlalchemy import select

    from renderfarm.models import Attempt, Task

    rows = session.execute(
        select(Attempt.worker, Attempt.job_id, Task.index)
        .join(Task, Task.id == Attempt.task_id)
        .where(Attempt.state == AttemptState.RUNNING.value)
        .order_by(Attempt.started_at.desc(), Attempt.id.desc())
    ).all()
    running: dict[str, str] = {}
    for worker, job_id, index in rows:
        running.setdefault(worker, f"{job_id}:{index}")
    return running


def worker_line(w: WorkerRow, now: float, queues: dict[str, int] | None,
                running: dict[str, str] | None = None) -> WorkerLine:
    """A worker's row. Whether it is busy, and on what, comes from the running attempts read with
    the job rows, not from its heartbeat: a heartbeat is up to a third of its TTL old (10 s by
    default), and the rows must agree with the jobs they show as running."""
    age = None if w.last_heartbeat is None else max(0.0, now - w.last_heartbeat)
    queued = None if queues is None else queues.get(w.name)
    state, task = w.state, w.current_task
    if running is not None:
        task = running.get(w.name)
        if state in (WorkerState.IDLE.value, WorkerState.BUSY.value):
            state = WorkerState.BUSY.value if task else WorkerState.IDLE.value
    return WorkerLine(w.name, state, task, age, w.pool, queued)


def _live_first(rows: list[WorkerRow]) -> list[WorkerRow]:
    """Workers that are not offline first (by name), then the offline ones."""
    return sorted(rows, key=lambda w: (w.state == WorkerState.OFFLINE.value, w.name))


@contextmanager
def _reading(settings: Settings) -> Iterator[None]:
    """Turn a database failure into DatabaseError naming the database (its password masked)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as e:
        from renderfarm.config import mask_url
        from renderfarm.db import DatabaseError

        why = first_line(str(getattr(e, "orig", None) or e))
        raise DatabaseError(f"database {mask_url(settings.database_url)}: cannot be read ({why})") from None
