"""The RQ worker class farm-worker runs: in-process jobs, one queue, our functions only, RQ's own
records written off the path between two renders, and a shutdown that finishes the render, or
hands it back after a grace period or a second SIGTERM."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from rq import SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.suspension import WORKERS_SUSPENDED, is_suspended
from rq.utils import now
from rq.worker import WorkerStatus

from renderfarm.queues import ALLOWED_FUNCTIONS
from renderfarm_worker import runtime

log = logging.getLogger("renderfarm.worker")


BOOKS_AT_EXIT = 5.0  # seconds RQ's last records may take at exit (Redis may be gone)
CALLBACK_FIELDS = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")


def refusal(job) -> str | None:
    """Why a queued job must not run, or None. RQ imports a job's function and its callbacks by
    dotted name, so anyone who can write to Redis could name os.system: only our own task
    function, with JSON arguments and no callbacks, may run. Checked before anything is imported."""
    if getattr(job, "unreadable", None):
        return job.unreadable
    try:
        name = job.func_name  # decodes the job's data with the JSON serializer, nothing else
    except Exception as e:  # a pickle, or anything else that is not our JSON
        return f"its data is not JSON ({type(e).__name__})"
    if name not in ALLOWED_FUNCTIONS:
        return f"it names function {name!r}"
    if getattr(job, "_instance", None) is not None:
        return "it names an instance method"
    callbacks = [getattr(job, f, None) for f in CALLBACK_FIELDS]
    if any(callbacks):
        return f"it names callbacks {[c for c in callbacks if c]}"
    if job.kwargs or len(job.args) != 1 or not isinstance(job.args[0], str):
        return "its arguments are not one task order"
    return None


def _raw_data(connection, job_id: str) -> str:
    """The start of a refused job's data, for the dead letter: unzipped as RQ stores it (at most
    4 kB of it: a zip bomb unpacks no further), never parsed, never imported."""
    import zlib

    from rq.job import Job

    try:
        raw = connection.hget(Job.key_for(job_id), "data") or b""
    except Exception:  # noqa: BLE001 - a dead letter is best effort
        return ""
    if not isinstance(raw, bytes):
        return str(raw)[:4096]
    try:
        raw = zlib.decompressobj().decompress(raw, 4096)
    except zlib.error:
        pass  # not zipped: as it is
    return raw[:4096].decode("utf-8", "replace")


class FarmJob(Job):
    """RQ's job, restored without trusting its record: a field RQ cannot read (a date, timeout,
    status or dependency list written by hand) made RQ's dequeue raise, which ended the work loop
    (a restart, half a second of a stalled node, per entry) and lost the entry unreported. Such a
    job is kept with the reason, to be refused like any other that is not ours."""

    unreadable: str | None = None

    def restore(self, raw) -> None:
        try:
            super().restore(raw)
        except NoSuchJobError:  # gone, or no data at all: RQ passes over it
            raise
        except Exception as e:  # noqa: BLE001 - anything RQ's restore raises on a record it did not write
            self.unreadable = f"its record is not RQ's ({type(e).__name__}: {str(e)[:100]})"


class Bookkeeper:
    """A thread that writes RQ's records of the worker and its jobs (state, heartbeats,
    registries, the finished job's cleanup) in the order they were made. Between two jobs RQ
    makes some twenty round trips to Redis one after another; on a link with 100 ms each way that
    is four seconds of an idle node. Only taking the next job stays on that path: nothing in the
    farm reads RQ's records (the manager's database is the truth), so they may lag a moment."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"rq-books-{name}", daemon=True)
        self._thread.start()

    def defer(self, call: Callable[[], object]) -> None:
        self._jobs.put(call)

    def _run(self) -> None:
        while True:
            call = self._jobs.get()
            try:
                if call is None:
                    return
                call()
            except Exception as e:  # RQ's records are best effort; the next write may succeed
                log.warning("RQ bookkeeping failed: %s: %s", type(e).__name__, e)
            finally:
                self._jobs.task_done()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything deferred so far is written (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while self._jobs.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 30.0) -> None:
        self.drain(timeout)
        self._jobs.put(None)
        self._thread.join(1.0)


