"""Benchmark: 200 simulated workers against one manager, and how soon `farm status` sees a frame.

    uv run python -m benchmarks scale [--workers 200] [--tasks 6000] [--processes 4]

A local farm (Valkey, SeaweedFS, SQLite, the manager) with no real workers. Instead, a few
simulator processes speak the worker's side of the protocol for many workers each, with the
farm's own code: heartbeats (`presence.beat`), each worker's RQ queue, the lease check before a
render, the null renderer's image uploaded under the attempt's prefix with its version tag, and
the started, progress and done events on the event stream. Their renders take no time, so the
manager is the bottleneck: the load offered is whatever it hands out.

Figures: events the manager applied per second (three per task: started, one progress, done),
from the first event posted to the job's commit; and the status lag of each task, from its done
event being posted to the database showing it done to a reader (a poll every 20 ms, as
`farm status` reads: a plain read-only connection), p50 and p99. Targets (issue 7): at least
1,000 events applied per second; p99 status lag under 2 s. There is no baseline to divide by:
the ratio column compares each figure with its target.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.farm import temporary_farm, wait_for_job
from benchmarks.figures import Figure, show

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "examples" / "orbit.toml"
EVENTS_PER_TASK = 3
POLL = 0.02


# --- a simulator process: many workers ------------------------------------------------------


def simulate(first: int, count: int, threads: int, record: Path) -> None:
    """Run workers sim-{first}..sim-{first+count-1} until SIGTERM; then write, per task, the
    time its done event was posted."""

    from renderfarm import keys, presence
    from renderfarm.config import load_settings
    from renderfarm.redisconn import connect
    from renderfarm.storage import open_storage

    settings = load_settings()
    names = [f"sim-{i:03d}" for i in range(first, first + count)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    done_at: dict[int, float] = {}
    started = time.time()

    def beat() -> None:
        r = connect(settings)
        while not stop.is_set():
            for name in names:
                info = {"name": name, "host": "simulator", "pid": os.getpid(), "pool": "default", "cores": 1,
                        "version": "sim", "started_at": started, "state": "idle", "task": None,
                        "attempt_id": None, "site": "local", "ttl": settings.heartbeat_ttl, "ts": time.time()}
                presence.beat(r, name, info, settings.heartbeat_ttl)
            stop.wait(settings.heartbeat_ttl / 3)

    def work(mine: list[str]) -> None:
        r = connect(settings)
        storage = open_storage(settings)
        by_queue = {f"rq:queue:{keys.queue_name(n)}": n for n in mine}
        queue_keys = list(by_queue)
        scratch = Path(tempfile.mkdtemp(prefix="rf-sim-"))
        images: dict[tuple, tuple[Path, str, int]] = {}
        while not stop.is_set():
            popped = r.blpop(queue_keys, timeout=1)
            if popped is None:
                continue
            queue_key, rq_id = (v.decode() for v in popped)
            run_one(r, storage, by_queue[queue_key], rq_id, scratch, images, done_at)

    pool = [threading.Thread(target=beat, daemon=True)]
    for t in range(threads):
        pool.append(threading.Thread(target=work, args=(names[t::threads],), daemon=True))
    for thread in pool:
        thread.start()
    stop.wait()
    record.write_text(json.dumps(done_at))


def run_one(r, storage, worker: str, rq_id: str, scratch: Path, images: dict, done_at: dict) -> None:
    """One attempt, as farm-worker runs it with the null renderer, minus the renderer's time."""
    import hashlib

    from rq.job import Job
    from rq.serializers import JSONSerializer

    from renderfarm import queues, streams
    from renderfarm.keys import EVENT_STREAM
    from renderfarm.renderers.null import _write_flat
    from renderfarm_worker.tasks import AttemptSpec

    job = Job.fetch(rq_id, connection=r, serializer=JSONSerializer)
    spec = AttemptSpec.parse(job.args[0])
    r.delete(job.key)  # result_ttl=0: RQ deletes a finished job
    if queues.lease_holder(r, spec.task_id) != spec.attempt_id:
        return
    ts = time.time()

    def post(kind: str, **fields) -> None:
        streams.post(r, EVENT_STREAM, {"type": kind, "worker": worker, "ts": time.time(),
                                       "attempt_id": spec.attempt_id, **fields})

    post("started", ts=ts)
    post("progress", progress=0.5)
    outputs = []
    for frame in spec.frames:
        shape = (spec.format, spec.width, spec.height)
        if shape not in images:
            path = scratch / f"{len(images)}.{spec.ext}"
            _write_flat(str(path), spec.width, spec.height, spec.format, 0.5)
            data = path.read_bytes()
            images[shape] = (path, hashlib.sha256(data).hexdigest(), len(data))
        path, digest, size = images[shape]
        key = spec.prefix + spec.output_name(frame)
        etag = storage.put_file(key, path, sha256=digest)
        outputs.append({"frame": frame, "key": key, "sha256": digest, "size": size, "etag": etag})
    post("done", outputs=outputs, usage={"seconds": time.time() - ts})
    done_at[spec.task_id] = time.time()


