"""One worker process's shared state: identity, connections, scene cache, heartbeat and lease,
and the reasons a render must stop (its lease moved on, or the worker is handing it back)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from renderfarm import __version__, keys, presence, queues
from renderfarm.errors import RenderFarmError, StorageError
from renderfarm.events import EventSender
from renderfarm.nodes import Sequence
from renderfarm.renderers.session import RendererSession
from renderfarm.states import WorkerState
from renderfarm.storage import open_storage
from renderfarm.storage.retry import retrying
from renderfarm_worker import openjd_render

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.wire import Heartbeat

    from renderfarm.config import Settings
    from renderfarm.enrollment import NodeCredentials
    from renderfarm.renderers.blender import Blender
    from renderfarm.storage import Storage

log = logging.getLogger("renderfarm.worker")
T = TypeVar("T")

_CURRENT: WorkerRuntime | None = None
SESSION_IDLE = 60.0  # seconds a warm renderer session may sit unused
LEASE_CHECK_EVERY = 1.0  # seconds between lease checks while rendering
UPLOADS_AT_ONCE = 6  # an attempt's lease check, log and files, side by side


def current() -> WorkerRuntime:
    """The runtime of this worker process (set by the daemon before it takes jobs)."""
    if _CURRENT is None:
        raise RenderFarmError("render_task runs only inside farm-worker")
    return _CURRENT


def install(runtime: WorkerRuntime | None) -> None:
    global _CURRENT
    _CURRENT = runtime


class Interrupted(Exception):
    """The render was stopped before it finished: superseded, or handed back at shutdown."""

    def __init__(self, reason: str, *, hand_back: bool) -> None:
        super().__init__(reason)
        self.hand_back = hand_back


class Finisher:
    """One background thread finishing attempts in order (uploads, log, done event) while the
    next task renders; at most one attempt waits for it, so a slow store slows the renders
    down instead of piling up files."""

    def __init__(self) -> None:
        import queue

        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="finisher", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception:  # one attempt's trouble must not stop the next ones being finished
                log.exception("finishing an attempt failed")
            finally:
                self._jobs.task_done()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every submitted attempt is finished (at shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                log.warning("%d attempt(s) still being finished at exit", self._jobs.unfinished_tasks)
                return
            time.sleep(0.05)


@dataclass
class Lease:
    """The attempt this worker is rendering now."""

    task_id: int
    attempt_id: int
    label: str  # job:index/attempt


@dataclass
class WorkerRuntime:
    settings: Settings
    credentials: NodeCredentials  # who this node is: its name, id, key and S3 identity
    pool: str
    scratch: Path
    r: Redis
    site: str = "local"
    watts: float | None = None  # this node's draw while rendering; None: the site's default
    watts_per_core: float | None = None  # or a draw per busy core, over the renderer's CPU time
    capabilities: dict[str, Any] = field(default_factory=dict)  # renderers, cores, memory, GPU, tags
    blender: Blender | None = None  # the Blender it renders with, if it has one
    storage: Storage = field(init=False)
    events: EventSender = field(init=False)
    host: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.monotonic)
    lease: Lease | None = None
    # Every attempt this worker holds: the one rendering, and those whose outputs are uploading.
    holding: dict[int, None] = field(default_factory=dict)
    _beats: int = 0
    session: RendererSession | None = None  # the warm renderer of the job last rendered
    stopping: bool = False  # SIGTERM seen: take no new work
    turned_away: bool = False  # the farm refuses this node's credentials (revoked): it ends at once
    asleep: bool = False  # told to sleep and slept (renderfarm_worker.sleep), not woken to work yet
    sleep_seq: int = 0  # the newest sleep order obeyed
    _stop_reason: str | None = None
    _next_lease_check: float = 0.0
    _hand_back: bool = False
    _stop_beating: threading.Event = field(default_factory=threading.Event)
    _beater: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    finisher: Finisher = field(init=False)
    # Redis calls a render makes while it runs (lease checks, live log), so that its loop never
    # waits on the link: one thread, in order.
    render_io: ThreadPoolExecutor = field(init=False)
    # The finisher's uploads and lease check, side by side: one pool for the worker's life (a pool
    # per attempt started a thread per file).
    uploads: ThreadPoolExecutor = field(init=False)
    _lease_check_pending: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        creds = self.credentials
        keys_ = (creds.s3_access_key, creds.s3_secret_key) if creds.s3_access_key and creds.s3_secret_key else None
        self.storage = open_storage(self.settings, keys_)
        self.sequence = Sequence()  # numbered from the clock; the file is kept once scratch exists
        self.events = EventSender(self.r, keys.event_stream(self.name), self.seal)
        self.finisher = Finisher()
        self.render_io = ThreadPoolExecutor(1, thread_name_prefix="render-io")
        self.uploads = ThreadPoolExecutor(UPLOADS_AT_ONCE, thread_name_prefix="upload")
        try:
            self.scratch.mkdir(parents=True, exist_ok=True)
            os.chmod(self.scratch, 0o700)
        except OSError as e:
            raise RenderFarmError(f"scratch: {self.scratch} cannot be made or kept private ({e.strerror or e})") from None
        self.sequence = Sequence(self.scratch / "sequence")

    @property
    def name(self) -> str:
        return self.credentials.name

    def seal(self, message) -> str:
        """A message for the manager, sealed with this node's key and numbered past every earlier one."""
        from renderfarm.wire import Sealed

        return Sealed.seal(message, node=self.name, seq=self.sequence.next(), key=self.credentials.key).to_json()

    def unseal(self, raw: object, what: str):
        """(the seal, the message it holds) of an order in a queued job's argument, sealed by the
        manager with this node's key, for this node. WireError says what is wrong."""
        from renderfarm.wire import Sealed, WireError

        if not isinstance(raw, str):
            raise WireError(f"{what}: a {type(raw).__name__}, not a sealed order")
        sealed = Sealed.parse(raw)
        if sealed.node != self.name:
            raise WireError(f"{what}: sealed for {sealed.node!r}, not for this node")
        return sealed, sealed.check(self.credentials.key)

    def open_order(self, raw: object, rq_id: str | None):
        """The task order in a queued job's argument: sealed by the manager with this node's key,
        for this node, under the RQ id the manager gave it. WireError says what is wrong."""
        from renderfarm.wire import TaskOrder, WireError

        sealed, body = self.unseal(raw, "task order")
        order = TaskOrder.parse(body)
        if order.node != self.name or sealed.seq != order.attempt_id:
            raise WireError(f"task order: the order of attempt {order.attempt_id} for {order.node!r} is not this seal's")
        if rq_id is not None and rq_id != queues.rq_job_id(self.credentials.node_id, order.attempt_id):
            raise WireError(f"task order: RQ job {rq_id[:80]!r} carries the order of attempt {order.attempt_id}")
        return order

    # -- the current render and why it must stop ------------------------------------------------

    def begin(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            self.asleep = False
            self.holding[lease.attempt_id] = None
            self._stop_reason = None
            self._hand_back = False

    def end(self) -> None:
        with self._lock:
            self.lease = None
            self._stop_reason = None

    def let_go(self, attempt_id: int) -> None:
        """The attempt is reported (or handed back): this worker holds it no more."""
        with self._lock:
            self.holding.pop(attempt_id, None)

    def attempt_dir(self, name: str) -> Path:
        """The scratch directory of one attempt; its name comes from a checked order, and it is
        checked again to lie inside the scratch directory before anything is made or removed."""
        base = (self.scratch / "attempts").resolve()
        path = (base / name).resolve()
        if path.parent != base:
            raise RenderFarmError(f"attempt directory {name!r} is outside {base}")
        return path

    def refuse(self, rq_id: str, reason: str, raw: object) -> None:
        """A queued job that is not a valid order of ours: dropped, and reported to the manager."""
        from renderfarm.wire import DeadLetter, Refused

        log.error("security: refused job %s: %s", rq_id[:80], reason)
        text = raw if isinstance(raw, (str, bytes)) else repr(raw)
        self.events.send(Refused(worker=self.name, rq_id=str(rq_id)[:200], reason=reason[:4000],
                                 raw=DeadLetter.excerpt(text)))

    def lease_holder_patiently(self, task_id: int) -> int | None:
        """The attempt holding a task, asked until Redis answers (a finished render is kept while
        Redis is away, not failed); the render is handed back if Redis stays away too long."""
        import redis

        deadline = time.monotonic() + self.settings.storage_retry
        backoff = 0.5
        while True:
            try:
                return queues.lease_holder(self.r, task_id)
            except redis.AuthenticationError as e:
                self.turn_away(e)
                raise Interrupted(f"the farm refuses this node's credentials ({e})", hand_back=False) from None
            except redis.RedisError as e:
                if time.monotonic() > deadline:
                    raise Interrupted(f"Redis unreachable for {self.settings.storage_retry:g} s ({e})",
                                      hand_back=True) from None
                log.warning("Redis unreachable (%s); keeping the finished render, asking again in %.1f s", e,
                            backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def interrupt(self, reason: str, *, hand_back: bool, lease: Lease | None = None) -> None:
        """Ask the current render (if any; with `lease`, only if it is still that one) to stop as
        soon as it can."""
        with self._lock:
            if self.lease is not None and self._stop_reason is None and lease in (None, self.lease):
                self._stop_reason = reason
                self._hand_back = hand_back
                log.warning("stopping %s: %s", self.lease.label, reason)

    def should_stop(self) -> bool:
        """Whether the current render must stop; has Redis asked for the lease at most once a
        second, in the background (the answer stops the render at its next look), so a cancel
        stops a render within a second or two and the render never waits on the link."""
        now = time.monotonic()
        if self._stop_reason is None and self.lease is not None and now >= self._next_lease_check \
                and not self._lease_check_pending.is_set():
            self._next_lease_check = now + LEASE_CHECK_EVERY
            self._lease_check_pending.set()
            self.render_io.submit(self._background_lease_check)
        return self._stop_reason is not None

    def _background_lease_check(self) -> None:
        try:
            self.check_lease()
        finally:
            self._lease_check_pending.clear()

    def raise_if_stopped(self) -> None:
        if self._stop_reason is not None:
            raise Interrupted(self._stop_reason, hand_back=self._hand_back)

    def turn_away(self, e: Exception) -> None:
        """The farm refuses this node's credentials (it was revoked, or enrolled again with new
        ones): nothing it sends can count any more, and retrying would go on forever. Stop the
        render and end the work loop at once, as a SIGTERM does."""
        with self._lock:
            if self.turned_away:
                return
            self.turned_away = self.stopping = True
        log.error("the farm refuses this node's credentials (%s): revoked? stopping", e)
        self.interrupt("the farm refuses this node's credentials", hand_back=False)
        self._stop_beating.set()
        os.kill(os.getpid(), signal.SIGTERM)  # ends RQ's wait for Redis, which retries forever

    def hand_back_now(self) -> None:
        """Shutdown cannot wait for the render: stop it and give the task back to the manager."""
        self.interrupt("the worker is shutting down", hand_back=True)

    def check_lease(self) -> None:
        """Stop a render whose task the manager has given to another attempt. A missing lease
        (Redis was wiped) is not a reason: the manager restores it or moves the task on."""
        import redis

        lease = self.lease
        if lease is None:
            return
        try:
            holder = queues.lease_holder(self.r, lease.task_id)
        except redis.RedisError as e:  # cannot tell now; the next heartbeat asks again
            log.warning("could not check the lease of %s: %s", lease.label, e)
            return
        if holder == queues.REVOKED:
            self.interrupt("taken back by the farm (job cancelled or suspended, or the task ended elsewhere)",
                           hand_back=False, lease=lease)
        elif holder is not None and holder != lease.attempt_id:
            self.interrupt(f"superseded: attempt {holder} owns the task now", hand_back=False, lease=lease)

    def owns(self, task_id: int, attempt_id: int) -> bool:
        """Whether the attempt holds its task's lease now (checked before starting it)."""
        return queues.lease_holder(self.r, task_id) == attempt_id

    # -- warm renderer sessions -----------------------------------------------------------------

    def session_for(self, key: tuple, argv: list[str], env: dict[str, str], account=None) -> RendererSession:
        """The warm session for `key` (job, renderer, scene), started if there is none alive;
        a session of another job is closed first (one renderer process at a time). With
        `account` (the render user), it runs as that user, in a directory of its own."""
        with self._lock:
            session = self.session
            if session is not None and session.key == key and session.alive():
                return session
            self.session = None
        if session is not None:
            session.close()
        cwd = self.scratch / "session"
        cwd.mkdir(exist_ok=True)
        if account is not None:
            account.give(cwd)
        session = RendererSession(key, argv, cwd=cwd, env={**env, "TMPDIR": str(cwd)}, account=account)
        with self._lock:
            self.session = session
        return session

    def close_session(self, idle_for: float | None = None) -> None:
        """Close the warm session; with `idle_for`, only if no render holds it and it has been
        unused that long (the heartbeat thread's tidy-up must never close one in use)."""
        with self._lock:
            session = self.session
            if session is None:
                return
            if idle_for is not None and (self.lease is not None or time.monotonic() - session.last_used < idle_for):
                return
            self.session = None
        session.close()

    # -- heartbeat ------------------------------------------------------------------------------

    def info(self) -> Heartbeat:
        """This worker's heartbeat now; each one is numbered one higher than the last."""
        from renderfarm.wire import Capabilities, Heartbeat

        with self._lock:
            lease = self.lease
            held = ([lease.attempt_id] if lease else []) + [a for a in self.holding if not lease or a != lease.attempt_id]
            self._beats += 1
            seq = self._beats
        if self.stopping:
            state = WorkerState.STOPPING
        elif self.asleep and not lease:
            state = WorkerState.ASLEEP
        else:
            state = WorkerState.BUSY if lease else WorkerState.IDLE
        return Heartbeat(
            name=self.name, host=self.host[:255], pid=os.getpid(), pool=self.pool, site=self.site,
            cores=os.cpu_count() or 1, version=__version__, uptime=round(time.monotonic() - self.started, 3),
            state=state.value, task=lease.label.split("/")[0] if lease else None, attempts=tuple(held[:16]),
            ttl=self.heartbeat_ttl, seq=seq,
            capabilities=Capabilities(**self.capabilities) if self.capabilities else None,
        )

    @property
    def heartbeat_ttl(self) -> float:
        """The site's heartbeat TTL if it sets one (a long link may need more), else the farm's."""
        return self.settings.site(self.site).heartbeat_ttl or self.settings.heartbeat_ttl

    def beat(self) -> None:
        presence.beat(self.r, self.name, self.seal(self.info()), self.heartbeat_ttl)

    def start_heartbeat(self) -> None:
        import redis

        from renderfarm_worker.sleep import ResumeWatch

        interval = max(0.5, self.heartbeat_ttl / 3)
        resume = ResumeWatch()

        def run() -> None:
            while not self._stop_beating.wait(interval):
                if resume.resumed() and self.asleep:
                    log.info("woke from sleep")
                    self.asleep = False
                try:
                    self.beat()
                    self.check_lease()
                    self.close_session(idle_for=SESSION_IDLE)  # an idle renderer gives its memory back
                    openjd_render.close_idle(self, SESSION_IDLE)
                except redis.AuthenticationError as e:
                    self.turn_away(e)
                    return
                except redis.RedisError as e:
                    log.warning("heartbeat failed: %s", e)

        self.beat()
        self._beater = threading.Thread(target=run, name="heartbeat", daemon=True)
        self._beater.start()

    def stop_heartbeat(self) -> None:
        self._stop_beating.set()
        if self._beater is not None:
            self._beater.join(5.0)

    # -- storage, retried through outages -------------------------------------------------------

    def with_storage(self, what: str, call: Callable[[], T]) -> T:
        """Run a storage call, retrying transient failures (the link dropped, the server is
        restarting) for up to `storage_retry` seconds, unless the render must stop."""
        return retrying(what, call, within=self.settings.storage_retry, before_retry=self.raise_if_stopped)

    def fetch_scene(self, key: str, sha256: str, url: str | None = None) -> Path:
        """The scene file, downloaded once per content (from its presigned `url` when the order
        gives one: a node holds no read access of its own) and kept in the scratch cache; a packed
        scene (.zip) is unpacked once, and its main file returned."""
        suffix = Path(key).suffix
        if suffix == ".zip":
            from renderfarm.renderers.blender.scene import unpack_scene
            from renderfarm.renderers.limits import Limits

            unpacked, pack = self.scratch / "scenes" / sha256, self.scratch / "scenes" / f"{sha256}.zip"
            if unpacked.exists():
                main = unpack_scene(pack, unpacked, Limits.of(self.settings))  # unpacked before: finds its main file
            else:
                self._download_scene(key, sha256, pack, url)
                try:
                    main = unpack_scene(pack, unpacked, Limits.of(self.settings))
                finally:
                    pack.unlink(missing_ok=True)
            self._keep_in_cache(unpacked)
            return main
        target = self.scratch / "scenes" / f"{sha256}{suffix}"
        if not target.exists():
            self._download_scene(key, sha256, target, url)
        self._keep_in_cache(target)
        return target

    def _keep_in_cache(self, entry: Path) -> None:
        """The scene about to render is the cache's most recent; the least recently used others
        go beyond the cap (FARM_SCENE_CACHE_GB)."""
        from renderfarm_worker import scenecache

        scenecache.use(entry)
        scenecache.evict(entry.parent, int(self.settings.scene_cache_gb * 10**9), {entry.name})

    def download(self, key: str, path: Path, url: str | None = None) -> None:
        """One object into a file: from its presigned URL if there is one, else from storage;
        retried through outages like every storage call."""
        if url is None:
            self.with_storage(f"download {key}", lambda: self.storage.download_file(key, path))
        else:
            self.with_storage(f"download {key}", lambda: fetch_url(url, path, key))

    def _download_scene(self, key: str, sha256: str, target: Path, url: str | None = None) -> Path:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".scene-")
        except OSError as e:
            raise RenderFarmError(f"scratch: cannot write the scene into {target.parent} ({e.strerror or e})") from None
        os.close(fd)
        try:
            self.download(key, Path(tmp), url)
            digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
            if digest != sha256:
                raise StorageError(f"scene {key}: downloaded content has SHA-256 {digest[:12]}..., expected {sha256[:12]}...")
            os.replace(tmp, target)
        except OSError as e:  # the scratch disk is full or read-only: say which disk
            raise RenderFarmError(f"scratch: cannot write the scene into {target.parent} ({e.strerror or e})") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target


def fetch_url(url: str, path: Path, what: str) -> None:
    """GET a presigned URL into `path`. A refusal is a StorageError (transient for a server
    error); a disk that refuses the bytes is an OSError, as for any write."""
    import shutil
    import urllib.error
    import urllib.request

    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the manager's own presigned http(s) URL
    except urllib.error.HTTPError as e:
        raise StorageError(f"storage: {what}: refused ({e.code} {e.reason})", transient=e.code >= 500) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise StorageError(f"storage: {what}: unreachable ({getattr(e, 'reason', e)})", transient=True) from None
    with response, path.open("wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)
