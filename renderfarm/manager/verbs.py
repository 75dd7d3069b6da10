"""The wrangler's verbs, applied by the manager: cancel, suspend, resume, retry, priority.
Each is safe to repeat: applying one twice leaves the farm as applying it once did. A verb that
has nothing to do (cancelling a finished job) says so: its reply has `changed` False."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from renderfarm import lifecycle, queues
from renderfarm.errors import NotFoundError
from renderfarm.models import Attempt, AttemptState, Job
from renderfarm.wire import CancelIntent, Reply, ResumeIntent, RetryIntent, SuspendIntent

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from renderfarm.manager.intake import Batch
    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.wire import VerbIntent

log = logging.getLogger("renderfarm.manager")

VERBS = ("cancel", "suspend", "resume", "retry", "priority")


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
    else:
        changed = job.priority != intent.priority
        job.priority = intent.priority
    batch.jobs.add(job.id)
    log.info("job %s: %s %s (%s)", job.id, intent.type, "applied" if changed else "had nothing to do", job.state)
    return Reply(ok=True, job_id=job.id, state=job.state, priority=job.priority, changed=changed)


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