class FarmWorker(SimpleWorker):
    """Runs jobs in this process (the renderer is already a subprocess, so forking a horse per
    job buys nothing), refuses any job whose function is not ours, and leaves RQ's bookkeeping
    to a Bookkeeper thread: between two renders it waits only for the next job."""

    job_class = FarmJob

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._books = Bookkeeper(self.name)
        self._beat_pending = threading.Event()
        self._suspended: bool | None = None  # unknown until checked once

    def _set_connection(self, connection):
        """RQ makes every command's socket timeout longer than its dequeue's wait (415 s), but
        only on connections the pool opens from then on: the worker's were opened ahead, so the
        dequeue timed out on them. A client from `connect` gives each blocking call a timeout of
        its own already, and keeps ordinary commands' short."""
        from renderfarm.redisconn import times_blocking_calls

        if times_blocking_calls(connection):
            return connection
        return super()._set_connection(connection)

    # -- RQ's records, written by the bookkeeper --------------------------------------------------

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ's worker heartbeat, with the `rq suspend` check, in one round trip off the job's
        path (RQ beats three times per job, three commands each). In a caller's pipeline, as RQ
        does it."""
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        if self._beat_pending.is_set():  # one already waiting carries the news
            return
        self._beat_pending.set()
        beat = super().heartbeat

        def send() -> None:
            self._beat_pending.clear()
            with self.connection.pipeline() as pipe:
                beat(timeout, pipeline=pipe)
                pipe.exists(WORKERS_SUSPENDED)
                self._suspended = bool(pipe.execute()[-1])

        self._books.defer(send)

    def set_state(self, state, pipeline=None):
        if pipeline is not None:
            return super().set_state(state, pipeline=pipeline)
        self._state = state
        # Only the record is written later. RQ's own set_state would also set `_state` when it
        # runs, after the next job may have made the worker busy: a SIGTERM then found the worker
        # "idle", and RQ stopped the render in the middle instead of letting it finish.
        key = self.key
        self._books.defer(lambda: self.connection.hset(key, "state", state))

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's wait while `rq suspend` is on, entered only when the last heartbeat saw it."""
        if self._suspended is None:
            self._suspended = bool(is_suspended(self.connection))
        if self._suspended:
            super().check_for_suspension(burst)
            self._suspended = False

    def prepare_execution(self, job):
        """RQ's record of the execution (rq.executions.prepare_execution), written later."""
        from rq.executions import Execution

        pipe = self.connection.pipeline()
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
        self.executions[execution.id] = execution
        super().set_state(WorkerStatus.BUSY, pipeline=pipe)
        self._books.defer(pipe.execute)
        return execution

    def prepare_job_execution(self, job, remove_from_intermediate_queue: bool = False) -> None:
        prepare = super().prepare_job_execution
        self._books.defer(lambda: prepare(job, remove_from_intermediate_queue))

    def handle_execution_ended(self, job, queue, heartbeat_ttl) -> None:
        job.ended_at = now()
        self._books.defer(lambda: job.heartbeat(now(), heartbeat_ttl))

    def handle_job_success(self, job, queue, started_job_registry, execution) -> None:
        succeed = super().handle_job_success
        self._books.defer(lambda: succeed(job, queue, started_job_registry, execution))

    def handle_job_failure(self, *args, **kwargs) -> None:
        self._books.drain()  # a failure is rare: recorded in order, after what came before it
        super().handle_job_failure(*args, **kwargs)

    def teardown(self) -> None:
        self._books.close(timeout=BOOKS_AT_EXIT)
        super().teardown()

    def run_maintenance_tasks(self):
        """None: RQ's maintenance cleans every queue's registries and group locks, which are not a
        node's to touch (its Valkey user may not); the manager reconciles what was lost."""

    # -- jobs -------------------------------------------------------------------------------------

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ's dequeue, except that an entry RQ cannot read (an id it refuses, such as one holding
        '../', or a job hash it cannot restore) is refused like any job not ours, and the next one
        taken: RQ let the error end its work loop, and left the entry to end it again at its next
        maintenance."""
        import redis

        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except redis.exceptions.NoPermissionError as e:
                # An id that is not one of this node's jobs': Valkey lets the node read no other
                # record. Raised, it ended the work loop and left the entry in the intermediate
                # queue, unreported.
                job_id, queue = getattr(e, "job_id", None), getattr(e, "queue", None)
                if job_id is None or queue is None:
                    raise
                self._refuse(job_id, queue, "its record is not this node's to read", readable=False)
            except redis.RedisError:
                raise
            except Exception as e:
                job_id, queue = getattr(e, "job_id", None), getattr(e, "queue", None)
                if job_id is None or queue is None:  # not a job's: RQ names the job it fetched
                    raise
                self._refuse(job_id, queue, f"RQ cannot read it ({type(e).__name__}: {e})")

    def execute_job(self, job, queue):
        why = refusal(job)
        if why is None and job.origin != queue.name:
            # RQ files a job's records under the queue its record names: they went to another
            # queue's keys (refused by Valkey, and left the entry in this queue's intermediate list).
            why = f"its record names queue {str(job.origin)[:80]!r}, not {queue.name}"
        if why:
            self._refuse(job.id, queue, why)
            return
        super().execute_job(job, queue)

    def _refuse(self, job_id: str, queue, why: str, *, readable: bool = True) -> None:
        raw = _raw_data(self.connection, job_id) if readable else ""
        self._drop(job_id, queue, record=readable)
        rt = runtime._CURRENT
        if rt is not None:
            rt.refuse(job_id, f"job {job_id[:80]!r} from queue {queue.name}: {why}", raw)

    def _drop(self, job_id: str, queue, *, record: bool = True) -> None:
        """Remove a refused job with plain Redis commands: nothing of it is decoded or imported
        (its record stays where it is not this node's to delete)."""
        from rq.job import Job

        pipe = self.connection.pipeline(transaction=False)
        pipe.lrem(queue.intermediate_queue_key, 1, job_id)
        if record:
            pipe.delete(Job.key_for(job_id))
        pipe.execute()

    def request_stop(self, signum, frame):
        """First SIGTERM: take no new work, let the render finish for up to the grace period."""
        rt = runtime._CURRENT
        if rt is not None and not rt.stopping:
            rt.stopping = True
            try:
                rt.beat()  # tell the manager at once, so it stops prefetching into our queue
            except Exception:
                pass
            grace = rt.settings.shutdown_grace
            timer = threading.Timer(grace, rt.hand_back_now)
            timer.daemon = True
            timer.start()
            if rt.lease is not None:
                log.info("finishing %s before exiting (at most %g s more; SIGTERM again to hand it back now)", rt.lease.label, grace)
        super().request_stop(signum, frame)

    def request_force_stop(self, signum, frame):
        """Second SIGTERM: stop the render now and hand the task back, then exit."""
        rt = runtime._CURRENT
        if rt is not None:
            rt.hand_back_now()
