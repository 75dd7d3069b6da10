"""The wrangler's verbs, applied by the manager: cancel, suspend, resume, retry, priority, set; and
drain, disable, enable of a worker.
Each is safe to repeat: applying one twice leaves the farm as applying it once did. A verb that
has nothing to do (cancelling a finished job) says so: its reply has `changed` False."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from renderfarm import lifecycle, queues
from renderfarm.errors import InputError, NotFoundError
from renderfarm.models import (
    ATTEMPT_ACTIVE,
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
)
from renderfarm.states import HELD, held_state
from renderfarm.status import busy_workers
from renderfarm.wire import CancelIntent, Reply, ResumeIntent, RetryIntent, SetIntent, SuspendIntent

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from renderfarm.manager.intake import Batch
    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.wire import TaskIntent, VerbIntent, WorkerHoldIntent

log = logging.getLogger("renderfarm.manager")

VERBS = ("cancel", "suspend", "resume", "retry", "priority", "set")


def apply_verb(session: Session, r: Redis, intent: VerbIntent, batch: Batch, now: float, book: NodeBook) -> Reply:
    """Apply one verb to one job; returns the reply for the CLI."""
    job = session.get(Job, intent.job)
    if job is None:
        raise NotFoundError(f"job {intent.job!r}: no such job")
    if isinstance(intent, CancelIntent):
        live, changed = lifecycle.cancel_job(session, job, now)
        _take_back(r, book, live, revoke_running=True)
        batch.release(live)
    elif isinstance(intent, SuspendIntent):
        live, changed = lifecycle.suspend_job(session, job, kill=intent.kill)
        # Prefetched attempts go back at once; running ones finish unless --kill.
        taken = _take_back(r, book, live, revoke_running=intent.kill)
        for attempt in taken:
            killed = attempt.state == AttemptState.RUNNING.value
            lifecycle.take_back_attempt(session, attempt, now, "killed by suspend --kill" if killed
                                        else "job suspended")
        batch.release(taken)
    elif isinstance(intent, ResumeIntent):
        changed = lifecycle.resume_job(session, job)
    elif isinstance(intent, RetryIntent):
        count = lifecycle.retry_job(session, job, everything=intent.all)
        changed = count > 0
        if changed:
            job.archived_at = None  # rendering again: listed again
        log.info("job %s: %d task(s) to render again", job.id, count)
    elif isinstance(intent, SetIntent):
        changed = _set(session, r, book, job, intent, batch, now)
    else:
        changed = job.priority != intent.priority
        job.priority = intent.priority
    batch.jobs.add(job.id)
    log.info("job %s: %s %s (%s)", job.id, intent.type, "applied" if changed else "had nothing to do", job.state)
    return Reply(ok=True, job_id=job.id, state=job.state, priority=job.priority, changed=changed)


def _set(session: Session, r: Redis, book: NodeBook, job: Job, intent: SetIntent, batch: Batch, now: float) -> bool:
    """Change a job's settings; True if any changed. Running attempts keep the settings they
    started with; prefetched ones are handed out again, with the new ones."""
    if job.state in {s.value for s in JOB_FINAL}:
        raise InputError(f"job {job.id} is {job.state}: its settings no longer matter (`farm retry` renders it again)")
    wanted = {
        "timeout": intent.timeout,
        "max_workers": None if intent.max_workers == 0 else intent.max_workers,
        "pool": intent.pool,
        "requires": None if intent.requires is None else ",".join(sorted(set(intent.requires))) or None,
        "max_attempts": None if intent.retries is None else intent.retries + 1,
    }
    given = {"max_workers": intent.max_workers, "requires": intent.requires}
    changes = {field: value for field, value in wanted.items()
               if (value is not None or given.get(field) is not None) and getattr(job, field) != value}
    for field, value in changes.items():
        setattr(job, field, value)
    if changes.keys() & {"timeout", "pool", "requires"}:
        queued = session.scalars(select(Attempt).where(Attempt.job_id == job.id,
                                                       Attempt.state == AttemptState.QUEUED.value)).all()
        taken = _take_back(r, book, list(queued), revoke_running=False)
        for attempt in taken:
            lifecycle.take_back_attempt(session, attempt, now, "handed out again with the job's new settings")
        batch.release(taken)
    if changes:
        log.info("job %s: set %s", job.id, ", ".join(f"{k} {v}" for k, v in changes.items()))
    return bool(changes)


def apply_task_verb(session: Session, r: Redis, intent: TaskIntent, batch: Batch, now: float,
                    book: NodeBook) -> Reply:
    """Kill, retry or skip some of a job's tasks; the reply names those it changed (`changed`
    False when none needed it)."""
    job = session.get(Job, intent.job)
    if job is None:
        raise NotFoundError(f"job {intent.job!r}: no such job")
    if job.state == JobState.CANCELLED.value and intent.action != "retry":
        raise InputError(f"job {job.id} is cancelled: nothing of it renders (`farm retry --all` renders it again)")
    tasks = _named_tasks(session, job, intent)
    final = {s.value for s in TASK_FINAL}
    if intent.action == "kill":
        running = list(session.scalars(select(Attempt).where(
            Attempt.task_id.in_([t.id for t in tasks]), Attempt.state == AttemptState.RUNNING.value)))
        for attempt in running:  # a failure: retried per the job's retries, on the next free worker
            lifecycle.fail_attempt(session, attempt, now, "killed by farm task kill", None, job.max_attempts)
        queues.revoke_leases(r, [(a.task_id, a.id) for a in running])  # its render stops within a second or so
        batch.release(running)
        killed = {a.task_id for a in running}
        changed = [t for t in tasks if t.id in killed]
    elif intent.action == "retry":
        changed = [t for t in tasks if t.state in final]
        lifecycle.retry_tasks(session, job, changed)
    else:
        if any(t.kind != TaskKind.RENDER.value for t in tasks) and intent.frames is None:
            tile = next(t for t in tasks if t.kind != TaskKind.RENDER.value)
            raise InputError(f"task {job.id}:{tile.index} is part of tiled frame {tile.first_frame}: skip the whole "
                             f"frame ({job.id}:frames={tile.first_frame})")
        changed = [t for t in tasks if t.state not in (TaskState.DONE.value, TaskState.SKIPPED.value)]
        live = list(session.scalars(select(Attempt).where(
            Attempt.task_id.in_([t.id for t in changed]), Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE]))))
        _take_back(r, book, live, revoke_running=True)
        lifecycle.skip_tasks(session, changed, now)
        batch.release(live)
        if changed and job.state == JobState.FAILED.value:  # its failed tasks skipped: it may be done now
            lifecycle.retry_tasks(session, job, [], reopen=True)
    batch.jobs.add(job.id)
    indexes = tuple(t.index for t in changed)
    log.info("job %s: task %s of %s", job.id, intent.action, ", ".join(map(str, indexes)) or "none needed it")
    return Reply(ok=True, job_id=job.id, state=job.state, changed=bool(indexes), tasks=indexes)


def _named_tasks(session: Session, job: Job, intent: TaskIntent) -> list[Task]:
    """The job's tasks an intent names: by index, or every task whose frames all lie in its
    frame range (a task only partly inside is refused, naming it)."""
    from renderfarm.frames import parse_frames

    if intent.tasks:
        tasks = list(session.scalars(select(Task).where(Task.job_id == job.id, Task.index.in_(intent.tasks))
                                     .order_by(Task.index)))
        missing = sorted(set(intent.tasks) - {t.index for t in tasks})
        if missing:
            raise NotFoundError(f"task {job.id}:{missing[0]}: no such task (the job has {job.task_count})")
        return tasks
    wanted = set(parse_frames(intent.frames))
    tasks = []
    # A chunk that starts before the range may reach into it: every task starting before its end is looked at.
    for task in session.scalars(select(Task).where(Task.job_id == job.id, Task.first_frame <= max(wanted))
                                .order_by(Task.index)):
        frames = {task.first_frame} if task.frame_count == 1 else set(parse_frames(task.frames))
        if frames <= wanted:
            tasks.append(task)
        elif frames & wanted:
            raise InputError(f"frames={intent.frames}: task {job.id}:{task.index} (frames {task.frames}) is only "
                             f"partly inside; name it by itself ({job.id}:{task.index})")
    if not tasks:
        raise NotFoundError(f"frames={intent.frames}: job {job.id} has no task rendering those frames")
    return tasks


def apply_hold(session: Session, r: Redis, intent: WorkerHoldIntent, batch: Batch, now: float,
               book: NodeBook) -> Reply:
    """Drain, disable or enable a node: held, it is given nothing new and its prefetched attempts
    go back to render elsewhere; what it renders now finishes. The reply's `state` is what
    `farm workers` shows of it."""
    node = session.get(Node, intent.name)
    if node is None or node.revoked_at is not None:
        raise NotFoundError(f"worker {intent.name!r}: no such enrolled node (`farm node list` shows them)")
    hold = None if intent.hold == "enable" else intent.hold
    changed = node.hold != hold
    node.hold = hold
    book.nodes[node.name].hold = hold
    if hold is not None:
        queued = session.scalars(select(Attempt).where(Attempt.worker == node.name,
                                                       Attempt.state == AttemptState.QUEUED.value)).all()
        taken = _take_back(r, book, list(queued), revoke_running=False)
        for attempt in taken:
            lifecycle.take_back_attempt(session, attempt, now, f"worker {node.name} {HELD[hold]}")
        batch.release(taken)
    state = held_state(hold, busy=node.name in busy_workers(session, [node.name]))
    log.info("worker %s: %s %s (%s)", node.name, intent.hold, "applied" if changed else "had nothing to do", state)
    return Reply(ok=True, state=state, changed=changed)


def _take_back(r: Redis, book: NodeBook, attempts: list[Attempt], *, revoke_running: bool) -> list[Attempt]:
    """Withdraw queued attempts from their workers' queues and, if asked, revoke running ones'
    leases (their renders stop within a second or two). Returns the attempts taken back; a
    queued one its worker took meanwhile runs on like a running one. An attempt cancelled
    already (a cancelled or failed job's) may have been queued: it leaves its queue too."""
    taken, revoke = [], []
    for attempt in attempts:
        rq_id = book.rq_id(attempt.worker, attempt.id)
        if attempt.state != AttemptState.RUNNING.value and queues.withdraw_attempt(r, attempt.worker, rq_id):
            taken.append(attempt)
        elif revoke_running:
            revoke.append((attempt.task_id, attempt.id))
            taken.append(attempt)
    queues.revoke_leases(r, revoke)
    return taken
