"""Applying what arrives on the streams: typed intents from the CLI and typed events from workers.

Each function routes one message to the state machine (renderfarm.lifecycle), which decides. An
event naming an attempt that does not exist, or one its sender was not given, is refused: the
caller keeps it as a dead letter with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from renderfarm import lifecycle
from renderfarm.errors import RenderFarmError, StorageError, VerificationError
from renderfarm.manager.expected import expected_outputs, frame_tile_keys
from renderfarm.manager.removal import apply_archive, apply_delete
from renderfarm.manager.submission import submit, submit_openjd
from renderfarm.manager.verbs import apply_hold, apply_task_verb, apply_verb
from renderfarm.models import Attempt, Job, Task, TaskKind
from renderfarm.wire import (
    ArchiveIntent,
    Bye,
    DeleteIntent,
    Done,
    Failed,
    NodeAddIntent,
    NodeRevokeIntent,
    OpenJDSubmitIntent,
    Progress,
    Released,
    Reply,
    Started,
    SubmitIntent,
    TaskIntent,
    WorkerHoldIntent,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.manager.verifier import Verifier
    from renderfarm.storage import Storage
    from renderfarm.wire import Event, Intent, Output, Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    """The outcome of verifying and promoting one attempt's outputs ahead of applying its event:
    the attempt's own copies to delete, or the error to apply."""

    final_keys: list[str]
    leftovers: list[str] | None = None
    error: Exception | None = None
    committed: list = field(default_factory=list)  # an OpenJD task's files (openjd_outputs.Committed)


@dataclass
class Batch:
    """What one transaction of the manager touched, to act on after it commits."""

    replies: dict[str, Reply] = field(default_factory=dict)
    jobs: set[str] = field(default_factory=set)
    released: list[tuple[int, int]] = field(default_factory=list)  # (task, attempt) leases to drop
    abandoned: list[tuple[str, int]] = field(default_factory=list)  # (worker, attempt): RQ jobs no worker will finish
    left_workers: list[str] = field(default_factory=list)  # queues to empty
    delete_keys: list[str] = field(default_factory=list)  # attempt copies of promoted frames
    purges: bool = False  # storage to delete was recorded (renderfarm.manager.removal)
    # Promotions started ahead for the batch's done events, all at once (attempt id -> outcome
    # to come): they run while the events before them are applied.
    promoted: dict[int, Future[Promotion]] = field(default_factory=dict)

    def promotion(self, attempt_id: int, *, take: bool = False) -> Promotion | None:
        """The outcome of the attempt's promotion started ahead, once it is finished; None if
        none was started (or it was taken)."""
        future = self.promoted.pop(attempt_id, None) if take else self.promoted.get(attempt_id)
        return future.result() if future is not None else None

    def release(self, attempts, *, abandoned: bool = False) -> None:
        """Drop these attempts' leases after commit (only where they still hold them); with
        `abandoned` (their worker left or vanished), their RQ jobs too, which no worker will
        finish (RQ drops a job its worker finished itself)."""
        for a in attempts:
            self.released.append((a.task_id, a.id))
            self.jobs.add(a.job_id)
            if abandoned:
                self.abandoned.append((a.worker, a.id))

    def merge(self, other: Batch) -> None:
        """Take in what another batch (one entry's, applied on its own) touched."""
        self.replies.update(other.replies)
        self.jobs |= other.jobs
        self.released += other.released
        self.abandoned += other.abandoned
        self.left_workers += other.left_workers
        self.delete_keys += other.delete_keys
        self.purges |= other.purges


