"""Benchmark: one heavy builtin frame rendered whole on one worker against the same frame in 2x2
tiles on two workers, each timed from submit to the committed frame, in the same run.

    uv run python -m benchmarks tiles [--scene examples/hero-still.toml]

Target (issue 3): tiled / whole ratio at most 0.6x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.farm import temporary_farm, wait_for_job
from benchmarks.figures import Figure, show
from renderfarm.client import Submission, submit

HERO = Path(__file__).resolve().parent.parent / "examples" / "hero-still.toml"
TARGET = 0.6


def timed(settings, submission: Submission, timeline: bool) -> float:
    start = time.time()
    job_id = submit(settings, submission)
    took = wait_for_job(settings, job_id) - start
    if timeline:
        print_timeline(settings, job_id, start)
    return took


def print_timeline(settings, job_id: str, start: float) -> None:
    """When each attempt was queued, started and finished, relative to the submit."""
    from sqlalchemy import select

    from renderfarm.db import make_engine, session_scope
    from renderfarm.models import Attempt, Task

    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        rows = session.execute(
            select(Task.index, Task.kind, Attempt.worker, Attempt.queued_at, Attempt.started_at, Attempt.finished_at)
            .join(Attempt, Attempt.task_id == Task.id).where(Task.job_id == job_id).order_by(Attempt.queued_at)
        ).all()
    engine.dispose()
    for index, kind, worker, queued, started, finished in rows:
        print(f"  task {index} {kind:8} {worker:12} queued +{queued - start:6.2f}  started +{(started or 0) - start:6.2f}"
              f"  finished +{(finished or 0) - start:6.2f}")


def measure(scene: Path = HERO, timeline: bool = False) -> list[Figure]:
    with temporary_farm(2) as settings:
        whole = timed(settings, Submission(scene=scene, name="whole"), timeline)
        tiled = timed(settings, Submission(scene=scene, name="tiled", tiles="2x2"), timeline)
    return [Figure("tiles", f"{scene.name} in 2x2 tiles on 2 workers, submit to committed frame", tiled, "s",
                   "the whole frame on 1 worker", whole, target=f"at most {TARGET}x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=HERO)
    parser.add_argument("--timeline", action="store_true", help="print when each attempt ran")
    args = parser.parse_args()
    show(measure(args.scene, args.timeline))


if __name__ == "__main__":
    main()
