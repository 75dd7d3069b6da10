"""The state machine: the only code that changes a job's, task's, attempt's or worker's state.

Every function takes the manager's open session and the time, and is safe to call with a stale
event (an attempt that is no longer current is left alone), so replaying events changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, func, insert, select, update

from renderfarm import outbox
from renderfarm.models import (
    ATTEMPT_ACTIVE,
    HOLD_DRAIN,
    JOB_FINAL,
    TASK_FINAL,
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
)
from renderfarm.states import WORKER_SLEEPING
from renderfarm.webhooks import EventKind

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.planning import TaskPlan
    from renderfarm.sites import Usage
    from renderfarm.wire import Heartbeat

_INSERT_BATCH = 5000
log = logging.getLogger("renderfarm.lifecycle")
# Whether a job has a task left to finish: one index probe, asked after every batch of events
# (built once: building it cost more than running it).
_UNFINISHED = (select(Task.id).where(Task.job_id == bindparam("job_id"),
                                     Task.state.in_([s.value for s in TaskState if s not in TASK_FINAL])).limit(1))


def _change(row, state) -> None:
    """Set a job's, task's, attempt's or worker's state, logging old -> new (at debug level)."""
    new = state.value
    if row.state != new:
        if log.isEnabledFor(logging.DEBUG):
            ident = getattr(row, "id", None) or getattr(row, "name", "?")
            log.debug("%s %s: %s -> %s", type(row).__name__.lower(), ident, row.state, new)
        row.state = new


def create_job(session: Session, job: Job, plans: list[TaskPlan]) -> None:
    """Insert a job and all its tasks (pending) in the caller's transaction."""
    _change(job, JobState.QUEUED)
    job.task_count = len(plans)
    session.add(job)
    session.flush()
    rows = [
        {
            "job_id": job.id,
            "index": p.index,
            "kind": p.kind,
            "frames": p.spec,
            "first_frame": p.frames[0],
            "frame_count": len(p.frames),
            "frame_low": min(p.frames),
            "frame_high": max(p.frames),
            "tile": p.tile,
            "weight": p.share,
            "rank": p.rank,
            "step": p.step,
            "parameters": p.parameters,
            # A frame's assembly waits until all its tiles are committed.
            "state": (TaskState.WAITING if p.kind == TaskKind.ASSEMBLE.value else TaskState.PENDING).value,
            "attempts": 0,
            "progress": 0.0,
        }
        for p in plans
    ]
    for start in range(0, len(rows), _INSERT_BATCH):
        session.execute(insert(Task), rows[start : start + _INSERT_BATCH])


def queue_attempt(session: Session, task: Task, worker: str, now: float, *, flush: bool = True) -> Attempt:
    """A new attempt of a pending task, handed to `worker`'s queue. Without `flush`, the caller
    flushes (once for many attempts) before it reads the attempt's id."""
    assert task.state == TaskState.PENDING.value, f"task {task.id} is {task.state}, not pending"
    task.attempts += 1
    _change(task, TaskState.QUEUED)
    task.worker = worker
    task.progress = 0.0
    attempt = Attempt(
        task_id=task.id, job_id=task.job_id, number=task.attempts, worker=worker,
        state=AttemptState.QUEUED.value, queued_at=now,
    )
    session.add(attempt)
    if flush:
        session.flush()
    return attempt


def _is_current(task: Task, attempt: Attempt) -> bool:
    return attempt.number == task.attempts and task.state not in {s.value for s in TASK_FINAL}


def start_attempt(session: Session, attempt: Attempt, now: float) -> bool:
    """A worker began rendering the attempt. False if the attempt is no longer live."""
    if attempt.state != AttemptState.QUEUED.value:
        return False
    task = session.get(Task, attempt.task_id)
    _change(attempt, AttemptState.RUNNING)
    attempt.started_at = now
    if _is_current(task, attempt):
        _change(task, TaskState.RUNNING)
        task.started_at = task.started_at or now
        job = session.get(Job, attempt.job_id)
        if job.state == JobState.QUEUED.value:
            _change(job, JobState.RUNNING)
            job.started_at = now
    _set_worker_task(session, attempt.worker, f"{attempt.job_id}:{task.index}")
    return True