def apply_intent(session: Session, settings: Settings, r, intent: Intent, batch: Batch, now: float,
                 book: NodeBook) -> None:
    """Apply one intent; its reply goes out after commit. A refusal (no such job, a submission
    the farm's caps refuse) is the reply, not an error."""
    from renderfarm.manager import nodebook

    try:
        if isinstance(intent, SubmitIntent):
            job_id, created = submit(session, settings, intent, now)
            reply = Reply(ok=True, job_id=job_id, changed=created)
        elif isinstance(intent, OpenJDSubmitIntent):
            job_id, created = submit_openjd(session, settings, intent, now)
            reply = Reply(ok=True, job_id=job_id, changed=created)
        elif isinstance(intent, NodeAddIntent):
            reply = nodebook.enroll(session, settings, r, book, intent, now)
        elif isinstance(intent, NodeRevokeIntent):
            reply = nodebook.revoke(session, settings, r, book, intent, batch, now)
        elif isinstance(intent, WorkerHoldIntent):
            reply = apply_hold(session, r, intent, batch, now, book)
        elif isinstance(intent, TaskIntent):
            reply = apply_task_verb(session, r, intent, batch, now, book)
        elif isinstance(intent, DeleteIntent):
            reply = apply_delete(session, r, intent, batch, now, book, grace=2 * settings.heartbeat_ttl)
            batch.purges = True
        elif isinstance(intent, ArchiveIntent):
            reply = apply_archive(session, intent, now)
            batch.purges = True
        else:
            reply = apply_verb(session, r, intent, batch, now, book)
    except RenderFarmError as e:
        reply = Reply(ok=False, error=str(e)[:4000])
    batch.replies[intent.request_id] = reply


def apply_event(session: Session, settings: Settings, storage: Storage, event: Event, batch: Batch,
                now: float) -> str | None:
    """Apply one worker event at the manager's time `now`. Returns why it is refused (an attempt
    that does not exist, or that its sender was not given), else None. Raises a transient
    StorageError when storage is unreachable: the caller rolls this event back and applies it
    again later."""
    if isinstance(event, Bye):
        lost = lifecycle.worker_offline(session, event.worker, now, "worker left")
        batch.left_workers.append(event.worker)
        batch.release(lost, abandoned=True)
        log.info("worker %s left; %d unfinished attempt(s) handed back", event.worker, len(lost))
        return None
    attempt = session.get(Attempt, event.attempt_id)
    if attempt is None:
        return f"{event.type} event from {event.worker} for attempt {event.attempt_id}, which does not exist"
    if attempt.worker != event.worker:
        return f"{event.type} event from {event.worker} for attempt {attempt.id}, which was given to {attempt.worker}"
    batch.jobs.add(attempt.job_id)
    usage = getattr(event, "usage", None)
    if usage is not None:
        _record_usage(session, settings, attempt, usage, now)
    started_at = now - usage.wall if usage is not None else None
    if isinstance(event, Started):
        lifecycle.start_attempt(session, attempt, now - event.elapsed)
    elif isinstance(event, Progress):
        lifecycle.note_progress(session, attempt, event.progress, event.status)
    elif isinstance(event, Done):
        attempt_done(session, storage, attempt, event.outputs, event.log_key, now, batch, started_at)
    elif isinstance(event, Failed):
        job = session.get(Job, attempt.job_id)
        live = lifecycle.receive_failure(session, attempt, now, event.error, event.log_key, job.max_attempts,
                                         started_at)
        batch.release([attempt])
        if live and event.bad_tiles:
            reopened = lifecycle.reopen_tiles(session, session.get(Task, attempt.task_id), list(event.bad_tiles))
            log.info("assembly %s: tile(s) %s rendered again", _label(session, attempt), [t.tile for t in reopened])
        log.info("attempt %s failed on %s: %s", _label(session, attempt), attempt.worker, event.error)
    elif isinstance(event, Released):
        lifecycle.lose_attempt(session, attempt, now, f"handed back: {event.reason or 'worker stopping'}")
        batch.release([attempt])
        log.info("attempt %s handed back by %s", _label(session, attempt), attempt.worker)
    return None


def attempt_done(session: Session, storage: Storage, attempt: Attempt, outputs: tuple[Output, ...] | list[Output],
                 log_key: str | None, now: float, batch: Batch, started_at: float | None = None) -> None:
    """An attempt says it rendered everything: verify, promote, commit the task, exactly once."""
    ahead = batch.promotion(attempt.id, take=True)
    if not lifecycle.receive_done(session, attempt, now, started_at):
        if ahead is not None and ahead.error is None and not lifecycle.task_done(session, attempt):
            # Promoted ahead while it was live, then an earlier entry of this batch took the task
            # from it (a cancel): its frames must not stay as if committed.
            batch.delete_keys += ahead.final_keys
        return
    job = session.get(Job, attempt.job_id)
    task = session.get(Task, attempt.task_id)
    try:
        if ahead is None:
            from renderfarm.manager.verifier import verify

            leftovers, committed = verify(storage, list(outputs), _where(job, task, attempt))
        elif ahead.error is not None:
            raise ahead.error
        else:
            leftovers, committed = ahead.leftovers, ahead.committed
    except StorageError as e:
        if e.transient:
            raise
        _reject(session, attempt, job, task, now, log_key, e)
        batch.release([attempt])
        return
    except VerificationError as e:
        _reject(session, attempt, job, task, now, log_key, e)
        batch.release([attempt])
        return
    if lifecycle.complete_attempt(session, attempt, now, log_key) and task.kind == TaskKind.OPENJD.value:
        from renderfarm.manager.openjd_outputs import record

        record(session, job.id, task, committed, now)
    if task.kind == TaskKind.ASSEMBLE.value and not job.keep_tiles:
        # Only now that the frame is committed are its tiles of no further use.
        batch.delete_keys += frame_tile_keys(job, task.first_frame)
    batch.release([attempt])
    batch.delete_keys += leftovers


