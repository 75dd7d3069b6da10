"""Deleting and archiving jobs, and retention: the decision (applied with the intent, in its
transaction) records what storage to delete as purges; the Purger deletes it in bounded batches,
off the manager's main path, and marks each purge done. A manager killed halfway finishes after
its restart, since the purges are rows.

Every prefix ends with `/` and every key deleted is checked to start with it: `jobs/ABC/` never
reaches `jobs/ABCD...`, and nothing of another job is touched."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update

from renderfarm import lifecycle
from renderfarm.db import session_scope
from renderfarm.errors import InputError, NotFoundError
from renderfarm.models import JOB_FINAL, Attempt, Job, JobOutput, Purge, Task
from renderfarm.storage.keys import frames_prefix, job_prefix, node_prefix
from renderfarm.wire import ArchiveIntent, DeleteIntent, Reply

if TYPE_CHECKING:
    from redis import Redis
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from renderfarm.clock import Clock
    from renderfarm.manager.intake import Batch
    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.storage import Storage

log = logging.getLogger("renderfarm.manager")

PURGE_BATCH = 1000  # keys listed and deleted per storage request (S3's DeleteObjects limit)
PURGE_EVERY = 0.2  # seconds between batches while there is more to delete
PURGE_IDLE = 5.0  # seconds between looks for purges when there were none (a decision wakes it)
PURGE_RETRY = 10.0  # seconds before a batch that failed (storage down) is tried again
RETENTION_EVERY = 60.0  # seconds between looks for finished jobs older than the retention
RETENTION_BATCH = 100  # jobs archived per look
DAY = 86400.0


def _final(job: Job) -> bool:
    return job.state in {s.value for s in JOB_FINAL}


def apply_delete(session: Session, r: Redis, intent: DeleteIntent, batch: Batch, now: float, book: NodeBook,
                 grace: float) -> Reply:
    """Delete a finished job (with `cancel`, any job, cancelled first): its rows go now, its
    storage is recorded for the Purger. Deleting a deleted job changes nothing."""
    from renderfarm.manager.verbs import _take_back

    job = session.get(Job, intent.job)
    if job is None:
        if session.scalar(select(Purge.id).where(Purge.job_id == intent.job, Purge.reason == "delete").limit(1)):
            return Reply(ok=True, job_id=intent.job, state="deleted", changed=False)
        raise NotFoundError(f"job {intent.job!r}: no such job")
    live: list[Attempt] = []
    if not _final(job):
        if not intent.cancel:
            raise InputError(f"job {job.id} is {job.state}: cancel it first, or `farm delete --cancel`")
        live, _ = lifecycle.cancel_job(session, job, now)
        _take_back(r, book, live, revoke_running=True)
        batch.release(live)
    # Attempts stopped just now may still upload: their node prefixes wait out the grace.
    not_before = now + grace if live else now
    _record(session, job.id, "delete", job_prefix(job.id), now, not_before,
            keep=frames_prefix(job.id) if intent.keep_frames else None)
    for worker in _attempt_workers(session, job.id):
        _record(session, job.id, "delete", _node_job_prefix(worker, job.id), now, not_before)
    _delete_rows(session, job.id)
    batch.jobs.discard(job.id)
    log.info("job %s deleted (%s)%s", job.id, job.state, "; its frames kept" if intent.keep_frames else "")
    return Reply(ok=True, job_id=job.id, state="deleted", changed=True)


def apply_archive(session: Session, intent: ArchiveIntent, now: float) -> Reply:
    """Archive a finished job; archiving an archived one changes nothing."""
    job = session.get(Job, intent.job)
    if job is None:
        raise NotFoundError(f"job {intent.job!r}: no such job")
    if not _final(job):
        raise InputError(f"job {job.id} is {job.state}: only a done, failed or cancelled job is archived")
    changed = archive_job(session, job, now, "archive")
    return Reply(ok=True, job_id=job.id, state=job.state, changed=changed)


def archive_job(session: Session, job: Job, now: float, reason: str) -> bool:
    """Hide a finished job from default listings and record its attempts' data (all but their
    logs) for deletion; False if it was archived already."""
    if job.archived_at is not None:
        return False
    job.archived_at = now
    for worker in _attempt_workers(session, job.id):
        _record(session, job.id, reason, _node_job_prefix(worker, job.id), now, now, keep_logs=True)
    log.info("job %s archived (%s)", job.id, reason)
    return True


def apply_retention(session: Session, days: float, now: float) -> int:
    """Archive finished jobs that finished more than `days` ago (a batch at a time); returns how many."""
    old = session.scalars(
        select(Job).where(Job.archived_at.is_(None), Job.state.in_([s.value for s in JOB_FINAL]),
                          Job.finished_at < now - days * DAY)
        .order_by(Job.finished_at).limit(RETENTION_BATCH)
    ).all()
    for job in old:
        archive_job(session, job, now, "retention")
    return len(old)


def _node_job_prefix(worker: str, job_id: str) -> str:
    """Where a node's attempts of a job lie (see renderfarm.storage.keys.attempt_prefix)."""
    return f"{node_prefix(worker)}jobs/{job_id}/"


