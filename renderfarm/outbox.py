"""The webhook outbox: notifications recorded in the transaction of the state change that causes
them (so a manager that dies loses none), their delivery state, and what listings show of them.

Each event makes one row for the farm's URL (FARM_WEBHOOK_URL, read when it is sent) and one for
the job's own `--notify` URL. An event's id is stable: `JOB.done`, `JOB.failed`, `JOB.cancelled`
(`.2`, `.3`... when a retried job ends again) and `JOB:INDEX.failed.ATTEMPT` for a task that
failed for good. Only this module changes a notification's state.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from renderfarm.models import DeliveryState, Job, Notification, Task
from renderfarm.urls import mask_url
from renderfarm.webhooks import ERROR_MAX, EventKind, Outcome, retry_delay

if TYPE_CHECKING:
    from sqlmodel import Session

FARM = "farm"  # the row for FARM_WEBHOOK_URL
JOB = "job"  # the row for the job's own --notify URL


def record_job_event(session: Session, job: Job, kind: EventKind, now: float) -> str:
    """A job ended (done, failed or cancelled): record its notification; returns the event id."""
    base = f"{job.id}.{kind.value.split('.', 1)[1]}"
    earlier = session.scalar(
        select(func.count()).select_from(Notification)
        .where(Notification.job_id == job.id, Notification.kind == kind.value, Notification.target == FARM)
    )
    event_id = base if not earlier else f"{base}.{earlier + 1}"
    _record(session, job, kind, event_id, {"job": _job_doc(job)}, now)
    return event_id


def record_task_failed(session: Session, task: Task, now: float) -> str:
    """A task used up its attempts: record its notification; returns the event id."""
    job = session.get(Job, task.job_id)
    event_id = f"{job.id}:{task.index}.failed.{task.attempts}"
    task_doc = {"index": task.index, "kind": task.kind, "frames": task.frames, "attempts": task.attempts,
                "failures": task.failures, "worker": task.worker, "error": task.error}
    _record(session, job, EventKind.TASK_FAILED, event_id, {"job": _job_doc(job), "task": task_doc}, now)
    return event_id


def _job_doc(job: Job) -> dict:
    return {"id": job.id, "name": job.name, "owner": job.owner, "state": job.state, "frames": job.frames,
            "frame_count": job.frame_count, "submitted_at": job.submitted_at, "finished_at": job.finished_at,
            "error": job.error}


def _record(session: Session, job: Job, kind: EventKind, event_id: str, doc: dict, now: float) -> None:
    body = json.dumps({"event_id": event_id, "event": kind.value, "at": now, **doc}, sort_keys=True,
                      separators=(",", ":"))
    targets = [(FARM, None)] + ([(JOB, job.notify)] if job.notify else [])
    for target, url in targets:
        session.add(Notification(event_id=event_id, target=target, url=url, kind=kind.value, job_id=job.id,
                                 body=body, created_at=now, next_try_at=now))


# -- delivery (the manager's notifier) -------------------------------------------------------


def due(session: Session, now: float, *, skip: set[int], limit: int) -> list[Notification]:
    """Pending notifications whose next try is due, oldest first, but those in `skip` (in flight)."""
    query = (select(Notification)
             .where(Notification.state == DeliveryState.PENDING.value, Notification.next_try_at <= now)
             .order_by(Notification.next_try_at, Notification.id).limit(limit + len(skip)))
    return [n for n in session.scalars(query).all() if n.id not in skip][:limit]


def skip(notification: Notification, why: str) -> None:
    """Nothing to send it to (no FARM_WEBHOOK_URL; the job's URL is the farm's own)."""
    notification.state = DeliveryState.SKIPPED.value
    notification.last_error = why[:ERROR_MAX]


def settle(session: Session, notification_id: int, url: str, outcome: Outcome, now: float,
           max_tries: int) -> str | None:
    """Record one try at `url`: sent on a 2xx; else tried again after a backoff, or failed for
    good once `max_tries` tries failed. Returns the new state (None if the row is gone or no
    longer pending)."""
    row = session.get(Notification, notification_id)
    if row is None or row.state != DeliveryState.PENDING.value:
        return None
    row.url = url  # the farm's row: where its tries went
    row.tries += 1
    row.last_try_at = now
    row.last_status = outcome.status
    if outcome.delivered:
        row.state = DeliveryState.SENT.value
        row.sent_at = now
        return row.state
    row.last_error = (outcome.error or "failed")[:ERROR_MAX]
    if row.tries >= max_tries:
        row.state = DeliveryState.FAILED.value
    else:
        row.next_try_at = now + retry_delay(row.tries)
    return row.state


def skip_farm_rows(session: Session, why: str) -> int:
    """Without a farm URL, its pending rows have nowhere to go: marked skipped in one statement."""
    result = session.execute(
        update(Notification).where(Notification.target == FARM, Notification.state == DeliveryState.PENDING.value)
        .values(state=DeliveryState.SKIPPED.value, last_error=why)
    )
    return result.rowcount or 0


# -- what listings and the doctor show -------------------------------------------------------


def last_failures(session: Session, limit: int = 3) -> list[dict]:
    """The latest failed tries (given up or still retrying), newest first."""
    rows = session.scalars(
        select(Notification).where(Notification.last_error.is_not(None), Notification.last_try_at.is_not(None),
                                   Notification.state != DeliveryState.SENT.value)
        .order_by(Notification.last_try_at.desc()).limit(limit)
    ).all()
    return [delivery_doc(n) for n in rows]


def deliveries(session: Session, job_id: str) -> list[dict]:
    """A job's notifications and where each stands, for `--json`."""
    rows = session.scalars(select(Notification).where(Notification.job_id == job_id).order_by(Notification.id)).all()
    return [delivery_doc(n) for n in rows]


def delivery_doc(n: Notification) -> dict:
    return {"event_id": n.event_id, "event": n.kind, "job": n.job_id, "target": n.target,
            "url": mask_url(n.url), "state": n.state, "tries": n.tries, "last_status": n.last_status,
            "last_error": n.last_error, "last_try_at": n.last_try_at, "sent_at": n.sent_at}
