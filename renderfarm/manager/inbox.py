"""The manager's inbox: each entry of the control and event streams parsed into its wire class,
applied on its own merits, and put aside as a dead letter when it cannot be.

A batch is applied in one transaction, the fast way. If that fails for any reason but Redis's,
the batch is applied again one entry per transaction: the entry that fails then is the one at
fault, and it alone is dead-lettered; the others are applied. An entry is never read again and
again: one that comes back a third time without having been applied (the manager died applying
it, or an error escaped the batch) is dead-lettered unread.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select

from renderfarm import keys
from renderfarm.db import session_scope
from renderfarm.errors import RenderFarmError, StorageError
from renderfarm.manager.intake import Batch, apply_event, apply_intent, may_meet_storage, promote_ahead
from renderfarm.models import Attempt, Job, Task, Worker
from renderfarm.wire import DeadLetter, Limits, Refused, Reply, Sealed, WireError, parse_event, parse_intent

if TYPE_CHECKING:
    from renderfarm.streams import Entry
    from renderfarm.wire import Message

log = logging.getLogger("renderfarm.manager")

MAX_DELIVERIES = 3  # an entry delivered this often without being applied is dead-lettered


@dataclass
class Outcome:
    """What applying a batch of entries left to do after its commit."""

    batch: Batch = field(default_factory=Batch)
    deferred: list[Entry] = field(default_factory=list)  # met a storage outage: applied later
    letters: list[DeadLetter] = field(default_factory=list)


class Inbox:
    """Parses and applies entries for one manager (its engine, storage, Redis and settings)."""

    def __init__(self, manager) -> None:
        self.m = manager
        self.seen: set[str] = set()  # nodes whose newest accepted event is not saved yet
        self.failures: dict[tuple[str, str], int] = {}  # (stream, id) -> batches that failed unexpectedly

    def parse(self, entry: Entry, now: float) -> tuple[Message | None, DeadLetter | None]:
        """The entry's message, or the dead letter it becomes (a reply goes to a control entry's
        sender when its request id can be read, so the CLI hears at once)."""
        if entry.raw is None:  # deleted while pending: nothing to apply or keep
            return None, None
        where = (entry.stream, entry.id)
        tries = max(entry.deliveries, self.failures.get(where, 0) + 1)
        if tries > MAX_DELIVERIES - 1 and (entry.deliveries >= MAX_DELIVERIES or where in self.failures):
            self.failures.pop(where, None)
            return None, self.letter(entry, f"delivered {tries} times without being applied", deliveries=tries)
        try:
            if entry.is_control:
                return parse_intent(entry.raw, limits=self.limits), None
            return self._unseal(entry), None
        except WireError as e:
            return None, self.letter(entry, str(e))
        except RenderFarmError as e:  # a cross-field check of the submission (frames, tiles, caps)
            return None, self.letter(entry, f"intent submit: {e}")

    def _unseal(self, entry: Entry) -> Message:
        """The event on a node's own stream, checked: sealed with that node's key, newer than
        the newest seen from it, and the node's own."""
        name = entry.node
        node = self.m.book.get(name)
        if node is None:
            raise WireError(f"refused: an event on the stream of {name!r}, which is not an enrolled node")
        sealed = Sealed.parse(entry.raw)
        if sealed.node != name:
            raise WireError(f"refused: sealed by {sealed.node!r}, on the stream of {name!r}")
        body = sealed.check(node.key)
        event = parse_event(body)
        if event.worker != name:
            raise WireError(f"refused: an event of {event.worker!r} sealed by {name!r}")
        newest = node.last_event_seq
        if not node.fresh(entry.id, sealed.seq):
            raise WireError(f"refused: a replayed event (sequence {sealed.seq}, newest seen {newest})")
        self.seen.add(name)
        usage = getattr(event, "usage", None)
        if usage is not None and usage.site != node.site:  # the site it was enrolled at counts
            event = event.model_copy(update={"usage": usage.model_copy(update={"site": node.site})})
        return event

    @property
    def limits(self) -> Limits:
        return Limits.of(self.m.settings)

    def letter(self, entry: Entry, reason: str, *, deliveries: int | None = None) -> DeadLetter:
        """A dead letter of an entry: on a node's stream, counted as that node's (only it can
        write there)."""
        if entry.node is not None:
            self.m.book.refused[entry.node] += 1
        return DeadLetter(
            source=entry.stream, entry=entry.id, reason=reason[:4000], raw=DeadLetter.excerpt(entry.raw),
            worker=entry.node, at=self.m.clock.now(), deliveries=deliveries or entry.deliveries,
        )

    def reply_to(self, entry: Entry, letter: DeadLetter) -> tuple[str, Reply] | None:
        """A dead control entry's request id and the error reply its sender waits for."""
        request_id = _lenient(entry.raw).get("request_id")
        if entry.is_control and isinstance(request_id, str) and re.fullmatch(r"[0-9a-f]{32}", request_id):
            return request_id, Reply(ok=False, error=letter.reason)
        return None

    # -- applying -------------------------------------------------------------------------------

    def apply(self, ready: list[tuple[Entry, Message]], now: float) -> Outcome:
        """Apply parsed entries: together in one transaction, or, if that fails, one by one."""
        import redis

        try:
            return self._together(ready, now)
        except (redis.RedisError, StorageError):
            raise
        except Exception:
            log.exception("a batch of %d entries failed; applying them one by one", len(ready))
            return self._one_by_one(ready, now)

    def _together(self, ready: list[tuple[Entry, Message]], now: float) -> Outcome:
        out = Outcome()
        with session_scope(self.m.engine) as session:
            events = [m for e, m in ready if not e.is_control]
            preload(session, events)
            promote_ahead(session, self.m.verifier, events, out.batch)
            for entry, message in ready:
                self._apply(session, entry, message, now, out)
            self.m.refresh_jobs(session, out.batch, now)
            self._save_nodes(session)
        return out

    def _one_by_one(self, ready: list[tuple[Entry, Message]], now: float) -> Outcome:
        import redis

        out = Outcome()
        for entry, message in ready:
            one = Outcome()
            try:
                with session_scope(self.m.engine) as session:
                    if not entry.is_control:
                        preload(session, [message])
                        promote_ahead(session, self.m.verifier, [message], one.batch)
                    self._apply(session, entry, message, now, one)
                    self.m.refresh_jobs(session, one.batch, now)
                    self._save_nodes(session)
            except redis.RedisError:
                raise
            except Exception as e:  # this entry is at fault: put it aside, apply the rest
                log.exception("entry %s of %s could not be applied; dead-lettered", entry.id, entry.stream)
                letter = self.letter(entry, f"could not be applied: {type(e).__name__}: {e}")
                out.letters.append(letter)
                if entry.is_control:
                    out.batch.replies[message.request_id] = Reply(
                        ok=False, error=f"the manager could not apply this request ({type(e).__name__}); "
                                        "it is kept as a dead letter (`farm dead-letters`)")
                continue
            out.batch.merge(one.batch)
            out.deferred += one.deferred
            out.letters += one.letters
        return out

    def _save_nodes(self, session) -> None:
        """The newest event accepted from each node, and the refusals counted, with the batch."""
        seen, self.seen = sorted(self.seen), set()
        self.m.book.save(session, seen)

    def _apply(self, session, entry: Entry, message: Message, now: float, out: Outcome) -> None:
        m = self.m
        if isinstance(message, Refused):
            out.letters.append(DeadLetter(
                source=keys.queue_name(message.worker), entry=message.rq_id, reason=f"refused: {message.reason}",
                raw=message.raw, worker=message.worker, at=now))
            return
        if not entry.is_control and not may_meet_storage(message, out.batch):
            # Most events (started, progress, and done events promoted ahead) cannot meet a
            # storage outage: a savepoint each would cost a flush each.
            why = apply_event(session, m.settings, m.storage, message, out.batch, now)
            if why:
                out.letters.append(self.letter(entry, f"refused: {why}"))
            return
        savepoint = session.begin_nested()
        try:
            if entry.is_control:
                apply_intent(session, m.settings, m.r, message, out.batch, now, m.book)
                why = None
            else:
                why = apply_event(session, m.settings, m.storage, message, out.batch, now)
            savepoint.commit()
        except StorageError as e:  # only transient ones come through apply_event
            savepoint.rollback()
            out.deferred.append(entry)
            log.warning("storage unreachable (%s); event deferred", e)
            return
        if why:
            out.letters.append(self.letter(entry, f"refused: {why}"))


def _lenient(raw: bytes | None) -> dict:
    """A few fields of an entry that failed its contract, read as well as they can be."""
    if not raw or len(raw) > 1 << 20:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


_PRELOAD = (  # built once: building it cost more than running it
    select(Attempt, Task, Job, Worker)
    .join(Task, Task.id == Attempt.task_id)
    .join(Job, Job.id == Attempt.job_id)
    .outerjoin(Worker, Worker.name == Attempt.worker)
    .where(Attempt.id.in_(bindparam("ids", expanding=True)))
)


def preload(session, events: list) -> None:
    """Load the attempts, tasks, jobs and workers a batch of events names, in one query, so that
    applying each event finds them in the session instead of querying one by one."""
    ids = {e.attempt_id for e in events if getattr(e, "attempt_id", None) is not None}
    if not ids:
        return
    rows = session.execute(_PRELOAD, {"ids": list(ids)}).all()
    # The session's identity map holds objects weakly: keep them for the batch's duration.
    session.info["preloaded"] = [obj for row in rows for obj in row if obj is not None]