def note_progress(session: Session, attempt: Attempt, progress: float, status: str | None = None) -> None:
    if attempt.state != AttemptState.RUNNING.value:
        return
    task = session.get(Task, attempt.task_id)
    if _is_current(task, attempt):
        task.progress = attempt.progress = max(0.0, min(1.0, progress))
        if status is not None:
            attempt.status_text = status[:256]


def receive_done(session: Session, attempt: Attempt, now: float, started_at: float | None) -> bool:
    """A worker says the attempt rendered every frame. True when it is its task's live attempt,
    whose outputs are then verified and promoted; a stale report is settled here (a running
    attempt that lost its task is discarded) and gives False."""
    if attempt.state == AttemptState.QUEUED.value:
        # A short task sends no started event: its report says how long it took.
        start_attempt(session, attempt, started_at if started_at is not None else now)
    if attempt.state != AttemptState.RUNNING.value:
        return False
    if is_current(session, attempt):
        return True
    discard_attempt(session, attempt, now, "another attempt finished first or superseded it")
    return False


def receive_failure(session: Session, attempt: Attempt, now: float, error: str, log_key: str | None,
                    max_attempts: int, started_at: float | None) -> bool:
    """A worker says the attempt failed: it is retried or fails its task. True when the attempt
    was still live (so the failure counts)."""
    if attempt.state == AttemptState.QUEUED.value:  # a short attempt sends no started event
        start_attempt(session, attempt, started_at if started_at is not None else now)
    live = attempt.state in {s.value for s in ATTEMPT_ACTIVE}
    fail_attempt(session, attempt, now, error, log_key, max_attempts)
    return live


def may_promote(session: Session, attempt: Attempt) -> bool:
    """Whether the attempt's outputs may be promoted now: it is live and its task's own."""
    return attempt.state in {s.value for s in ATTEMPT_ACTIVE} and is_current(session, attempt)


def task_done(session: Session, attempt: Attempt) -> bool:
    """Whether the attempt's task is committed (by this attempt or another)."""
    return session.get(Task, attempt.task_id).state == TaskState.DONE.value


def is_current(session: Session, attempt: Attempt) -> bool:
    """Whether the attempt is still its task's live attempt (no other won, none superseded it)."""
    return _is_current(session.get(Task, attempt.task_id), attempt)


def complete_attempt(session: Session, attempt: Attempt, now: float, log_key: str | None) -> bool:
    """The attempt's outputs were verified and promoted: the task is done, exactly once.

    False for a stale event: an attempt that is no longer live is left as it is, and a live one
    whose task has moved on (a newer attempt, or a final state) is discarded, its task untouched.
    """
    if attempt.state not in {s.value for s in ATTEMPT_ACTIVE}:
        return False
    task = session.get(Task, attempt.task_id)
    if not _is_current(task, attempt):
        discard_attempt(session, attempt, now, "superseded before it finished")
        return False
    _change(attempt, AttemptState.DONE)
    attempt.finished_at = now
    attempt.log_key = log_key
    _change(task, TaskState.DONE)
    task.worker = attempt.worker
    task.progress = 1.0
    task.finished_at = now
    task.error = None
    _set_worker_task(session, attempt.worker, None)
    if task.kind == TaskKind.TILE.value:
        _release_assembly(session, task)
    return True


def _frame_tasks(session: Session, tile_task: Task) -> tuple[int, int]:
    """The index range of a tile task's frame: its tiles are [first, last), its assembly is last."""
    job = session.get(Job, tile_task.job_id)
    first = tile_task.index - tile_task.tile
    return first, first + job.tile_count


def _release_assembly(session: Session, tile_task: Task) -> None:
    """Once every tile of a frame is committed, its assembly may be handed out."""
    first, assembly = _frame_tasks(session, tile_task)
    unfinished = session.scalar(
        select(func.count()).select_from(Task).where(
            Task.job_id == tile_task.job_id, Task.index >= first, Task.index < assembly,
            Task.state != TaskState.DONE.value,
        )
    )
    if unfinished == 0:
        session.execute(
            update(Task)
            .where(Task.job_id == tile_task.job_id, Task.index == assembly, Task.state == TaskState.WAITING.value)
            .values(state=TaskState.PENDING.value)
        )


