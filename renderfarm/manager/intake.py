"""Applying what arrives on the streams: intents from the CLI and events from workers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderfarm import lifecycle
from renderfarm.errors import RenderFarmError, StorageError, VerificationError
from renderfarm.manager.expected import expected_outputs, frame_tile_keys
from renderfarm.manager.submission import submit
from renderfarm.manager.verbs import VERBS, apply_verb
from renderfarm.models import Attempt, Job, Task, TaskKind

if TYPE_CHECKING:
    from concurrent.futures import Future

    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.storage import Storage

log = logging.getLogger(__name__)
PROMOTE_THREADS = 16  # storage requests in flight at once for a batch's done events



@dataclass(frozen=True)
class Promotion:
    """The outcome of verifying and promoting one attempt's outputs ahead of applying its event:
    the attempt's own copies to delete, or the error to apply."""

    final_keys: list[str]
    leftovers: list[str] | None = None
    error: Exception | None = None


@dataclass
class Batch:
    """What one transaction of the manager touched, to act on after it commits."""

    replies: dict[str, dict] = field(default_factory=dict)
    jobs: set[str] = field(default_factory=set)
    released: list[tuple[int, int]] = field(default_factory=list)  # (task, attempt) leases to drop
    left_workers: list[str] = field(default_factory=list)  # queues to empty
    delete_keys: list[str] = field(default_factory=list)  # attempt copies of promoted frames
    won: list[tuple[int, int]] = field(default_factory=list)  # (task, attempt) leases to age out
    # Promotions started ahead for the batch's done events, all at once (attempt id -> outcome
    # to come): they run while the events before them are applied.
    promoted: dict[int, Future[Promotion]] = field(default_factory=dict)

    def promotion(self, attempt_id: int, *, take: bool = False) -> Promotion | None:
        """The outcome of the attempt's promotion started ahead, once it is finished; None if
        none was started (or it was taken)."""
        future = self.promoted.pop(attempt_id, None) if take else self.promoted.get(attempt_id)
        return future.result() if future is not None else None

    def release(self, attempts) -> None:
        """Drop these attempts' leases after commit (only where they still hold them)."""
        for a in attempts:
            self.released.append((a.task_id, a.id))
            self.jobs.add(a.job_id)


def apply_intent(session: Session, settings: Settings, r, doc: dict[str, Any], batch: Batch) -> None:
    request_id = str(doc.get("request_id", ""))
    kind = doc.get("type")
    body = doc.get("body") if isinstance(doc.get("body"), dict) else {}
    try:
        if kind == "submit":
            reply = {"ok": True, "job_id": submit(session, settings, body)}
        elif kind in VERBS:
            reply = apply_verb(session, r, kind, body, batch)
        else:
            reply = {"ok": False, "error": f"unknown intent {kind!r}"}
    except RenderFarmError as e:
        reply = {"ok": False, "error": str(e)}
    if request_id:
        batch.replies[request_id] = reply


