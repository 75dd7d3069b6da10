"""Benchmark: 200 simulated render nodes against one manager, and how soon `farm status` sees a frame.

    uv run python -m benchmarks scale [--workers 200] [--tasks 6000] [--processes 4]

A local farm (Valkey, SeaweedFS, SQLite, the manager) with no real workers. Instead, the benchmark
enrolls N nodes through the manager (as `farm node add` does), writes their credentials files
(0600) in a temporary directory, and a few simulator processes (benchmarks/simnode.py) act as
those nodes, each as itself with the farm's own code: its own Valkey user, its sealed heartbeats
on its own key, its own RQ queue, each task order opened with its key and checked as the worker
checks it, the lease checked, the null renderer's image uploaded under the attempt's prefix with
its own S3 identity, and sealed started, progress and done events on its own event stream. Their
renders take no time, so the manager is the bottleneck: the load offered is whatever it hands
out, and each event costs it what a real one does (unsealing, the owner's checks, each output
read back, checked and decoded before it is promoted).

Figures: events the manager applied per second (three per task: started, one progress, done),
from the first event posted to the job's commit; and the status lag of each task, from its done
event being posted to the database showing it done to a reader (a poll every 20 ms, as
`farm status` reads: a plain read-only connection), p50 and p99. Targets (issue 7): at least
1,000 events applied per second; p99 status lag under 2 s. There is no baseline to divide by:
the ratio column compares each figure with its target. A run in which the manager refused
anything a simulated node sent (a dead letter) fails: the simulation must be exactly a node's.
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


def measure(workers: int = 200, tasks: int = 6000, processes: int = 4) -> list[Figure]:
    from renderfarm.client import Submission, submit
    from renderfarm.localfarm.services import node_env

    with temporary_farm(0) as settings, tempfile.TemporaryDirectory(prefix="rf-scale-") as folder:
        began = time.time()
        files = enroll_nodes(settings, workers, Path(folder))
        print(f"scale: {workers} nodes enrolled in {time.time() - began:.1f} s", flush=True)
        sims, records = [], []
        per = -(-workers // processes)
        for p in range(0, workers, per):
            record = Path(folder) / f"sim-{p}.json"
            records.append(record)
            sims.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.simnode", "--record", str(record), *map(str, files[p : p + per])],
                cwd=ROOT, env=node_env(dict(os.environ)),  # a node holds its own credentials, none of the farm's
            ))
        try:
            _wait_for_workers(settings, workers, sims, timeout=60 + workers / 2)
            start = time.time()
            job = submit(settings, Submission(scene=SCENE, renderer="null", frames=f"1-{tasks}", name="scale"))
            poller = StatusPoller(Path(settings.database_url.removeprefix("sqlite:///")), job)
            finished = _wait_for_job(settings, job, sims, timeout=1800)
            time.sleep(4 * POLL)
            poller.stop()
        finally:
            for sim in sims:
                if sim.poll() is None:
                    sim.send_signal(signal.SIGTERM)
            for sim in sims:
                sim.wait(60)
        done_at, failures = {}, []
        for record in records:
            got = json.loads(record.read_text()) if record.exists() else {"done_at": {}, "failures": ["no record"]}
            done_at.update({int(k): v for k, v in got["done_at"].items()})
            failures += got["failures"]
        if failures:
            raise RuntimeError(f"{len(failures)} simulated node(s) failed; the first: {failures[0]}")
        _refuse_dead_letters(settings)
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


def enroll_nodes(settings, count: int, folder: Path) -> list[Path]:
    """Enroll nodes sim-000... through the running manager, as `farm node add` does, and write each
    one's credentials file (0600) in `folder`. A few at a time: each is a round trip to the manager."""
    from concurrent.futures import ThreadPoolExecutor

    from renderfarm.enrollment import enroll, write_credentials

    def one(i: int) -> Path:
        name = f"sim-{i:03d}"
        return write_credentials(folder / f"{name}.farm-node", enroll(settings, name))

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def _wait_for_job(settings, job_id: str, sims: list[subprocess.Popen], timeout: float) -> float:
    """When the job finished (wait_for_job), unless a simulator process ends or the manager
    refuses something first: then at once, rather than after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return wait_for_job(settings, job_id, timeout=5)
        except TimeoutError:
            ended = [sim for sim in sims if sim.poll() is not None]
            if ended:
                raise RuntimeError(f"a simulator process ended (exit {ended[0].returncode}) "
                                   "before the job did") from None
            _refuse_dead_letters(settings)
            if time.monotonic() > deadline:
                raise


def _refuse_dead_letters(settings) -> None:
    """A dead letter means the manager refused something a simulated node sent: not a node's run."""
    from renderfarm import streams
    from renderfarm.redisconn import connect

    letters = streams.dead_letters(connect(settings), 3)
    if letters:
        raise RuntimeError(f"the manager kept {len(letters)}+ dead letter(s); the first: {letters[0][1].reason}")


def _wait_for_workers(settings, count: int, sims: list[subprocess.Popen], timeout: float) -> None:
    """Until the manager has recorded every simulated node (it hands work only to those)."""
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
            ended = [sim for sim in sims if sim.poll() is not None]
            if ended:
                raise RuntimeError(f"a simulator process ended (exit {ended[0].returncode}) before its nodes beat")
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise TimeoutError(f"the manager did not see {count} simulated nodes within {timeout:g} s")


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=200, help="simulated nodes, each enrolled")
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--processes", type=int, default=4, help="simulator processes (a thread per node in each)")
    args = parser.parse_args()
    show(measure(args.workers, args.tasks, args.processes))


if __name__ == "__main__":
    main()