def reopen_tiles(session: Session, assembly: Task, tiles: list[int]) -> list[Task]:
    """An assembly found these tiles missing or broken in storage: render them again, and let the
    assembly wait for them. Returns the reopened tile tasks."""
    job = session.get(Job, assembly.job_id)
    first = assembly.index - job.tile_count
    reopened = session.scalars(
        select(Task).where(
            Task.job_id == assembly.job_id, Task.index.in_([first + t for t in tiles if 0 <= t < job.tile_count]),
            Task.kind == TaskKind.TILE.value,
        )
    ).all()
    for task in reopened:
        if task.state == TaskState.DONE.value:
            _change(task, TaskState.PENDING)
            task.progress = 0.0
            task.finished_at = None
    if reopened and assembly.state == TaskState.PENDING.value:
        _change(assembly, TaskState.WAITING)
    return list(reopened)


def discard_attempt(session: Session, attempt: Attempt, now: float, why: str) -> None:
    """A later attempt of a task that is already done (or no longer wanted)."""
    if attempt.state in {s.value for s in ATTEMPT_ACTIVE}:
        _change(attempt, AttemptState.CANCELLED)
        attempt.finished_at = now
        attempt.error = why
    _set_worker_task(session, attempt.worker, None)


def fail_attempt(session: Session, attempt: Attempt, now: float, error: str, log_key: str | None, max_attempts: int) -> None:
    """The attempt failed: retry the task, or fail it once it has used up its attempts."""
    if attempt.state not in {s.value for s in ATTEMPT_ACTIVE}:
        return
    _change(attempt, AttemptState.FAILED)
    attempt.finished_at = now
    attempt.error = error[:4000]
    attempt.log_key = log_key
    _set_worker_task(session, attempt.worker, None)
    task = session.get(Task, attempt.task_id)
    if not _is_current(task, attempt):
        return
    task.failures += 1
    task.error = error[:4000]
    task.progress = 0.0
    if task.failures >= max_attempts:
        _fail_for_good(session, task, now)
    else:
        _change(task, TaskState.PENDING)


def fail_unsent(session: Session, task: Task, now: float, error: str) -> None:
    """The task cannot be handed to any node as it stands (renderfarm.manager.dispatch): it fails
    for good, without an attempt, as retrying could not help."""
    task.failures += 1
    task.error = error[:4000]
    _fail_for_good(session, task, now)


def _fail_for_good(session: Session, task: Task, now: float) -> None:
    _change(task, TaskState.FAILED)
    task.finished_at = now
    outbox.record_task_failed(session, task, now)


def lose_attempt(session: Session, attempt: Attempt, now: float, why: str) -> None:
    """The attempt's worker left or vanished: the task goes back to pending, not counted as a failure."""
    started = attempt.state == AttemptState.RUNNING.value
    _end_unfinished(session, attempt, now, why, AttemptState.LOST if started else AttemptState.CANCELLED)


def take_back_attempt(session: Session, attempt: Attempt, now: float, why: str) -> None:
    """The farm took the attempt back (withdrawn from a queue, or killed by `suspend --kill`):
    cancelled, and its task goes back to pending, not counted as a failure."""
    _end_unfinished(session, attempt, now, why, AttemptState.CANCELLED)


def _end_unfinished(session: Session, attempt: Attempt, now: float, why: str, state: AttemptState) -> None:
    if attempt.state not in {s.value for s in ATTEMPT_ACTIVE}:
        return
    _change(attempt, state)
    attempt.finished_at = now
    attempt.error = why
    task = session.get(Task, attempt.task_id)
    if _is_current(task, attempt):
        _change(task, TaskState.PENDING)
        task.progress = 0.0


