"""The attempt sweep: deleting what lies under attempt prefixes (`nodes/N/jobs/J/T/A/...`) that no
attempt needs, a page of keys at a time, in a thread of its own.

What an attempt needs: everything, while it is live (queued or running: its outputs may be
uploading, or waiting for the manager to verify them); once it is final (done and promoted,
failed, cancelled, lost) only the log the database records for it (`farm log` reads it). An
object under an attempt the database does not know (its job deleted, a prefix no order named), or
under an attempt given to another node, is needed by none. So a manager killed before it deleted
promoted copies, a superseded worker's late upload and the uploads of an attempt declared lost
all go. Final states never change back, and a done attempt is final only once its promotion is
committed, so what the sweep reads cannot turn stale under it; the grace period (objects younger
than it are left alone) is a second guard, for an upload landing while its attempt is decided.
Only `nodes/` is listed: `jobs/` (frames, tiles) and `scenes/` are never touched.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from renderfarm.db import session_scope
from renderfarm.errors import StorageError
from renderfarm.models import ATTEMPT_ACTIVE, Attempt, Task

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from renderfarm.storage import ObjectInfo, Storage

log = logging.getLogger("renderfarm.manager")

NODES = "nodes/"
PAGE = 1000  # keys listed (and at most deleted) per round
SWEEP_EVERY = 5.0  # seconds between rounds while a pass is under way (at most 200 keys a second)
PASS_EVERY = 600.0  # seconds between the end of one pass over `nodes/` and the start of the next
_ATTEMPT_KEY = re.compile(r"nodes/(?P<node>[^/]+)/jobs/(?P<job>[^/]+)/(?P<task>\d+)/(?P<attempt>\d+)/.+")


@dataclass(frozen=True)
class AttemptRef:
    """Which attempt an object lies under, by its key."""

    node: str
    job_id: str
    task_index: int
    number: int


@dataclass(frozen=True)
class Known:
    """What the database says of one attempt: its node, whether it is live, its recorded log."""

    worker: str
    live: bool
    log_key: str | None


def attempt_of(key: str) -> AttemptRef | None:
    """The attempt an object's key lies under; None for a key that is no attempt's."""
    m = _ATTEMPT_KEY.fullmatch(key)
    if m is None:
        return None
    return AttemptRef(m["node"], m["job"], int(m["task"]), int(m["attempt"]))


def unneeded(objects: Iterable[ObjectInfo], known: dict[tuple[str, int, int], Known], *, now: float,
             grace: float) -> list[str]:
    """The keys of `objects` no attempt needs (see the module's docstring), given what the
    database says of their attempts (by job, task index and attempt number). An object of unknown
    age, or younger than `grace` seconds, is kept; so is any key that is no attempt's."""
    out = []
    for obj in objects:
        ref = attempt_of(obj.key)
        if ref is None or obj.modified is None or now - obj.modified < grace:
            continue
        attempt = known.get((ref.job_id, ref.task_index, ref.number))
        if attempt is not None and attempt.worker == ref.node and (attempt.live or obj.key == attempt.log_key):
            continue
        out.append(obj.key)
    return out


class AttemptSweep:
    """Goes over `nodes/` a page at a time, resuming after the last key it saw, and deletes what
    no attempt needs. `round()` is one page; `start_round()` runs one in the sweep's thread when
    it is due, so the manager's loop never waits on a listing."""

    def __init__(self, engine: Engine, storage: Storage, grace: float) -> None:
        self.engine = engine
        self.storage = storage
        self.grace = grace
        self.after = ""  # the last key seen in this pass; "" at the start of one
        self.deleted = 0  # in all, since this manager started
        self._due = 0.0
        self._thread: threading.Thread | None = None

    def start_round(self, now: float, monotonic: float) -> bool:
        """Start a round in the background if one is due and none is running; True if started."""
        if monotonic < self._due or (self._thread is not None and self._thread.is_alive()):
            return False
        self._due = monotonic + SWEEP_EVERY
        self._thread = threading.Thread(target=self._round_logged, args=(now, monotonic), name="attempt-sweep",
                                        daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the round running in the background, if any."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _round_logged(self, now: float, monotonic: float) -> None:
        try:
            if self.round(now):
                self._due = monotonic + PASS_EVERY
        except StorageError as e:
            log.warning("attempt sweep postponed: %s", e)
        except Exception:  # a bug must not kill the thread silently, nor the manager
            log.exception("attempt sweep failed")

    def round(self, now: float) -> bool:
        """List one page of `nodes/` after the last key seen and delete what no attempt needs;
        True when the page ended the pass (the next round starts from the beginning)."""
        page = []
        for obj in self.storage.list(NODES, after=self.after):
            page.append(obj)
            if len(page) == PAGE:
                break
        # Read after listing: an attempt is in the database before any of its objects exist.
        doomed = unneeded(page, self._known(page), now=now, grace=self.grace)
        if doomed:
            self.storage.delete(doomed)
            self.deleted += len(doomed)
            log.info("attempt sweep: deleted %d object(s) no attempt needs", len(doomed))
        finished = len(page) < PAGE
        self.after = "" if finished else page[-1].key
        return finished

    def full_pass(self, now: float) -> None:
        """Sweep all of `nodes/` from the start, now (in the caller's thread)."""
        self.after = ""
        while not self.round(now):
            pass

    def _known(self, page: list[ObjectInfo]) -> dict[tuple[str, int, int], Known]:
        refs = [ref for ref in map(attempt_of, (o.key for o in page)) if ref is not None]
        if not refs:
            return {}
        jobs = sorted({r.job_id for r in refs})
        indices = sorted({r.task_index for r in refs})
        live = {s.value for s in ATTEMPT_ACTIVE}
        with session_scope(self.engine) as session:
            rows = session.execute(
                select(Attempt.job_id, Task.index, Attempt.number, Attempt.worker, Attempt.state, Attempt.log_key)
                .join(Task, Task.id == Attempt.task_id)
                .where(Attempt.job_id.in_(jobs), Task.index.in_(indices))
            ).all()
        return {(job, index, number): Known(worker, state in live, log_key)
                for job, index, number, worker, state, log_key in rows}
