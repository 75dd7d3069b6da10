"""Benchmark: the farm's time per task of an OpenJD task whose action is `/bin/true` against the
null renderer's, on the same 2-worker local farm, in the same run (issue 18, acceptance 8).

    uv run python -m benchmarks openjd [--tasks 100] [--rounds 2]

Each round submits a job of N null-renderer tasks, waits for it, then a one-step OpenJD job of N
tasks (`/bin/true`, an INT task parameter 1-N), and waits for it: alternating, so that a noisy
neighbour hurts both alike; best of the rounds each. A job's time is from its submit to the
manager's commit of its last task; the time per task on a worker is that times the workers, over
N. Both kinds are warmed first (the OpenJD job's session is entered once per worker and job, as
in a real run). Target: OpenJD / null at most 1.5x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.farm import temporary_farm, wait_for_job
from benchmarks.figures import Figure, show

SCENE = Path(__file__).resolve().parent.parent / "examples" / "orbit.toml"
WORKERS = 2


def template(tasks: int) -> dict:
    return {
        "specificationVersion": "jobtemplate-2023-09", "name": "true",
        "steps": [{"name": "true",
                   "parameterSpace": {"taskParameterDefinitions": [
                       {"name": "N", "type": "INT", "range": f"1-{tasks}"}]},
                   "script": {"actions": {"onRun": {"command": "/bin/true"}}}}],
    }


def null_job(settings, tasks: int) -> float:
    """Seconds from submit to the last commit of a job of `tasks` one-frame null tasks."""
    from renderfarm.client import Submission, submit

    start = time.time()
    job = submit(settings, Submission(scene=SCENE, renderer="null", frames=f"1-{tasks}", name="null"))
    return wait_for_job(settings, job) - start


def openjd_job(settings, tasks: int, folder: Path) -> float:
    """Seconds from submit to the last commit of a one-step OpenJD job of `tasks` `/bin/true`s."""
    from renderfarm.jobtemplates import TemplateSubmission, submit_template

    path = folder / f"true-{tasks}.json"
    path.write_text(json.dumps(template(tasks)))
    start = time.time()
    job = submit_template(settings, TemplateSubmission(path=path, name="openjd"))
    return wait_for_job(settings, job) - start


def measure(tasks: int = 100, rounds: int = 2) -> list[Figure]:
    best_null = best_openjd = float("inf")
    with tempfile.TemporaryDirectory(prefix="rf-openjd-") as folder, \
            temporary_farm(WORKERS, FARM_ALLOW_OPENJD="1") as settings:
        null_job(settings, 4)
        openjd_job(settings, 4, Path(folder))
        for _ in range(rounds):
            best_null = min(best_null, null_job(settings, tasks))
            best_openjd = min(best_openjd, openjd_job(settings, tasks, Path(folder)))
    per_task = 1000 * WORKERS / tasks
    return [
        Figure("openjd", f"time per task on a worker, OpenJD /bin/true ({tasks} tasks, {WORKERS} workers)",
               best_openjd * per_task, "ms", "null renderer, same farm", best_null * per_task,
               target="at most 1.5x"),
        Figure("openjd", f"job wall time, {tasks} OpenJD /bin/true tasks", best_openjd, "s",
               f"{tasks} null tasks", best_null),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    show(measure(args.tasks, args.rounds))


if __name__ == "__main__":
    main()