def _where(job: Job, task: Task, attempt: Attempt) -> dict:
    """What verify_and_promote (or, for an OpenJD task, verify_and_promote_files) needs to know
    of an attempt, as plain values."""
    if task.kind == TaskKind.OPENJD.value:
        return {"node": attempt.worker, "job_id": job.id, "task_index": task.index, "attempt": attempt.number,
                "step": task.step}
    return {"node": attempt.worker, "job_id": job.id, "task_index": task.index, "attempt": attempt.number,
            "name": job.name,
            "expected": expected_outputs(job, task), "fmt": job.output_format}


def _record_usage(session: Session, settings: Settings, attempt: Attempt, usage: Usage, now: float) -> None:
    """Charge an attempt's usage at its site's prices in force in the middle of its render (the
    band it rendered in, where the site has bands)."""
    from renderfarm.errors import ConfigError
    from renderfarm.sites import Site, account

    try:
        site = settings.site(usage.site)
    except ConfigError:  # the worker names a site this manager's farm.toml does not: no price known
        log.warning("attempt %s: site %r is not configured here; its usage is counted at no price",
                    attempt.id, usage.site)
        site = Site(usage.site)
    result = account(site, wall_seconds=usage.wall, cpu_seconds=usage.cpu, watts=usage.watts,
                     watts_per_core=usage.watts_per_core, at=now - usage.wall / 2)
    lifecycle.record_usage(session, attempt, site.name, result, wall=usage.wall, cpu=usage.cpu)


def _reject(session: Session, attempt: Attempt, job: Job, task: Task, now: float, log_key: str | None,
            e: Exception) -> None:
    error = f"output rejected: {e}"
    lifecycle.fail_attempt(session, attempt, now, error, log_key, job.max_attempts)
    log.warning("attempt %s:%d/%d %s", job.id, task.index, attempt.number, error)


def _label(session: Session, attempt: Attempt) -> str:
    task = session.get(Task, attempt.task_id)
    return f"{attempt.job_id}:{task.index}/{attempt.number}"


def may_meet_storage(event: Event, batch: Batch) -> bool:
    """Whether applying this event may call storage, or raise a transient StorageError: only a
    done event can, unless its promotion was settled ahead (by `promote_ahead`)."""
    if not isinstance(event, Done):
        return False
    ahead = batch.promotion(event.attempt_id)
    return ahead is None or (isinstance(ahead.error, StorageError) and ahead.error.transient)


def promote_ahead(session: Session, verifier: Verifier, events: list[Event], batch: Batch) -> None:
    """Start verifying and promoting the outputs of every done event in a batch at once, before
    applying the events one by one: each promotion waits on storage (a read back and a write
    per frame), and doing them together, while the events before them are applied, rather than
    in turn is what lets one manager keep up with a big farm (renderfarm.manager.verifier says
    where they run). Only an attempt that is its task's live attempt when the batch starts is
    promoted (as applying its event alone would); applying its done event waits for the
    outcome (`batch.promotion`)."""
    work: dict[int, tuple[dict, list[Output]]] = {}
    for event in events:
        if not isinstance(event, Done) or event.attempt_id in work:
            continue
        attempt = session.get(Attempt, event.attempt_id)
        if attempt is None or attempt.worker != event.worker or not lifecycle.may_promote(session, attempt):
            continue
        # Plain values only: the check runs in another thread or process while this one uses the session.
        work[attempt.id] = (_where(session.get(Job, attempt.job_id), session.get(Task, attempt.task_id), attempt),
                            list(event.outputs))
    if not work:
        return
    batch.promoted = verifier.submit(work)