def apply_event(session: Session, settings: Settings, storage: Storage, doc: dict[str, Any], batch: Batch) -> None:
    """Apply one worker event. Raises a transient StorageError when storage is unreachable: the
    caller rolls this event back and applies it again later."""
    kind = doc.get("type")
    now = time.time()
    if kind == "bye":
        worker = str(doc.get("worker", ""))
        lost = lifecycle.worker_offline(session, worker, now, "worker left")
        batch.left_workers.append(worker)
        batch.release(lost)
        log.info("worker %s left; %d unfinished attempt(s) handed back", worker, len(lost))
        return
    try:
        attempt = session.get(Attempt, int(doc.get("attempt_id")))
    except (TypeError, ValueError):
        attempt = None
    if attempt is None or attempt.worker != doc.get("worker"):
        log.warning("ignoring %s event for unknown attempt %r from %r", kind, doc.get("attempt_id"), doc.get("worker"))
        return
    batch.jobs.add(attempt.job_id)
    if isinstance(doc.get("usage"), dict):
        _record_usage(session, settings, attempt, doc["usage"])
    if kind == "started":
        lifecycle.start_attempt(session, attempt, float(doc.get("ts", now)))
    elif kind == "progress":
        lifecycle.note_progress(session, attempt, float(doc.get("progress", 0.0)))
    elif kind == "done":
        attempt_done(session, storage, attempt, list(doc.get("outputs") or []), doc.get("log_key"), now, batch,
                     _started_ts(doc))
    elif kind == "failed":
        if attempt.state == "queued":  # a short attempt sends no started event
            lifecycle.start_attempt(session, attempt, _started_ts(doc) or now)
        job = session.get(Job, attempt.job_id)
        error = str(doc.get("error") or "failed")
        live = attempt.state in ("queued", "running")
        lifecycle.fail_attempt(session, attempt, now, error, doc.get("log_key"), job.max_attempts)
        batch.release([attempt])
        bad_tiles = doc.get("bad_tiles")
        if live and isinstance(bad_tiles, list) and all(isinstance(t, int) for t in bad_tiles):
            reopened = lifecycle.reopen_tiles(session, session.get(Task, attempt.task_id), bad_tiles)
            log.info("assembly %s: tile(s) %s rendered again", _label(session, attempt), [t.tile for t in reopened])
        log.info("attempt %s failed on %s: %s", _label(session, attempt), attempt.worker, error)
    elif kind == "released":
        lifecycle.lose_attempt(session, attempt, now, f"handed back: {doc.get('reason') or 'worker stopping'}")
        batch.release([attempt])
        log.info("attempt %s handed back by %s", _label(session, attempt), attempt.worker)
    else:
        log.warning("ignoring event of unknown type %r", kind)


def attempt_done(session: Session, storage: Storage, attempt: Attempt, outputs: list, log_key: str | None,
                 now: float, batch: Batch, started_ts: float | None = None) -> None:
    """An attempt says it rendered everything: verify, promote, commit the task, exactly once."""
    from renderfarm.manager.verify import verify_and_promote

    ahead = batch.promotion(attempt.id, take=True)
    if attempt.state == "queued":
        # A short task sends no started event: its done event says when it started.
        lifecycle.start_attempt(session, attempt, started_ts if started_ts is not None else now)
    current = attempt.state == "running" and lifecycle.is_current(session, attempt)
    if not current:
        if attempt.state == "running":
            # Checked before promotion: only the task's live attempt may write its final frames.
            lifecycle.discard_attempt(session, attempt, now, "another attempt finished first or superseded it")
            batch.release([attempt])
        if ahead is not None and ahead.error is None and session.get(Task, attempt.task_id).state != "done":
            # Promoted ahead while it was live, then an earlier entry of this batch took the task
            # from it (a cancel): its frames must not stay as if committed.
            batch.delete_keys += ahead.final_keys
        return
    job = session.get(Job, attempt.job_id)
    task = session.get(Task, attempt.task_id)
    try:
        if ahead is None:
            leftovers = verify_and_promote(
                storage, outputs, job_id=job.id, task_index=task.index, attempt=attempt.number,
                expected=expected_outputs(job, task), fmt=job.output_format,
            )
        elif ahead.error is not None:
            raise ahead.error
        else:
            leftovers = ahead.leftovers
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
    lifecycle.complete_attempt(session, attempt, now, log_key)
    if task.kind == TaskKind.ASSEMBLE.value and not job.keep_tiles:
        # Only now that the frame is committed are its tiles of no further use.
        batch.delete_keys += frame_tile_keys(job, task.first_frame)
    # The winner keeps the lease for a while: a stale attempt of the same task (a worker that
    # was frozen, not dead) sees another attempt holds it and stops its render.
    batch.won.append((attempt.task_id, attempt.id))
    batch.jobs.add(attempt.job_id)
    batch.delete_keys += leftovers


