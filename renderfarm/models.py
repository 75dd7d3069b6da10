"""The database tables: jobs, tasks, attempts and workers (SQLModel); their states are in states.py.

Times are epoch seconds (floats): portable between SQLite and PostgreSQL and cheap to subtract.
Only renderfarm.lifecycle changes a state column.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from renderfarm.states import (  # noqa: F401  (re-exported: the states are the tables' vocabulary)
    ATTEMPT_ACTIVE,
    HOLD_DISABLE,
    HOLD_DRAIN,
    JOB_FINAL,
    TASK_FINAL,
    AttemptState,
    DeliveryState,
    JobState,
    TaskKind,
    TaskState,
    WorkerState,
    held_state,
)


class JobBase(SQLModel):
    name: str = Field(max_length=128)
    owner: str = Field(max_length=64)
    renderer: str = Field(max_length=32)
    scene_name: str = Field(max_length=255)
    scene_key: str = Field(max_length=255)
    scene_sha256: str = Field(max_length=64)
    frames: str = Field(max_length=4096)
    frame_count: int
    chunk: int
    priority: int = 50
    pool: str = Field(default="default", max_length=64)
    width: int
    height: int
    output_format: str = Field(default="png", max_length=16)
    max_attempts: int = 3
    # The job fails once this many of its tasks have failed for good, its unfinished tasks
    # cancelled (an OpenJD bundle's deadline:maxFailedTasksCount; 0 counts as 1). None: no limit.
    max_failed_tasks: int | None = None
    timeout: float = 3600.0
    tiles: str | None = Field(default=None, max_length=32)  # the tile grid ("3x2", "100px"), if tiled
    tile_count: int = 0  # tiles per frame (0: not tiled)
    max_workers: int | None = None  # at most this many workers render it at once
    after: str | None = Field(default=None, max_length=16)  # starts once this job is done
    # With `after`: each frame starts once the after job's same frame is done (--frame-by-frame).
    frame_by_frame: bool = False
    first_last: bool = False  # first, middle and last frames render before the rest
    site: str | None = Field(default=None, max_length=64)  # pinned to this site's workers
    prefer: str | None = Field(default=None, max_length=16)  # cheapest, greenest or fastest
    deadline: float | None = None  # epoch seconds it must be done by (`--deadline`)
    # The manager's plan for a job with a deadline (renderfarm.power): no task starts before
    # `plan_start`, and then only at `plan_site` (if set); `plan_note` says why, or that it is late.
    plan_start: float | None = None
    plan_site: str | None = Field(default=None, max_length=64)
    plan_note: str | None = Field(default=None, max_length=255)
    requires: str | None = Field(default=None, max_length=1024)  # tags a worker must have, comma-separated
    keep_tiles: bool = False
    renderer_version: str | None = Field(default=None, max_length=32)  # e.g. "3.4": only workers with it
    render_options: str | None = Field(default=None, sa_type=Text)  # JSON: samples, allow_scripts
    notify: str | None = Field(default=None, max_length=2048)  # a webhook URL of its own (--notify)
    # An OpenJD job: its template and job parameter values (JSON: {"template", "job_parameters"}),
    # and each step's dependencies and host requirements (JSON: {step: {"after", "host"}}).
    openjd_template: str | None = Field(default=None, sa_type=Text)
    openjd_steps: str | None = Field(default=None, sa_type=Text)


class Job(JobBase, table=True):
    __tablename__ = "jobs"

    id: str = Field(primary_key=True, max_length=16)
    # The submission's request id (made by the CLI): the same request never makes a second job.
    request_id: str | None = Field(default=None, max_length=32, unique=True, index=True)
    state: str = Field(default=JobState.QUEUED.value, max_length=16, index=True)
    task_count: int = 0
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = Field(default=None, max_length=4096)
    archived_at: float | None = None  # hidden from default listings (`farm archive`, retention)


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("job_id", "index", name="uq_tasks_job_index"),
        # The dispatcher's query: a job's next pending tasks, first-last ones first, in order.
        Index("ix_tasks_job_state_rank_index", "job_id", "state", "rank", "index"),
        # A --frame-by-frame job's question: which tasks of the job it follows hold these frames.
        Index("ix_tasks_job_frame_low", "job_id", "frame_low"),
        {"sqlite_autoincrement": True},  # ids never used again (leases are by task id)
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", max_length=16)
    index: int
    kind: str = Field(default=TaskKind.RENDER.value, max_length=16)
    frames: str = Field(max_length=4096)
    first_frame: int
    frame_count: int
    frame_low: int  # its lowest and highest frames (a chunk's frames may skip some in between)
    frame_high: int
    tile: int | None = None  # the tile's index in the job's grid, for tile tasks
    # This task's share of the job's frames: its frame count, or a frame's share for tiles and
    # assemblies (progress shows a tiled frame as partly done).
    weight: float = 1.0
    rank: int = 1  # 0 for tasks that render before the rest of their job (--first-last)
    state: str = Field(default=TaskState.PENDING.value, max_length=16)
    failures: int = 0  # failed attempts since the task was last retried
    attempts: int = 0
    worker: str | None = Field(default=None, max_length=128)
    progress: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = Field(default=None, max_length=4096)
    # An OpenJD task: its step, and its task parameter values (JSON: {NAME: {"type", "value"}}).
    step: str | None = Field(default=None, max_length=64)
    parameters: str | None = Field(default=None, sa_type=Text)


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("task_id", "number", name="uq_attempts_task_number"),
        Index("ix_attempts_worker_state", "worker", "state"),
        # Ids are never used again (SQLite reuses the highest ones once deleted, `farm delete`):
        # a late event, lease or RQ job of a deleted attempt must never name a new one.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="tasks.id", index=True)
    job_id: str = Field(foreign_key="jobs.id", max_length=16, index=True)
    number: int
    worker: str = Field(max_length=128)
    state: str = Field(default=AttemptState.QUEUED.value, max_length=16)
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = Field(default=None, max_length=4096)
    log_key: str | None = Field(default=None, max_length=512)
    # What the render burned (failed ones too), in exact integer units (see renderfarm.sites).
    site: str | None = Field(default=None, max_length=64)
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    energy_ukwh: int = Field(default=0, sa_type=BigInteger)
    cost_pico: int = Field(default=0, sa_type=BigInteger)
    currency: str = Field(default="", max_length=8)
    co2_ng: int = Field(default=0, sa_type=BigInteger)
    # What it last reported of its progress (0..1) and status text (an OpenJD action's
    # openjd_progress and openjd_status lines): kept once the task is done.
    progress: float | None = None
    status_text: str | None = Field(default=None, max_length=256)


class JobOutput(SQLModel, table=True):
    """One file an OpenJD task wrote, verified and promoted: its path relative to the session's
    params/ folder (as `farm download` writes it below its destination, and as a dependent step's
    task finds it in its own session), its step and committed key, size and SHA-256."""

    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "step", "path", name="uq_outputs_job_step_path"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", max_length=16, index=True)
    task_id: int = Field(foreign_key="tasks.id", index=True)
    step: str = Field(max_length=64)
    path: str = Field(max_length=512)
    key: str = Field(max_length=1024)
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    committed_at: float


class Worker(SQLModel, table=True):
    __tablename__ = "workers"

    name: str = Field(primary_key=True, max_length=128)
    host: str = Field(max_length=255)
    pid: int
    pool: str = Field(default="default", max_length=64)
    site: str = Field(default="local", max_length=64)
    cores: int = 1
    version: str = Field(default="", max_length=32)
    state: str = Field(default=WorkerState.IDLE.value, max_length=16)
    current_task: str | None = Field(default=None, max_length=64)
    started_at: float
    last_seen: float
    capabilities: str | None = Field(default=None, sa_type=Text)  # JSON, as the worker advertised it


class Node(SQLModel, table=True):
    """An enrolled render node: its key (which seals its messages both ways), the digest of its
    Valkey password, its S3 identity, and what it was refused."""

    __tablename__ = "nodes"

    name: str = Field(primary_key=True, max_length=48)
    node_id: str = Field(max_length=16, unique=True)  # n + 8 hex: its RQ ids and worker names
    key: str = Field(max_length=128)  # HMAC-SHA256 key of its messages
    redis_digest: str = Field(max_length=64)  # SHA-256 of its Valkey password (Valkey's `#` form)
    s3_access_key: str | None = Field(default=None, max_length=128)
    s3_secret_key: str | None = Field(default=None, max_length=128)
    site: str = Field(default="local", max_length=64)
    pool: str = Field(default="default", max_length=64)
    tags: str | None = Field(default=None, max_length=1024)
    created_at: float
    revoked_at: float | None = None
    last_event_seq: int = Field(default=0, sa_type=BigInteger)  # the newest event accepted...
    last_event_entry: str = Field(default="0-0", max_length=40)  # ...and its stream entry
    last_beat_seq: int = Field(default=0, sa_type=BigInteger)  # the newest heartbeat accepted
    refused: int = 0  # its entries and commands refused (dead letters)
    hold: str | None = Field(default=None, max_length=16)  # HOLD_DRAIN or HOLD_DISABLE: it takes no new work


class Notification(SQLModel, table=True):
    """One notification for one webhook: recorded with the state change that caused it (the
    outbox), then sent by the manager's notifier until the URL answers 2xx or the tries run out.
    The farm's own URL (FARM_WEBHOOK_URL) is the row with no `url`: read when it is sent."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("event_id", "target", name="uq_notifications_event_target"),
        Index("ix_notifications_state_next", "state", "next_try_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=96)  # stable: the job, the event, the task and its attempt
    target: str = Field(max_length=8)  # "farm" (FARM_WEBHOOK_URL) or "job" (the job's --notify)
    url: str | None = Field(default=None, max_length=2048)
    kind: str = Field(max_length=32)
    job_id: str = Field(max_length=16, index=True)  # no foreign key: deleting a job keeps its history
    body: str = Field(sa_type=Text)  # the exact JSON posted (and signed)
    created_at: float
    state: str = Field(default=DeliveryState.PENDING.value, max_length=16)
    tries: int = 0
    next_try_at: float
    last_try_at: float | None = None
    last_status: int | None = None  # the last HTTP status (None: no answer)
    last_error: str | None = Field(default=None, max_length=512)
    sent_at: float | None = None


class Purge(SQLModel, table=True):
    """Storage to delete under one prefix, recorded in the transaction that decided it (`farm
    delete`, `farm archive`, retention) and deleted by the manager in batches until nothing is
    left there: a manager that dies halfway finishes after its restart. A done row stays as the
    record that the job was deleted (a repeated `farm delete` says so)."""

    __tablename__ = "purges"
    __table_args__ = (Index("ix_purges_done_id", "done_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=16, index=True)  # no foreign key: the job's rows may be gone
    reason: str = Field(max_length=16)  # delete, archive or retention
    prefix: str = Field(max_length=512)  # ends with /: `jobs/ABC/` never reaches `jobs/ABCD/`
    keep: str | None = Field(default=None, max_length=512)  # keys under this prefix stay (--keep-frames)
    keep_logs: bool = False  # the job's attempt logs stay (archive)
    created_at: float
    not_before: float  # late uploads of attempts stopped by the decision land before this
    deleted: int = 0  # objects deleted so far
    done_at: float | None = None


class IdlePower(SQLModel, table=True):
    """A site's idle nodes, summed since the farm began (renderfarm.idlepower): node-seconds awake
    with nothing to do and what they drew (idle_watts), node-seconds asleep (FARM_SLEEP_AFTER) and
    what they drew (sleep_watts), and what sleeping saved against idling; energy in micro-kWh,
    costs in 10^-12 of the site's currency, each priced at the band in force when counted."""

    __tablename__ = "idle_power"

    site: str = Field(primary_key=True, max_length=64)
    currency: str = Field(default="", max_length=8)
    idle_seconds: float = 0.0
    idle_ukwh: int = Field(default=0, sa_type=BigInteger)
    idle_cost_pico: int = Field(default=0, sa_type=BigInteger)
    asleep_seconds: float = 0.0
    asleep_ukwh: int = Field(default=0, sa_type=BigInteger)
    asleep_cost_pico: int = Field(default=0, sa_type=BigInteger)
    saved_ukwh: int = Field(default=0, sa_type=BigInteger)
    saved_cost_pico: int = Field(default=0, sa_type=BigInteger)
    updated_at: float = 0.0
