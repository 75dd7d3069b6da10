"""Reconciling the database against Redis: the database says an attempt is queued or running;
does Redis still know it? After a wipe or a lost event, an attempt whose lease, queued job and
worker all forgot it is checked in storage (a verified output is committed, not rendered again)
and otherwise handed out again."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from renderfarm import keys, lifecycle, queues
from renderfarm.frames import parse_frames
from renderfarm.manager.expected import extension
from renderfarm.manager.intake import Batch, attempt_done
from renderfarm.manager.verify import outputs_in_storage
from renderfarm.models import ATTEMPT_ACTIVE, Attempt, AttemptState, Job, Task

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.storage import Storage
    from renderfarm.wire import Heartbeat

log = logging.getLogger("renderfarm.manager")

SWEEP_EVERY = 3.0  # seconds between reconciliation sweeps
# How much later than it was written a beat may be first read (a busy round of the manager's):
# a beat first seen less than this after an attempt ended may predate the end.
BEAT_READ_LAG = 2.0


class Reconciler:
    """Remembers attempts Redis seemed to have lost, and acts when a second sweep agrees."""

    def __init__(self) -> None:
        self.suspects: dict[int, float] = {}  # attempt id -> when first found missing

    def sweep(self, session: Session, r: Redis, storage: Storage, live: dict[str, Heartbeat], batch: Batch,
              now: float, book: NodeBook, beat_at: dict[str, float]) -> int:
        """One sweep in the caller's transaction; returns how many attempts it resolved.
        `beat_at`: when each live worker's latest beat was first seen, by the manager's clock."""
        rows = session.execute(
            select(Attempt, Task.index).join(Task, Task.id == Attempt.task_id)
            .where(Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE]))
        ).all()
        active = {a.id for a, _ in rows}
        self.suspects = {a: t for a, t in self.suspects.items() if a in active}
        self._stop_stale(session, r, live, active, beat_at)
        if not rows:
            return 0
        pipe = r.pipeline(transaction=False)
        for attempt, _index in rows:
            pipe.get(keys.lease_key(attempt.task_id))
        leases = pipe.execute()
        # Queued means waiting in the worker's queue: an RQ job key alone may be a failed one.
        queued = queues.queued_in(r, [(a.worker, book.rq_id(a.worker, a.id)) for a, _ in rows])
        resolved = 0
        for (attempt, index), lease, waiting in zip(rows, leases, queued):
            try:
                holder = int(lease) if lease is not None else None
            except ValueError:
                holder = None
            beat = live.get(attempt.worker)
            if beat is None:
                continue  # a silent worker is the reaper's business, not ours
            held = attempt.id in beat.attempts  # rendering, or its outputs still uploading
            if holder is None and held:
                queues.restore_lease(r, attempt.task_id, attempt.id)  # Redis was wiped mid-render
                holder = attempt.id
            if holder == attempt.id and (waiting or held):
                self.suspects.pop(attempt.id, None)
                continue
            first = self.suspects.setdefault(attempt.id, now)
            # Two sweeps, and long enough for a worker to beat again after a wipe.
            if now - first < max(SWEEP_EVERY, beat.ttl / 3):
                continue
            self.suspects.pop(attempt.id, None)
            self._resolve(session, r, storage, attempt, index, batch, now, book)
            resolved += 1
        return resolved

    def _stop_stale(self, session: Session, r: Redis, live: dict[str, Heartbeat], active: set[int],
                    beat_at: dict[str, float]) -> None:
        """A live worker still holding an attempt that has ended (its task done elsewhere, or it
        was declared lost while the worker was frozen) is told to stop: its task's lease, if no
        attempt holds it any more, is marked taken back, which its next lease check sees. Only a
        beat first seen after the end says so: a worker names what it holds until its next beat,
        so the beat read before its done event still names the attempt it has just finished."""
        holder = {a: name for name, beat in live.items() for a in beat.attempts if a not in active}
        if not holder:
            return
        ended = session.execute(select(Attempt.id, Attempt.task_id, Attempt.finished_at)
                                .where(Attempt.id.in_(holder))).all()
        tasks = [task for a, task, at in ended
                 if at is None or at < beat_at.get(holder[a], float("inf")) - BEAT_READ_LAG]
        if tasks:
            queues.mark_taken_back(r, tasks, ttl=max(60.0, 2 * max(b.ttl for b in live.values())))

    def _resolve(self, session: Session, r: Redis, storage: Storage, attempt: Attempt, index: int,
                 batch: Batch, now: float, book: NodeBook) -> None:
        job = session.get(Job, attempt.job_id)
        task = session.get(Task, attempt.task_id)
        label = f"{job.id}:{index}/{attempt.number}"
        outputs = outputs_in_storage(
            storage, node=attempt.worker, job_id=job.id, task_index=index, attempt=attempt.number,
            frames=parse_frames(task.frames), name=job.name, ext=extension(job),
        )
        # Whatever happens next, this attempt's job must not run from a queue Redis kept.
        queues.withdraw_attempt(r, attempt.worker, book.rq_id(attempt.worker, attempt.id))
        if outputs is not None:
            log.warning("attempt %s: lost by Redis, but its output is in storage; verifying it", label)
            attempt_done(session, storage, attempt, outputs, None, now, batch)
            if attempt.state == AttemptState.DONE.value:
                return
        lifecycle.lose_attempt(session, attempt, now, "lost by Redis (no lease, queued job or heartbeat knows it)")
        batch.release([attempt], abandoned=True)
        log.warning("attempt %s: lost by Redis; its task goes out again", label)