def refresh_job(session: Session, job: Job, now: float) -> list[Attempt]:
    """Finish a job whose tasks are all final: done, or failed naming its failed tasks. A job
    whose failed tasks reached its limit (`max_failed_tasks`) fails at once, its unfinished tasks
    cancelled; returns their live attempts, for the caller to take back from their workers."""
    if job.state not in (JobState.QUEUED.value, JobState.RUNNING.value, JobState.SUSPENDED.value):
        return []
    if job.max_failed_tasks is not None:
        failed = session.scalar(select(func.count()).select_from(Task).where(
            Task.job_id == job.id, Task.state == TaskState.FAILED.value))
        if failed >= max(1, job.max_failed_tasks):
            return _fail_at_limit(session, job, failed, now)
    if job.state == JobState.SUSPENDED.value:
        return []
    if session.scalar(_UNFINISHED, {"job_id": job.id}) is not None:  # a 100,000-task job too: one probe
        return []
    failed = task_counts(session, job.id).get(TaskState.FAILED.value, 0)
    job.finished_at = now
    job.started_at = job.started_at or now
    if failed:
        _change(job, JobState.FAILED)
        job.error = _failed_tasks(session, job, failed)
        outbox.record_job_event(session, job, EventKind.JOB_FAILED, now)
    else:
        _change(job, JobState.DONE)
        outbox.record_job_event(session, job, EventKind.JOB_DONE, now)
    return []


def _fail_at_limit(session: Session, job: Job, failed: int, now: float) -> list[Attempt]:
    """The job's failed tasks reached its limit: it fails, and its unfinished tasks are cancelled
    with their live attempts (returned: the caller takes them back)."""
    live = _live_attempts(session, job.id)
    why = f"job failed: {failed} of its tasks failed (its limit is {job.max_failed_tasks})"
    for attempt in live:
        _change(attempt, AttemptState.CANCELLED)
        attempt.finished_at = now
        attempt.error = why
        _set_worker_task(session, attempt.worker, None)
    cancelled = session.execute(
        update(Task).where(Task.job_id == job.id, Task.state.not_in([s.value for s in TASK_FINAL]))
        .values(state=TaskState.CANCELLED.value, finished_at=now, progress=0.0)
    ).rowcount
    _change(job, JobState.FAILED)
    job.finished_at = now
    job.started_at = job.started_at or now
    job.error = (f"{_failed_tasks(session, job, failed)}; the limit is {job.max_failed_tasks} failed tasks, so "
                 f"{cancelled} unfinished task{'s were' if cancelled != 1 else ' was'} cancelled")
    outbox.record_job_event(session, job, EventKind.JOB_FAILED, now)
    return live


def _failed_tasks(session: Session, job: Job, failed: int) -> str:
    """`3 tasks failed: 7f3a:1, 7f3a:4, 7f3a:9` (the first 20 named)."""
    indexes = session.scalars(
        select(Task.index).where(Task.job_id == job.id, Task.state == TaskState.FAILED.value)
        .order_by(Task.index).limit(20)
    ).all()
    more = f" and {failed - len(indexes)} more" if failed > len(indexes) else ""
    return f"{failed} task{'s' if failed != 1 else ''} failed: " + ", ".join(f"{job.id}:{i}" for i in indexes) + more


def task_counts(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Task.state, func.count()).where(Task.job_id == job_id).group_by(Task.state)
    ).all()
    return {state: n for state, n in rows}


def see_worker(session: Session, beat: Heartbeat, now: float) -> Worker:
    """Record a live worker from its heartbeat (creating it on first sight), by the manager's clock."""
    worker = session.get(Worker, beat.name)
    if worker is None:
        worker = Worker(name=beat.name, host="", pid=0, started_at=now - beat.uptime, last_seen=now)
        session.add(worker)
    if worker.state == WorkerState.OFFLINE.value or worker.pid != beat.pid:
        worker.started_at = now - beat.uptime  # a new run of the worker
    worker.host = beat.host
    worker.pid = beat.pid
    worker.pool = beat.pool
    worker.site = beat.site
    worker.cores = beat.cores
    worker.version = beat.version
    worker.last_seen = now
    caps = beat.capabilities.model_dump(mode="json", exclude_none=True) if beat.capabilities is not None else None
    worker.capabilities = json.dumps(caps, sort_keys=True) if caps is not None else None
    if beat.state == WorkerState.STOPPING.value:
        _change(worker, WorkerState.STOPPING)
    elif worker.state in (WorkerState.OFFLINE.value, WorkerState.STOPPING.value):
        _change(worker, WorkerState.BUSY if worker.current_task else WorkerState.IDLE)
    return worker


