"""The manager: the farm's only database writer. It applies intents and worker events, keeps
every live worker's queue filled, reaps dead workers, reconciles against Redis, finishes jobs."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import select

from renderfarm import keys, lifecycle, presence, queues, streams
from renderfarm.capabilities import worker_view
from renderfarm.clock import Clock
from renderfarm.db import make_engine, session_scope, upgrade
from renderfarm.errors import StorageError
from renderfarm.localfarm.s3log import S3Watch
from renderfarm.manager.dispatch import FairShare, OrderSealer, outranked_prefetches, plan_handouts
from renderfarm.manager.inbox import Inbox
from renderfarm.manager.intake import Batch
from renderfarm.manager.leader import LeaderLock
from renderfarm.manager.nodebook import AclWatch, NodeBook, restore_all, restore_missing
from renderfarm.manager.notifier import Notifier
from renderfarm.manager.planner import PLAN_EVERY, plan_deadlines
from renderfarm.manager.reconcile import SWEEP_EVERY, Reconciler
from renderfarm.manager.removal import RETENTION_EVERY, Purger, apply_retention
from renderfarm.manager.sitewatch import SitesWatch
from renderfarm.manager.sleeper import Sleeper
from renderfarm.manager.sweep import AttemptSweep
from renderfarm.manager.verbs import _take_back
from renderfarm.manager.verifier import Verifier, default_processes
from renderfarm.models import HOLD_DRAIN, Job, Node, Worker, WorkerState
from renderfarm.redisconn import connect
from renderfarm.scheduling import WorkerView
from renderfarm.states import WORKER_SLEEPING
from renderfarm.storage import open_storage
from renderfarm.wire import DeadLetter, Heartbeat, Progress, Sealed, Started, WireError

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.streams import Entry

log = logging.getLogger("renderfarm.manager")

LEADER_TTL = 10.0
LEADER_RENEW = 2.0
WORKER_REFRESH = 5.0  # how often a live worker's row (last seen) is written
REAP_EVERY = 1.0  # seconds between reaper sweeps
DEFER_RETRY = 2.0  # seconds before an event deferred by a storage outage is tried again
REBALANCE_EVERY = 1.0  # seconds between looks for prefetched work that more urgent work outranks
DELETE_EVERY = 5.0  # seconds between bulk deletes of storage copies nothing needs any more
DELETE_IDLE_EVERY = 1.0  # the same while the manager is idle
ACL_WATCH_EVERY = 2.0  # seconds between reads of what Valkey refused the nodes
DISPATCH_EVERY = 0.5  # seconds between dispatch rounds when nothing has happened that frees a slot
class BadBeat(NamedTuple):
    """A node's heartbeat that breaks its contract or its seal."""

    name: str
    raw: bytes | None
    reason: str


BAD_BEAT_MEMORY = 600.0  # seconds a worker's bad heartbeat is remembered (one dead letter in that time)
QUIET_EVENTS = (Started, Progress)  # events that neither free a slot nor make work runnable


