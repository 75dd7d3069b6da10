"""The wrangler's verbs, applied by the manager: cancel, suspend, resume, retry, priority.
Each is safe to repeat: applying one twice leaves the farm as applying it once did."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from renderfarm import lifecycle, queues
from renderfarm.errors import InputError, NotFoundError
from renderfarm.models import Attempt, AttemptState, Job, Task
from renderfarm.planning import check_priority

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from renderfarm.manager.intake import Batch

log = logging.getLogger("renderfarm.manager")

VERBS = ("cancel", "suspend", "resume", "retry", "priority")


def apply_verb(session: Session, r: Redis, kind: str, body: dict[str, Any], batch: Batch) -> dict[str, Any]:
    """Apply one verb to one job; returns the reply for the CLI."""
    job_id = body.get("job")
    job = session.get(Job, job_id) if isinstance(job_id, str) else None
    if job is None:
        raise NotFoundError(f"job {job_id!r}: no such job")
    now = time.time()
    if kind == "cancel":
        live = lifecycle.cancel_job(session, job, now)
        _take_back(session, r, live, revoke_running=True)
        batch.release(live)
    elif kind == "suspend":
        live = lifecycle.suspend_job(session, job)
        kill = bool(body.get("kill"))
        # Prefetched attempts go back at once; running ones finish unless --kill.
        taken = _take_back(session, r, live, revoke_running=kill)
        for attempt in taken:
            lifecycle.lose_attempt(session, attempt, now, "job suspended")
        batch.release(taken)
    elif kind == "resume":
        lifecycle.resume_job(session, job)
    elif kind == "retry":
        count = lifecycle.retry_job(session, job, everything=bool(body.get("all")))
        log.info("job %s: %d task(s) to render again", job.id, count)
    elif kind == "priority":
        job.priority = check_priority(body.get("priority"))
    else:
        raise InputError(f"unknown verb {kind!r}")
    batch.jobs.add(job.id)
    log.info("job %s: %s applied (%s)", job.id, kind, job.state)
    return {"ok": True, "job_id": job.id, "state": job.state, "priority": job.priority}


def _take_back(session: Session, r: Redis, attempts: list[Attempt], *, revoke_running: bool) -> list[Attempt]:
    """Withdraw queued attempts from their workers' queues and, if asked, revoke running ones'
    leases (their renders stop within a second or two). Returns the attempts taken back; a
    queued one its worker took meanwhile runs on like a running one."""
    indexes = dict(session.execute(
        select(Task.id, Task.index).where(Task.id.in_([a.task_id for a in attempts]))
    ).all()) if attempts else {}
    taken, revoke = [], []
    for attempt in attempts:
        rq_id = queues.rq_job_id(attempt.job_id, indexes[attempt.task_id], attempt.number)
        if attempt.state == AttemptState.QUEUED.value and queues.withdraw_attempt(r, attempt.worker, rq_id):
            taken.append(attempt)
        elif revoke_running:
            revoke.append((attempt.task_id, attempt.id))
            taken.append(attempt)
    queues.revoke_leases(r, revoke)
    return taken
