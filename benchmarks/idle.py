"""Benchmark: how long a task submitted after the farm sat idle waits to start, against the same
wait on a warm farm, in the same run (median of 3 each), and what the idle farm logged.

    uv run python -m benchmarks idle               # 3 idle minutes before each task (about 10 minutes)
    uv run python -m benchmarks.idle --idle 20     # a quick run

A local farm of 2 workers renders one-frame null-renderer jobs. Each round sleeps `--idle`
seconds, submits a job (cold), and as soon as it is done submits another (warm). Figures: from
the submit to the task's start as the worker recorded it, and from the manager's enqueue to that
start (the worker's pickup alone). A worker whose Redis socket timed out during RQ's 405 s
blocking dequeue used to back off up to a minute: 21-53 s after 3 idle minutes, against 0.6-0.76 s
warm. Target (issue "No message and no fault can wedge the farm"): under 1 s; and over the idle
minutes the farm's logs hold no line of a Redis timeout or reconnect.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from benchmarks.farm import temporary_farm, wait_for_job
from benchmarks.figures import Figure, show

SCENE = Path(__file__).resolve().parent.parent / "examples" / "orbit.toml"
# What RQ and our daemon log when Redis times out or the work loop reconnects.
NOISE = re.compile(r"timeout|timed out|could not connect|reconnect|lost redis", re.IGNORECASE)
SERVICES = ("valkey", "seaweedfs")  # their own logs are not the farm's


def start_latency(settings, name: str) -> tuple[float, float]:
    """(submit to start, enqueue to start), in seconds, of a one-frame null-renderer job."""
    from sqlmodel import select

    from renderfarm.client import Submission, submit
    from renderfarm.db import make_engine, session_scope
    from renderfarm.models import Attempt

    submitted = time.time()
    job = submit(settings, Submission(scene=SCENE, renderer="null", frames="1", name=name))
    wait_for_job(settings, job)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            attempt = session.exec(select(Attempt).where(Attempt.job_id == job)).one()
            return attempt.started_at - submitted, attempt.started_at - attempt.queued_at
    finally:
        engine.dispose()


def noisy_lines(logs: Path) -> list[str]:
    """Lines of the manager's and workers' logs that tell of a Redis timeout or reconnect."""
    found = []
    for path in sorted(logs.glob("*.log")):
        if path.stem in SERVICES:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if NOISE.search(line):
                found.append(f"{path.name}: {line}")
    return found


def measure(idle: float = 180.0, rounds: int = 3) -> list[Figure]:
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    with temporary_farm(2) as settings:
        start_latency(settings, "warm-up")  # the first job opens what every later one reuses
        for n in range(1, rounds + 1):
            time.sleep(idle)
            cold.append(start_latency(settings, f"cold-{n}"))
            warm.append(start_latency(settings, f"warm-{n}"))
            print(f"   round {n}: submit to start {cold[-1][0]:.2f} s after {idle:g} s idle, "
                  f"{warm[-1][0]:.2f} s warm", flush=True)
        noise = noisy_lines(settings.state_dir / "logs")
    for line in noise[:10]:
        print(f"   log: {line}")
    waited = f"after {idle:g} s idle, median of {rounds}"
    return [
        Figure("idle", f"submit to task start {waited}", statistics.median(c[0] for c in cold), "s",
               "the same on a warm farm", statistics.median(w[0] for w in warm), target="under 1 s"),
        Figure("idle", f"manager's enqueue to task start {waited}", statistics.median(c[1] for c in cold), "s",
               "the same on a warm farm", statistics.median(w[1] for w in warm), target="under 1 s"),
        Figure("idle", f"Redis timeout or reconnect lines in the farm's logs over {rounds} x {idle:g} s idle",
               len(noise), "lines", target="0"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=180.0, metavar="SECONDS",
                        help="how long the farm sits idle before each cold task (default: 180)")
    parser.add_argument("--rounds", type=int, default=3, help="cold and warm tasks, each (default: 3)")
    args = parser.parse_args()
    if args.idle < 0:
        parser.error(f"--idle: {args.idle:g} is below 0")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is below 1")
    show(measure(args.idle, args.rounds))


if __name__ == "__main__":
    main()
