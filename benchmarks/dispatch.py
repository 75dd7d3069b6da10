"""Benchmark: the farm's dispatch rate against raw RQ on the same machine, in the same run.

    uv run python -m benchmarks dispatch [--tasks 1000]

farm: a job of N one-frame tasks with the null renderer on a local farm of 2 workers, timed from
the submit to the manager's last commit (tasks per second, and the farm's own time per task on a
worker). Baselines: N no-op RQ jobs on 2 of RQ's default forking `Worker`s, and on 2
`SimpleWorker`s, against a private Valkey, timed from the first enqueue to the last job finished.
Target (issue 7): farm / forking-RQ rate ratio at least 1.0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.farm import temporary_farm, wait_for_job
from benchmarks.figures import Figure, show

SCENE = Path(__file__).resolve().parent.parent / "examples" / "orbit.toml"


def noop() -> None:
    """The job raw RQ runs."""


def farm_rate(tasks: int) -> tuple[float, float]:
    """(tasks per second, seconds) for `tasks` null-renderer tasks on a 2-worker local farm."""
    from renderfarm.client import Submission, submit

    with temporary_farm(2) as settings:
        warm = submit(settings, Submission(scene=SCENE, renderer="null", frames="1-4", name="warm"))
        wait_for_job(settings, warm)
        start = time.time()
        job = submit(settings, Submission(scene=SCENE, renderer="null", frames=f"1-{tasks}", name="dispatch"))
        finished = wait_for_job(settings, job)
    took = finished - start
    return tasks / took, took


def rq_rate(tasks: int, worker_class: str) -> float:
    """Jobs per second for `tasks` no-op jobs on 2 RQ workers of `worker_class`."""
    import redis
    from rq import Queue

    from renderfarm.localfarm import services

    with tempfile.TemporaryDirectory(prefix="rf-rq-") as folder:
        port = services.free_ports(1)[0]
        argv = services.valkey_argv(Path(folder), port, "bench", "127.0.0.1")
        server = services.spawn(argv, cwd=Path(folder), env=dict(os.environ), log_path=Path(folder) / "log", detach=False)
        try:
            r = redis.Redis(port=port, password="bench")
            services.wait_until(r.ping, timeout=20, proc=server, what="valkey", log_path=None)
            queue = Queue("bench", connection=r)
            jobs = [Queue.prepare_data("benchmarks.dispatch.noop", result_ttl=0) for _ in range(tasks)]
            url = f"redis://:bench@127.0.0.1:{port}/0"
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            # Workers start first and wait, as the farm's do: their start-up is not timed.
            workers = [
                subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--url", url, "-w", worker_class,
                                  "--quiet", "bench"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(2)
            ]
            from rq import Worker
            from rq.registry import StartedJobRegistry

            services.wait_until(lambda: len(Worker.all(connection=r)) == 2, timeout=60, proc=None, what="rq workers",
                                log_path=None)
            started = StartedJobRegistry("bench", connection=r)
            start = time.time()
            queue.enqueue_many(jobs)
            while len(queue) or started.count:
                time.sleep(0.002)
            took = time.time() - start
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(60)
        finally:
            server.terminate()
            server.wait(10)
    return tasks / took


def measure(tasks: int = 1000, rounds: int = 2) -> list[Figure]:
    """Best of `rounds` of each, alternating, so that a noisy neighbour hurts both sides alike."""
    forking = simple = rate = 0.0
    took = float("inf")
    for _ in range(rounds):
        forking = max(forking, rq_rate(tasks, "rq.Worker"))
        simple = max(simple, rq_rate(tasks, "rq.SimpleWorker"))
        r, t = farm_rate(tasks)
        if r > rate:
            rate, took = r, t
    overhead_ms = took * 2 / tasks * 1000
    return [
        Figure("dispatch", "farm tasks/s (null renderer, 2 workers)", rate, "tasks/s",
               "RQ forking Worker x2, no-op jobs", forking, target=">= 1.0x"),
        Figure("dispatch", "farm tasks/s vs RQ SimpleWorker", rate, "tasks/s", "RQ SimpleWorker x2, no-op jobs", simple),
        Figure("dispatch", "farm time per task on a worker", overhead_ms, "ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    show(measure(args.tasks, args.rounds))


if __name__ == "__main__":
    main()
