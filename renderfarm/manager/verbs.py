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
from renderfarm.models import ATTEMPT_ACTIVE, JOB_FINAL, Attempt, AttemptState, Job, Node
from renderfarm.states import HELD, held_state
from renderfarm.wire import CancelIntent, Reply, ResumeIntent, RetryIntent, SetIntent, SuspendIntent

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from renderfarm.manager.intake import Batch
    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.wire import VerbIntent, WorkerHoldIntent

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
    state = held_state(hold, busy=_busy(session, node.name))
    log.info("worker %s: %s %s (%s)", node.name, intent.hold, "applied" if changed else "had nothing to do", state)
    return Reply(ok=True, state=state, changed=changed)


def _busy(session: Session, worker: str) -> bool:
    active = [s.value for s in ATTEMPT_ACTIVE]
    return session.scalar(select(Attempt.id).where(Attempt.worker == worker, Attempt.state.in_(active)).limit(1)) \
        is not None


def _take_back(r: Redis, book: NodeBook, attempts: list[Attempt], *, revoke_running: bool) -> list[Attempt]:
    """Withdraw queued attempts from their workers' queues and, if asked, revoke running ones'
    leases (their renders stop within a second or two). Returns the attempts taken back; a
    queued one its worker took meanwhile runs on like a running one."""
    taken, revoke = [], []
    for attempt in attempts:
        rq_id = book.rq_id(attempt.worker, attempt.id)
        if attempt.state == AttemptState.QUEUED.value and queues.withdraw_attempt(r, attempt.worker, rq_id):
            taken.append(attempt)
        elif revoke_running:
            revoke.append((attempt.task_id, attempt.id))
            taken.append(attempt)
    queues.revoke_leases(r, revoke)
    return taken