def worker_offline(session: Session, name: str, now: float, why: str) -> list[Attempt]:
    """A worker left or died: it goes offline and its live attempts are lost; returns them. A
    drain of it is over (it comes back taking work); a `disable` stays."""
    worker = session.get(Worker, name)
    if worker is not None:
        _change(worker, WorkerState.OFFLINE)
        worker.current_task = None
    session.execute(update(Node).where(Node.name == name, Node.hold == HOLD_DRAIN).values(hold=None))
    attempts = session.scalars(
        select(Attempt).where(Attempt.worker == name, Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE]))
    ).all()
    for attempt in attempts:
        lose_attempt(session, attempt, now, why)
    return list(attempts)


def worker_asleep(session: Session, name: str) -> bool:
    """The manager told an idle worker to sleep (renderfarm.manager.sleeper): it is `asleep`, and
    stays so through missing heartbeats until it is seen awake. False if it has no row."""
    worker = session.get(Worker, name)
    if worker is None:
        return False
    _change(worker, WorkerState.ASLEEP)
    return True


def worker_waking(session: Session, name: str) -> None:
    """The manager woke an asleep worker (a magic packet, the wake command): `waking` until it
    is seen awake, or back to `asleep` if it is not within FARM_WAKE_TIMEOUT."""
    worker = session.get(Worker, name)
    if worker is not None and worker.state == WorkerState.ASLEEP.value:
        _change(worker, WorkerState.WAKING)


def worker_awake(session: Session, name: str) -> None:
    """A sleeping worker is back (or never slept): idle, or busy if it holds a task."""
    worker = session.get(Worker, name)
    if worker is not None and worker.state in WORKER_SLEEPING:
        _change(worker, WorkerState.BUSY if worker.current_task else WorkerState.IDLE)


def _set_worker_task(session: Session, name: str, task: str | None) -> None:
    worker = session.get(Worker, name)
    if worker is None or worker.state == WorkerState.OFFLINE.value:
        return
    worker.current_task = task
    if worker.state != WorkerState.STOPPING.value:
        _change(worker, WorkerState.BUSY if task else WorkerState.IDLE)


def mark_tasks(session: Session, task_ids: Iterable[int], state: TaskState) -> None:
    ids = list(task_ids)
    if ids:
        session.execute(update(Task).where(Task.id.in_(ids)).values(state=state.value))


# -- wrangler verbs ---------------------------------------------------------------------------


def cancel_job(session: Session, job: Job, now: float) -> tuple[list[Attempt], bool]:
    """Cancel a job: every unfinished task is cancelled with its live attempts. Returns those
    attempts (the caller takes them back from their workers) and whether there was anything to
    cancel."""
    live = _live_attempts(session, job.id)
    for attempt in live:
        _change(attempt, AttemptState.CANCELLED)
        attempt.finished_at = now
        attempt.error = "job cancelled"
        _set_worker_task(session, attempt.worker, None)
    final = [s.value for s in TASK_FINAL]
    session.execute(
        update(Task).where(Task.job_id == job.id, Task.state.not_in(final))
        .values(state=TaskState.CANCELLED.value, finished_at=now)
    )
    if job.state in {s.value for s in JOB_FINAL}:
        return live, bool(live)
    _change(job, JobState.CANCELLED)
    job.finished_at = now
    outbox.record_job_event(session, job, EventKind.JOB_CANCELLED, now)
    return live, True


def suspend_job(session: Session, job: Job, *, kill: bool) -> tuple[list[Attempt], bool]:
    """No new task of the job starts until it is resumed. Returns its live attempts (the caller
    takes the queued ones back, and with `kill` the running ones too) and whether anything
    changed."""
    if job.state in (JobState.QUEUED.value, JobState.RUNNING.value):
        _change(job, JobState.SUSPENDED)
        return _live_attempts(session, job.id), True
    if job.state == JobState.SUSPENDED.value and kill:
        live = _live_attempts(session, job.id)
        return live, bool(live)
    return [], False