def _attempt_workers(session: Session, job_id: str) -> list[str]:
    return sorted(session.scalars(select(Attempt.worker).where(Attempt.job_id == job_id).distinct()))


def _record(session: Session, job_id: str, reason: str, prefix: str, now: float, not_before: float, *,
            keep: str | None = None, keep_logs: bool = False) -> None:
    if not prefix.endswith("/") or f"/{job_id}/" not in prefix:
        raise ValueError(f"purge prefix {prefix!r} is not one job's")  # a bug: never delete beyond a job
    session.add(Purge(job_id=job_id, reason=reason, prefix=prefix, keep=keep, keep_logs=keep_logs,
                      created_at=now, not_before=not_before))


def _delete_rows(session: Session, job_id: str) -> None:
    """The job's attempts, tasks and row (children first: foreign keys). Its webhook
    notifications stay: they are the record of what was said, and have no foreign key."""
    session.flush()
    session.execute(delete(JobOutput).where(JobOutput.job_id == job_id))
    session.execute(delete(Attempt).where(Attempt.job_id == job_id))
    session.execute(delete(Task).where(Task.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    for obj in [o for o in session.identity_map.values() if getattr(o, "job_id", None) == job_id
                or (isinstance(o, Job) and o.id == job_id)]:
        session.expunge(obj)


@dataclass(frozen=True)
class PurgeWork:
    """One batch to delete, as plain values (it runs in the Purger's thread)."""

    id: int
    prefix: str
    keep: str | None
    keep_keys: frozenset[str]


def purge_batch(storage: Storage, work: PurgeWork) -> tuple[int, bool]:
    """Delete up to PURGE_BATCH objects under the work's prefix (not those it keeps); returns
    how many, and whether the prefix holds nothing more to delete."""
    doomed = []
    for obj in storage.list(work.prefix):
        key = obj.key
        if not key.startswith(work.prefix):  # exact: a listing never reaches past its prefix
            continue
        if (work.keep and key.startswith(work.keep)) or key in work.keep_keys:
            continue
        doomed.append(key)
        if len(doomed) >= PURGE_BATCH:
            break
    if doomed:
        storage.delete(doomed)
    return len(doomed), len(doomed) < PURGE_BATCH


class Purger:
    """Deletes what purges record, one batch at a time in a thread of its own; the manager's
    loop calls `pump()` each round, which never waits on storage."""

    def __init__(self, engine: Engine, storage: Storage, clock: Clock) -> None:
        self.engine = engine
        self.storage = storage
        self.clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._running: tuple[PurgeWork, Future] | None = None
        self._next = 0.0

    def wake(self) -> None:
        """A decision recorded purges: look at once."""
        if self._running is None:
            self._next = 0.0

    def pump(self) -> None:
        """Record the batch that finished, if one did, and start the next one when due."""
        if self._running is not None:
            work, future = self._running
            if not future.done():
                return
            self._running = None
            try:
                deleted, finished = future.result()
            except Exception as e:  # storage down, most likely: the purge stays, tried again later
                log.warning("purge of %s postponed: %s", work.prefix, e)
                self._next = self.clock.monotonic() + PURGE_RETRY
                return
            self._note(work, deleted, finished)
        if self.clock.monotonic() < self._next:
            return
        work = self._next_work()
        if work is None:
            self._next = self.clock.monotonic() + PURGE_IDLE
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purge")
        self._running = (work, self._pool.submit(purge_batch, self.storage, work))
        self._next = self.clock.monotonic() + PURGE_EVERY

    def _next_work(self) -> PurgeWork | None:
        with session_scope(self.engine) as session:
            purge = session.scalars(select(Purge).where(Purge.done_at.is_(None), Purge.not_before <= self.clock.now())
                                    .order_by(Purge.id).limit(1)).first()
            if purge is None:
                return None
            keep_keys: frozenset[str] = frozenset()
            if purge.keep_logs:
                keep_keys = frozenset(session.scalars(select(Attempt.log_key).where(
                    Attempt.job_id == purge.job_id, Attempt.log_key.is_not(None))))
            return PurgeWork(purge.id, purge.prefix, purge.keep, keep_keys)

    def _note(self, work: PurgeWork, deleted: int, finished: bool) -> None:
        values = {"deleted": Purge.deleted + deleted}
        if finished:
            values["done_at"] = self.clock.now()
            self._next = 0.0  # the next purge at once
        with session_scope(self.engine) as session:
            session.execute(update(Purge).where(Purge.id == work.id).values(**values))
        if finished:
            log.info("purge of %s done", work.prefix)

    def close(self, wait: float = 0.0) -> None:
        """Stop; a batch in flight finishes in its thread (it is done again, harmlessly, if not recorded)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait > 0, cancel_futures=True)
            self._pool = None
        self._running = None