# --- the benchmark --------------------------------------------------------------------------


class StatusPoller:
    """Polls the database as `farm status` reads it and notes when each task first shows done."""

    def __init__(self, database: Path, job_id: str) -> None:
        self.database, self.job_id = database, job_id
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        since = 0.0
        while not self._stop.is_set():
            polled = time.time()
            rows = db.execute(
                "select id, finished_at from tasks where job_id = ? and state = 'done' and finished_at >= ?",
                (self.job_id, since),
            ).fetchall()
            for task_id, _ in rows:
                self.seen.setdefault(task_id, polled)
            if rows:  # a commit shows rows finished a moment before it: look back a little
                since = max(f for _, f in rows) - 10.0
            self._stop.wait(POLL)
        db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(workers: int = 200, tasks: int = 6000, processes: int = 4, threads: int = 4) -> list[Figure]:
    from renderfarm.client import Submission, submit

    with temporary_farm(0) as settings, tempfile.TemporaryDirectory(prefix="rf-scale-") as folder:
        per = -(-workers // processes)
        sims, records = [], []
        for p in range(processes):
            first, count = p * per, min(per, workers - p * per)
            if count <= 0:
                break
            record = Path(folder) / f"sim-{p}.json"
            records.append(record)
            sims.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.scale", "--simulate", str(first), str(count), str(threads),
                 str(record)], cwd=ROOT,
            ))
        try:
            _wait_for_workers(settings, workers)
            start = time.time()
            job = submit(settings, Submission(scene=SCENE, renderer="null", frames=f"1-{tasks}", name="scale"))
            poller = StatusPoller(Path(settings.database_url.removeprefix("sqlite:///")), job)
            finished = wait_for_job(settings, job, timeout=1800)
            time.sleep(4 * POLL)
            poller.stop()
        finally:
            for sim in sims:
                sim.send_signal(signal.SIGTERM)
            for sim in sims:
                sim.wait(60)
        done_at = {int(k): v for record in records for k, v in json.loads(record.read_text()).items()}
        first_event = _first_started(settings, job)
    lags = sorted(poller.seen[t] - posted for t, posted in done_at.items() if t in poller.seen)
    if len(lags) < tasks:
        raise RuntimeError(f"status saw {len(lags)} of {tasks} tasks done")
    rate = tasks * EVENTS_PER_TASK / (finished - first_event)
    p50, p99 = statistics.median(lags), lags[int(0.99 * (len(lags) - 1))]
    about = f"{workers} simulated workers, {tasks} null tasks"
    print(f"scale: {about}; submit to commit {finished - start:.1f} s; {tasks / (finished - first_event):.0f} tasks/s")
    return [
        Figure("scale", f"events applied per second, {about}", rate, "events/s", "target", 1000,
               target="at least 1,000"),
        Figure("scale", "status lag p50 (done event posted to status showing it)", p50, "s", "target", 2.0),
        Figure("scale", "status lag p99", p99, "s", "target", 2.0, target="under 2 s"),
    ]


def _wait_for_workers(settings, count: int, timeout: float = 60) -> None:
    """Until the manager has recorded every simulated worker (it hands work only to those)."""
    from sqlalchemy import func, select

    from renderfarm.db import make_engine, session_scope
    from renderfarm.models import Worker

    engine = make_engine(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with session_scope(engine) as session:
                if session.scalar(select(func.count()).select_from(Worker)) >= count:
                    return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise TimeoutError(f"the manager did not see {count} simulated workers within {timeout:g} s")


def _first_started(settings, job_id: str) -> float:
    from sqlalchemy import func, select

    from renderfarm.db import make_engine, session_scope
    from renderfarm.models import Attempt

    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        first = session.scalar(select(func.min(Attempt.started_at)).where(Attempt.job_id == job_id))
    engine.dispose()
    return first


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--simulate":
        first, count, threads, record = sys.argv[2:6]
        simulate(int(first), int(count), int(threads), Path(record))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="threads per simulator process")
    args = parser.parse_args()
    show(measure(args.workers, args.tasks, args.processes, args.threads))


if __name__ == "__main__":
    main()