def resume_job(session: Session, job: Job) -> bool:
    """A suspended job may start tasks again; False if it was not suspended."""
    if job.state != JobState.SUSPENDED.value:
        return False
    _change(job, JobState.RUNNING if job.started_at else JobState.QUEUED)
    return True


def retry_job(session: Session, job: Job, *, everything: bool) -> int:
    """Render the job's failed tasks again (with `everything`, every task but cancelled ones),
    each with its full number of attempts; returns how many tasks go back to pending."""
    states = [TaskState.FAILED.value] + ([TaskState.DONE.value, TaskState.CANCELLED.value, TaskState.SKIPPED.value]
                                         if everything else [])
    if job.state == JobState.FAILED.value and job.max_failed_tasks is not None:
        # The tasks cancelled when its failed tasks reached its limit render again too.
        states.append(TaskState.CANCELLED.value)
    tasks = session.scalars(select(Task).where(Task.job_id == job.id, Task.state.in_(states))).all()
    retry_tasks(session, job, list(tasks), reopen=everything)
    return len(tasks)


def retry_tasks(session: Session, job: Job, tasks: list[Task], *, reopen: bool = False) -> None:
    """Render these final tasks again, each with its full number of attempts; a finished job
    runs again (with `reopen`, even when no task is given)."""
    for task in tasks:
        _change(task, TaskState.WAITING if task.kind == TaskKind.ASSEMBLE.value else TaskState.PENDING)
        task.failures = 0
        task.error = None
        task.progress = 0.0
        task.finished_at = None
    if tasks or reopen:
        if job.state in {s.value for s in JOB_FINAL}:
            _change(job, JobState.RUNNING if job.started_at else JobState.QUEUED)
            job.finished_at = None
            job.error = None
    _release_waiting_assemblies(session, job, [t for t in tasks if t.kind == TaskKind.ASSEMBLE.value])


def skip_tasks(session: Session, tasks: list[Task], now: float) -> list[Attempt]:
    """`farm task skip`: the tasks are final without rendering (skipped, never faked); their live
    attempts are cancelled, not counted as failures. Returns those attempts, for the caller to
    take back from their workers."""
    live = list(session.scalars(select(Attempt).where(
        Attempt.task_id.in_([t.id for t in tasks]), Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE])))) \
        if tasks else []
    for attempt in live:
        _change(attempt, AttemptState.CANCELLED)
        attempt.finished_at = now
        attempt.error = "its task was skipped (farm task skip)"
        _set_worker_task(session, attempt.worker, None)
    for task in tasks:
        _change(task, TaskState.SKIPPED)
        task.progress = 0.0
        task.finished_at = now
    return live


def _release_waiting_assemblies(session: Session, job: Job, assemblies: list[Task]) -> None:
    """Assemblies retried on their own (their tiles still committed) may go at once."""
    for assembly in assemblies:
        first = assembly.index - job.tile_count
        unfinished = session.scalar(
            select(func.count()).select_from(Task).where(
                Task.job_id == job.id, Task.index >= first, Task.index < assembly.index,
                Task.state != TaskState.DONE.value,
            )
        )
        if unfinished == 0:
            _change(assembly, TaskState.PENDING)


def _live_attempts(session: Session, job_id: str) -> list[Attempt]:
    return list(session.scalars(
        select(Attempt).where(Attempt.job_id == job_id, Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE]))
    ).all())


def record_usage(session: Session, attempt: Attempt, site: str, usage: Usage, *, wall: float, cpu: float) -> bool:
    """What an attempt burned, once (a replayed event changes nothing); failed and handed-back
    attempts too, since they burned power as well."""
    if attempt.wall_seconds is not None:
        return False
    attempt.site = site
    attempt.wall_seconds = wall
    attempt.cpu_seconds = cpu
    attempt.energy_ukwh = usage.energy_ukwh
    attempt.cost_pico = usage.cost_pico
    attempt.co2_ng = usage.co2_ng
    attempt.currency = usage.currency
    return True