def _started_ts(doc: dict) -> float | None:
    usage = doc.get("usage")
    value = usage.get("started_ts") if isinstance(usage, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _record_usage(session: Session, settings: Settings, attempt: Attempt, usage: dict) -> None:
    from renderfarm.errors import ConfigError
    from renderfarm.sites import Site, account

    name = str(usage.get("site") or "local")[:64]
    try:
        site = settings.site(name)
    except ConfigError:  # the worker names a site this manager's farm.toml does not: no price known
        log.warning("attempt %s: site %r is not configured here; its usage is counted at no price", attempt.id, name)
        site = Site(name)

    def number(key: str) -> float | None:
        value = usage.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None

    wall, cpu = number("wall") or 0.0, number("cpu") or 0.0
    result = account(site, wall_seconds=wall, cpu_seconds=cpu, watts=number("watts"),
                     watts_per_core=number("watts_per_core"))
    lifecycle.record_usage(session, attempt, site.name, result, wall=wall, cpu=cpu)


def _reject(session: Session, attempt: Attempt, job: Job, task: Task, now: float, log_key: str | None, e: Exception) -> None:
    error = f"output rejected: {e}"
    lifecycle.fail_attempt(session, attempt, now, error, log_key, job.max_attempts)
    log.warning("attempt %s:%d/%d %s", job.id, task.index, attempt.number, error)


def _label(session: Session, attempt: Attempt) -> str:
    task = session.get(Task, attempt.task_id)
    return f"{attempt.job_id}:{task.index}/{attempt.number}"


def may_meet_storage(doc: dict[str, Any], batch: Batch) -> bool:
    """Whether applying this event may call storage, or raise a transient StorageError: only a
    done event can, unless its promotion was settled ahead (by `promote_ahead`)."""
    if doc.get("type") != "done":
        return False
    try:
        ahead = batch.promotion(int(doc.get("attempt_id")))
    except (TypeError, ValueError):
        return False  # ignored as an unknown attempt
    return ahead is None or (isinstance(ahead.error, StorageError) and ahead.error.transient)


def promote_ahead(session: Session, storage: Storage, entries: list[tuple[str, str, dict]], batch: Batch) -> None:
    """Start verifying and promoting the outputs of every done event in a batch at once, before
    applying the events one by one: each promotion waits on storage (a conditional copy per
    frame), and doing them together, while the events before them are applied, rather than in
    turn is what lets one manager keep up with a big farm. Only an attempt that is its task's
    live attempt when the batch starts is promoted (as applying its event alone would); applying
    its done event waits for the outcome (`batch.promotion`)."""
    from concurrent.futures import ThreadPoolExecutor

    from renderfarm.manager.verify import verify_and_promote

    calls = {}
    for _stream, _entry, doc in entries:
        if doc.get("type") != "done":
            continue
        try:
            attempt = session.get(Attempt, int(doc.get("attempt_id")))
        except (TypeError, ValueError):
            continue
        if attempt is None or attempt.worker != doc.get("worker") or attempt.id in calls:
            continue
        if attempt.state not in ("queued", "running") or not lifecycle.is_current(session, attempt):
            continue
        job, task = session.get(Job, attempt.job_id), session.get(Task, attempt.task_id)
        # Plain values only: the call runs in another thread while this one uses the session.
        where = {"job_id": job.id, "task_index": task.index, "attempt": attempt.number,
                 "expected": expected_outputs(job, task), "fmt": job.output_format}
        outputs = list(doc.get("outputs") or [])

        def call(where=where, outputs=outputs) -> Promotion:
            keys = [e.final_key for e in where["expected"]]
            try:
                return Promotion(keys, leftovers=verify_and_promote(storage, outputs, **where))
            except (StorageError, VerificationError) as e:
                return Promotion(keys, error=e)

        calls[attempt.id] = call
    if not calls:
        return
    global _AHEAD
    if _AHEAD is None:
        _AHEAD = ThreadPoolExecutor(max_workers=PROMOTE_THREADS, thread_name_prefix="promote-ahead")
    batch.promoted = {attempt_id: _AHEAD.submit(call) for attempt_id, call in calls.items()}


_AHEAD = None