class Manager:
    """One manager process. `run()` blocks until `stop` is set."""

    def __init__(self, settings: Settings, *, poll_ms: int = 200, clock: Clock | None = None,
                 verify_processes: int | None = None) -> None:
        self.settings = settings
        self.poll_ms = poll_ms
        self.clock = clock or Clock()
        self.engine = make_engine(settings.database_url, writer=True)
        self.storage = open_storage(settings)
        if verify_processes is None:  # a manager built in another program (a test's) checks in threads by default
            verify_processes = settings.verify_processes or 0
        self.verifier = Verifier(self.storage, settings, verify_processes)
        self.r = None
        self.lock: LeaderLock | None = None
        self.live: dict[str, Heartbeat] = {}
        self.reconciler = Reconciler()
        # Its own engine: a reader, which on SQLite takes no write lock from the loop's writes.
        self.attempt_sweep = AttemptSweep(make_engine(settings.database_url), self.storage, settings.sweep_grace)
        self.fair = FairShare()
        self.inbox = Inbox(self)
        self.book = NodeBook()
        self.sleeper = Sleeper()  # idle nodes told to sleep, woken for work (FARM_SLEEP_AFTER)
        self.acl = AclWatch()
        self.s3_refusals = S3Watch(settings)
        self.sites_watch = SitesWatch(settings)
        self._prices: dict[tuple[str, int], int] = {}  # (site, its local minute) -> its ranking price then
        self._next_acl_watch = 0.0
        self.sealer = OrderSealer(self.storage)
        self.notifier = Notifier(settings, self.engine, self.clock)
        self.purger = Purger(self.engine, self.storage, self.clock)
        self._next_retention = 0.0
        self.deferred: list[Entry] = []
        self._retry_deferred_at = 0.0
        self._missing: dict[str, int] = {}
        self._beat_at: dict[str, float] = {}  # when the latest beat of each worker was first seen
        self._beat_seq: dict[str, int] = {}
        self._bad_beats: dict[str, float] = {}  # workers whose bad heartbeat is a dead letter: when seen
        # Each node's heartbeat as last read and checked: (what it was checked with: the raw value,
        # the node's key, site and pool), the beat, its sequence number.
        self._beats_read: dict[str, tuple[tuple, Heartbeat, int]] = {}
        self._ttl: dict[str, float] = {}
        self._written_at: dict[str, float] = {}
        self._started = self.clock.now()
        self._redis_back_at = 0.0
        self._next_reap = 0.0
        self._next_reconcile = 0.0
        self._next_plan = 0.0
        self._measuring = False  # a job with a deadline has no task time yet
        self._next_rebalance = 0.0
        self._next_dispatch = 0.0  # due at once; again whenever a slot may have freed up
        self._roster: dict[str, object] = {}  # each live worker's state, as dispatch last saw it
        self._doomed: list[str] = []  # storage keys to delete in bulk
        self._deleted_at = 0.0
        self._deleter = None  # the thread that deletes them, started with the first delete
        self._deleting = None  # the delete in flight (a Future)
        self._next_renew = 0.0
        self._redis_failed = False  # since the last time the nodes' users were checked
        self._in_flight: list[tuple[str, str]] = []  # (stream, id) of the entries being applied

    # -- start and stop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        upgrade(self.engine)
        self.r = self._connect(stop)
        if self.r is None:
            return
        self.lock = LeaderLock(self.r, LEADER_TTL)
        if not self._lead(stop):
            return
        try:
            self.start()
            self._check_storage(stop)
            _load_job_modules()
            log.info("manager %s leading; database %s", self.lock.token, self.engine.url.render_as_string(hide_password=True))
            self._loop(stop)
        finally:
            self.notifier.close(wait=1.0)
            self.purger.close()
            self.verifier.close()
            try:
                self.delete_doomed(now=True)
                self.lock.release()
            except Exception:  # Redis may be gone already; the lock expires on its own
                pass
            self.attempt_sweep.wait(5.0)
            self.attempt_sweep.engine.dispose()
            self.engine.dispose()
            log.info("manager stopped")

    def start(self, r=None) -> None:
        """Ready to apply entries (the database upgraded, `r` or its Redis connected): the enrolled
        nodes' users and streams restored, the consumer groups made."""
        if r is not None:
            self.r = r
        with session_scope(self.engine) as session:
            restore_all(session, self.settings, self.r, self.book)
            self.sleeper.load(session, self)
        streams.ensure_groups(self.r, self.book.streams())

    def restore_users(self) -> None:
        """After a Redis error: Valkey may have come back without the nodes' users (a restart
        that lost its ACL file, a new server); put back the ones it lacks."""
        with session_scope(self.engine) as session:
            restore_missing(session, self.r)
        self._redis_failed = False

    def _connect(self, stop: threading.Event):
        from renderfarm.errors import FarmNotRunningError

        while not stop.is_set():
            try:
                return connect(self.settings)
            except FarmNotRunningError as e:
                log.warning("%s; retrying", e)
                stop.wait(2.0)
        return None

    def _check_storage(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.storage.check()
                return
            except StorageError as e:
                log.warning("%s; retrying", e)
                stop.wait(2.0)

    def _lead(self, stop: threading.Event) -> bool:
        """Wait for the leader lock: a second manager waits while the first one lives."""
        announced = False
        while not stop.is_set():
            if self.lock.acquire():
                self._next_renew = self.clock.monotonic() + LEADER_RENEW
                return True
            if not announced:
                log.info("another manager (%s) is leading; waiting", self.lock.holder())
                announced = True
            stop.wait(1.0)
        return False

    # -- the loop -------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        import redis

        pending = True  # first re-read what we read but never acknowledged before a restart
        backoff = 0.5
        while not stop.is_set():
            try:
                if self.clock.monotonic() >= self._next_renew:
                    if not self.lock.renew():
                        log.error("lost the leader lock; waiting to lead again")
                        if not self._lead(stop):
                            return
                    self._next_renew = self.clock.monotonic() + LEADER_RENEW
                if pending and self._redis_failed:
                    self.restore_users()
                # The manager blocks in Redis for the next entry rather than sleeping, so an intent
                # or an event is applied the moment it arrives.
                self.tick(pending=pending, block_ms=None if pending else self.block_ms())
                pending = False
                backoff = 0.5
            except redis.RedisError as e:
                log.warning("Redis error (%s); retrying in %.1f s", e, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                pending = True
                self._redis_failed = True
                # Workers could not beat while Redis was away: their TTLs count from its return.
                self._redis_back_at = self.clock.now() + backoff
            except Exception:  # a bug must not stop the farm: log it, back off, carry on
                log.exception("unexpected error in the manager loop; retrying in %.1f s", backoff)
                for entry_id in self._in_flight:  # read again, they count: see Inbox.parse
                    self.inbox.failures[entry_id] = self.inbox.failures.get(entry_id, 0) + 1
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                pending = True

    def block_ms(self) -> int | None:
        """How long the next read may wait for an entry: until the next round the clock makes due,
        at most poll_ms; None (no wait) when one is due now. A busy round is followed by a wait
        too (entries already there end it at once): a round that finds nothing costs a few
        queries and round trips, and one followed every event (16 of a 16-frame job's ~50)."""
        due = min(self._next_dispatch, self._next_reap, self._next_reconcile, self._next_plan,
                  self._next_acl_watch, self._next_renew) - self.clock.monotonic()
        if due <= 0:
            return None
        return max(1, min(self.poll_ms, int(due * 1000)))  # 0 would block for ever

    def tick(self, *, pending: bool = False, block_ms: int | None = None) -> bool:
        """One round: apply what arrived, watch workers, reconcile, fill queues. True if anything
        happened."""
        if self.deferred and self.clock.monotonic() >= self._retry_deferred_at:
            again, self.deferred = self.deferred, []
            self.apply(again)
            self._next_dispatch = 0.0
        entries = streams.read(self.r, self.book.streams(), pending=pending,
                               block_ms=None if self.deferred else block_ms)
        if pending:  # entries deferred before a reconnect come back as pending ones
            held = {(e.stream, e.id) for e in self.deferred}
            entries = [e for e in entries if (e.stream, e.id) not in held]
        if entries:
            messages = self.apply(entries)
            if any(e.is_control for e in entries):
                self._next_rebalance = 0.0  # a new or reprioritised job may outrank prefetched work
                self._next_plan = 0.0  # and a new job may have a deadline
            if any(not isinstance(m, QUIET_EVENTS) for m in messages):
                self._next_dispatch = 0.0
                if self._measuring:  # a job with a deadline may have its first task time now
                    self._next_plan = 0.0
        self.watch_workers()
        if self.clock.monotonic() >= self._next_acl_watch:
            self._next_acl_watch = self.clock.monotonic() + ACL_WATCH_EVERY
            streams.post_dead_letters(self.r, self.acl.letters(self.r, self.book, self.clock.now()))
            self.s3_refusals.record(self.r, self.book, self.clock.now(), self._s3_keys)
            if (changed := self.sites_watch.changed(self.settings)) is not None:
                self.settings = changed  # new prices and bands: plan again with them
                self._prices.clear()
                self._next_plan = 0.0
        self.delete_doomed(idle=not entries)
        self.notifier.pump()  # never waits on a webhook: the senders are threads of their own
        self.retain()
        self.purger.pump()  # never waits on storage: the deletes run in a thread of their own
        if self.clock.monotonic() >= self._next_reconcile:
            self._next_reconcile = self.clock.monotonic() + SWEEP_EVERY
            self.reconcile()
            self._next_dispatch = 0.0
            # Storage left behind (renderfarm.manager.sweep): a page at a time, in its own thread.
            self.attempt_sweep.start_round(self.clock.now(), self.clock.monotonic())
        if self.clock.monotonic() >= self._next_plan:
            self._next_plan = self.clock.monotonic() + PLAN_EVERY
            self.plan()
        handed = 0
        # A round costs a few queries: only when a slot may have freed up (a task ended, a
        # worker came or changed, an intent arrived), and every DISPATCH_EVERY all the same.
        if self.clock.monotonic() >= self._next_dispatch:
            self._next_dispatch = self.clock.monotonic() + DISPATCH_EVERY
            self.sleeper.watch(self)  # a node back from sleep takes work in this round
            handed = self.dispatch()
            self.sleeper.step(self)
        return bool(entries) or handed > 0

    def apply(self, entries: list[Entry]) -> list:
        """Parse and apply entries (see renderfarm.manager.inbox); an entry that meets a storage
        outage is deferred (not acknowledged) to be applied later, one that cannot be parsed or
        applied is acknowledged and kept as a dead letter. Returns the messages applied."""
        now = self.clock.now()
        self._in_flight = [(e.stream, e.id) for e in entries]
        letters: list[DeadLetter] = []
        replies = {}
        ready = []
        for entry in entries:
            message, letter = self.inbox.parse(entry, now)
            if letter is not None:
                letters.append(letter)
                log.warning("dead letter: %s %s: %s", entry.stream, entry.id, letter.reason)
                reply = self.inbox.reply_to(entry, letter)
                if reply is not None:
                    replies[reply[0]] = reply[1]
            if message is not None:
                ready.append((entry, message))
        outcome = self.inbox.apply(ready, now) if ready else None
        batch = outcome.batch if outcome else Batch()
        deferred = outcome.deferred if outcome else []
        letters += outcome.letters if outcome else []
        # Dead letters are kept before their entries are acknowledged: nothing is lost between.
        streams.post_dead_letters(self.r, letters)
        self._after_commit(batch)
        self._answer({**replies, **batch.replies})
        held = {(e.stream, e.id) for e in deferred}
        pipe = self.r.pipeline(transaction=False)  # every stream's acknowledgement in one round trip
        for stream in {e.stream for e in entries}:
            done = [e.id for e in entries if e.stream == stream and (stream, e.id) not in held]
            keep = [e.id for e in deferred if e.stream == stream]
            streams.ack(self.r, stream, done, keep_from=min(keep, key=streams.entry_order) if keep else None,
                        pipe=pipe)
        pipe.execute()
        for entry in entries:
            if (entry.stream, entry.id) not in held:
                self.inbox.failures.pop((entry.stream, entry.id), None)
        self._in_flight = []
        if deferred:
            self.deferred += deferred
            self._retry_deferred_at = self.clock.monotonic() + DEFER_RETRY
        return [m for _e, m in ready]

    def _answer(self, replies: dict) -> None:
        """Send the replies; one that cannot be sent (a bug, not Redis) is logged, not retried."""
        import redis

        for request_id, reply in replies.items():
            try:
                streams.send_reply(self.r, request_id, reply)
            except redis.RedisError:
                raise
            except Exception:
                log.exception("could not answer request %s", request_id)

    def _after_commit(self, batch: Batch) -> None:
        for worker in batch.left_workers:
            queues.withdraw_queue(self.r, worker)
            self.sleeper.forget(worker)
            node = self.book.get(worker)
            if node is not None and node.hold == HOLD_DRAIN:  # its drain ended with it (lifecycle.worker_offline)
                node.hold = None
        queues.release_leases(self.r, batch.released, [self.book.rq_id(w, a) for w, a in batch.abandoned])
        self._doomed += batch.delete_keys
        self.delete_doomed()
        if batch.purges:
            self.purger.wake()

    def retain(self) -> None:
        """Archive the finished jobs older than the retention (FARM_RETENTION_DAYS), now and then."""
        days = self.settings.retention_days
        if not days or self.clock.monotonic() < self._next_retention:
            return
        self._next_retention = self.clock.monotonic() + RETENTION_EVERY
        with session_scope(self.engine) as session:
            archived = apply_retention(session, days, self.clock.now())
        if archived:
            log.info("retention: %d job(s) finished over %g days ago archived", archived, days)
            self._next_retention = 0.0  # more may be waiting
            self.purger.wake()

    def delete_doomed(self, *, now: bool = False, idle: bool = False) -> None:
        """Delete promoted attempts' copies (and assembled frames' tiles) in bulk, a request per
        thousand keys at most every few seconds (every second while idle) rather than one per
        task, in a thread of its own: the loop never waits on it. With `now`, here and at once
        (after the one in flight)."""
        if self._deleting is not None:
            if not (now or self._deleting.done()):
                return
            self._deleting.result()
            self._deleting = None
        due = self._deleted_at + (DELETE_IDLE_EVERY if idle else DELETE_EVERY)
        if not self._doomed or (not now and len(self._doomed) < 1000 and self.clock.monotonic() < due):
            return
        keys, self._doomed = self._doomed, []
        self._deleted_at = self.clock.monotonic()
        if now:
            _delete_copies(self.storage, keys)
            return
        if self._deleter is None:
            from concurrent.futures import ThreadPoolExecutor

            self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delete-copies")
        self._deleting = self._deleter.submit(_delete_copies, self.storage, keys)

    def refresh_jobs(self, session, batch: Batch, now: float) -> None:
        """Finish the jobs whose tasks are all final, and fail those whose failed tasks reached
        their limit, taking back their live attempts (in the caller's transaction)."""
        for job_id in list(batch.jobs):
            job = session.get(Job, job_id)
            if job is not None:
                before = job.state
                live = lifecycle.refresh_job(session, job, now)
                if live:
                    _take_back(self.r, self.book, live, revoke_running=True)
                    batch.release(live)
                if job.state != before:
                    log.info("job %s %s%s", job.id, job.state, f" ({job.error})" if job.error else "")

    # -- workers --------------------------------------------------------------------------

    def _s3_keys(self) -> dict[str, str]:
        """Every node's S3 access key (revoked ones' included) -> its name."""
        with session_scope(self.engine) as session:
            return {key: name for name, key in session.execute(select(Node.name, Node.s3_access_key)) if key}

    def watch_workers(self) -> None:
        """Record live workers; declare one dead when its heartbeat key has been missing on two
        reaper sweeps and its last beat is at least a TTL old (a wiped Redis loses every
        heartbeat key at once, but the workers beat again well within their TTL)."""
        now = self.clock.now()
        self.live, seqs, bad = self._check_beats(presence.read_beats(self.r, self.book.enrolled()))
        self._put_aside(bad, now)
        roster = {name: beat.state for name, beat in self.live.items()}
        if roster != self._roster:
            self._roster = roster
            self._next_dispatch = 0.0
        for name, beat in self.live.items():
            self._bad_beats.pop(name, None)
            # When each beat was first seen, by our clock (a worker's is never used).
            if seqs[name] != self._beat_seq.get(name):
                self._beat_seq[name] = seqs[name]
                self._beat_at[name] = now
            self._ttl[name] = beat.ttl  # sites with slow links may declare longer ones
        due = [n for n in self.live if now - self._written_at.get(n, 0.0) >= WORKER_REFRESH]
        reap = self.clock.monotonic() >= self._next_reap
        if not due and not reap:
            return
        batch = Batch()
        with session_scope(self.engine) as session:
            if due:  # one query for all the rows to refresh rather than one each (held: see preload)
                session.info["preloaded"] = session.scalars(select(Worker).where(Worker.name.in_(due))).all()
            for name in due:
                lifecycle.see_worker(session, self.live[name], now)
                self._written_at[name] = now
            if reap:
                self._next_reap = self.clock.monotonic() + REAP_EVERY
                self._reap(session, now, batch)
            self.book.save(session, due, beats=True)
            self.refresh_jobs(session, batch, now)
        self._after_commit(batch)

    def _check_beats(self, raw: dict[str, bytes]) -> tuple[dict[str, Heartbeat], dict[str, int], list[BadBeat]]:
        """The heartbeats that carry their node's seal, name it and are not older than the newest
        seen (with their sequence numbers), and the bad ones."""
        live, seqs, bad = {}, {}, []
        for name, value in raw.items():
            node = self.book.get(name)
            read = self._beats_read.get(name)
            if read is not None and node is not None and read[0] == (value, node.key, node.site, node.pool) \
                    and read[2] >= node.last_beat_seq:
                live[name], seqs[name] = read[1], read[2]  # checked already: a node beats every few seconds
                continue
            try:
                sealed = Sealed.parse(value)
                if sealed.node != name:
                    raise WireError(f"heartbeat: sealed by {sealed.node!r}, at the key of {name!r}")
                beat = Heartbeat.parse(sealed.check(node.key))
                if beat.name != name:
                    raise WireError(f"heartbeat: name {beat.name!r} at the key of {name!r}")
                if sealed.seq < node.last_beat_seq:
                    raise WireError(f"heartbeat: replayed (sequence {sealed.seq}, newest seen {node.last_beat_seq})")
            except WireError as e:
                bad.append(BadBeat(name, value, str(e)))
                continue
            node.last_beat_seq = sealed.seq
            if (beat.site, beat.pool) != (node.site, node.pool):  # where it was enrolled counts
                beat = beat.model_copy(update={"site": node.site, "pool": node.pool})
            live[name], seqs[name] = beat, sealed.seq
            self._beats_read[name] = ((value, node.key, node.site, node.pool), beat, sealed.seq)
        for name in self._beats_read.keys() - raw.keys():
            del self._beats_read[name]
        return live, seqs, bad

    def _put_aside(self, bad: list[BadBeat], now: float) -> None:
        """Keep a dead letter of each bad heartbeat (only its node can write its key: counted as
        the node's), once per node while it keeps sending bad ones (remembered BAD_BEAT_MEMORY
        seconds)."""
        letters = []
        for beat in bad:
            if beat.name not in self._bad_beats:
                log.warning("ignoring the heartbeat of %r: %s", beat.name, beat.reason)
                letters.append(DeadLetter(source=keys.heartbeat_key(beat.name), entry=beat.name, reason=beat.reason,
                                          raw=DeadLetter.excerpt(beat.raw), worker=beat.name, at=now))
                self.book.refused[beat.name] += 1
            self._bad_beats[beat.name] = now
        for name, seen in list(self._bad_beats.items()):
            if now - seen > BAD_BEAT_MEMORY:
                del self._bad_beats[name]
        streams.post_dead_letters(self.r, letters)

    def _reap(self, session, now: float, batch: Batch) -> None:
        known = session.execute(
            # An asleep worker beats no more: it is not gone (renderfarm.manager.sleeper).
            select(Worker.name, Worker.last_seen).where(
                Worker.state.not_in([WorkerState.OFFLINE.value, *WORKER_SLEEPING]))
        ).all()
        for name, last_seen in known:
            if name in self.live:
                self._missing.pop(name, None)
                continue
            self._missing[name] = self._missing.get(name, 0) + 1
            seen = max(self._beat_at.get(name, max(last_seen, self._started)), self._redis_back_at)
            if self._missing[name] < 2 or now - seen < self._ttl.get(name, self.settings.heartbeat_ttl):
                continue
            lost = lifecycle.worker_offline(session, name, now, "worker stopped sending heartbeats")
            log.warning("worker %s is gone (silent %.1f s); %d attempt(s) handed back", name, now - seen, len(lost))
            batch.left_workers.append(name)
            batch.release(lost, abandoned=True)
            for table in (self._missing, self._beat_at, self._beat_seq, self._ttl, self._written_at):
                table.pop(name, None)

    def reconcile(self) -> None:
        batch = Batch()
        now = self.clock.now()
        with session_scope(self.engine) as session:
            try:
                self.reconciler.sweep(session, self.r, self.storage, self.live, batch, now, self.book, self._beat_at)
            except StorageError as e:
                log.warning("reconciliation postponed: storage unreachable (%s)", e)
                session.rollback()
                return
            self.refresh_jobs(session, batch, now)
        self._after_commit(batch)

    def _view(self, beat: Heartbeat, now: float) -> WorkerView:
        """The scheduler's view of a node: its pool, site and tags as enrolled (not as it says),
        its renderers and resources as it advertises them, its site's price now."""
        node = self.book.get(beat.name)
        pool, site = (node.pool, node.site) if node else (beat.pool, beat.site)
        price = self._price(site, now)
        caps = beat.capabilities.model_dump(mode="json", exclude_none=True) if beat.capabilities else {}
        if node is not None:
            caps["tags"] = sorted(set(node.tags) | {t for t in caps.get("tags", ()) if t == "gpu"})
        return worker_view(beat.name, pool, site, caps or None, price)

    def _price(self, site: str, now: float) -> int:
        """A site's price for ranking its workers: the band's in force now, where it has bands
        (bands start on whole minutes of the site's time zone: kept for that minute)."""
        from renderfarm.errors import ConfigError

        try:
            known = self.settings.site(site)
        except ConfigError:
            return 0
        if not known.price_bands:
            return known.ranking_price
        key = (site, known.local_minutes(now))
        price = self._prices.get(key)
        if price is None:
            price = known.ranking_price_at(now)
            if len(self._prices) > 1000:
                self._prices.clear()
            self._prices[key] = price
        return price

    def _held(self, name: str) -> bool:
        node = self.book.get(name)
        return (node is not None and node.hold is not None) or self.sleeper.holds(name)

    def plan(self) -> None:
        """Plan the jobs with a deadline: when and where each renders (renderfarm.power)."""
        now = self.clock.now()
        views = [self._view(beat, now) for name, beat in self.live.items() if name in self._written_at
                 and not self._held(name)]
        with session_scope(self.engine) as session:
            self._measuring = plan_deadlines(session, self.settings, views, now) > 0
        self._next_dispatch = 0.0

    def make_way(self) -> None:
        """Withdraw prefetched attempts that a more urgent job's pending tasks outrank, so those
        start as soon as a worker frees up (a new high-priority job, or `farm priority`)."""
        batch = Batch()
        now = self.clock.now()
        with session_scope(self.engine) as session:
            for attempt in outranked_prefetches(session, now):
                if queues.withdraw_attempt(self.r, attempt.worker, self.book.rq_id(attempt.worker, attempt.id)):
                    lifecycle.take_back_attempt(session, attempt, now, "withdrawn for a more urgent job")
                    batch.release([attempt])
        self._after_commit(batch)

    def dispatch(self) -> int:
        """Fill every live worker's queue; returns how many attempts were handed out."""
        now = self.clock.now()
        views = [
            self._view(beat, now) for name, beat in self.live.items()
            if beat.state != WorkerState.STOPPING.value and name in self._written_at and not self._held(name)
        ]
        if not views:
            return 0
        if self.clock.monotonic() >= self._next_rebalance:
            self._next_rebalance = self.clock.monotonic() + REBALANCE_EVERY
            self.make_way()
        batch = Batch()
        with session_scope(self.engine) as session:
            handouts = plan_handouts(session, views, self.fair, now=now, failed=batch.jobs)
            self.refresh_jobs(session, batch, now)  # a task that could not be handed out failed
        if batch.jobs:
            self._after_commit(batch)
        queues.enqueue_attempts(self.r, self.sealer.seal(handouts, self.book, now))
        return len(handouts)


def _delete_copies(storage, keys: list[str]) -> None:
    try:
        storage.delete(keys)
    except StorageError as e:  # only copies of committed frames: leaving them costs space (the sweep finds them)
        log.warning("could not delete %d promoted attempt copies: %s", len(keys), e)


def _load_job_modules() -> None:
    """Import now what a job's submission, dispatch and verification import where they need it
    (RQ, the renderers, the image checks), lazily so that the command line never pays for them:
    left to the first job after a start, they held up its dispatch."""
    import renderfarm.images  # noqa: F401
    import renderfarm.renderers.limits  # noqa: F401
    import renderfarm.renderers.registry  # noqa: F401

    queues.load_rq()


def run_manager(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run a manager until SIGTERM/SIGINT (or `stop`)."""
    import signal

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    processes = settings.verify_processes
    Manager(settings, verify_processes=default_processes() if processes is None else processes).run(stop)
