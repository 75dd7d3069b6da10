"""Benchmark: `farm status JOB` and `farm jobs` with a 100,000-task job in the database, on SQLite
and on PostgreSQL, each as the installed command's whole wall time (best of N), against
`python -c pass` in the same run. Target (issue 7): under 0.5 s for both, on both databases.

    uv run python -m benchmarks status [--tasks 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.farm import temporary_farm
from benchmarks.figures import Figure, show

SCENE = Path(__file__).resolve().parent.parent / "examples" / "orbit.toml"
PG_URL = os.environ.get("FARM_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def best_of(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
        best = min(best, time.perf_counter() - start)
    return best


def timed_commands(tasks: int, runs: int, **env: str) -> tuple[float, float]:
    from renderfarm.client import Submission, send_verb, submit

    farm = str(Path(sys.executable).parent / "farm")
    with temporary_farm(2, **env) as settings:
        job = submit(settings, Submission(scene=SCENE, renderer="null", frames=f"1-{tasks}", name="big"))
        send_verb(settings, "suspend", job)  # a quiet farm: the reads are measured, not the renders
        return best_of([farm, "status", job], runs), best_of([farm, "jobs"], runs)


def postgres_schema() -> tuple[str, callable] | None:
    """A throwaway schema on the machine's PostgreSQL, or None if there is none."""
    try:
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        schema = f"rf_bench_{secrets.token_hex(4)}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as e:  # no PostgreSQL here
        print(f"(no PostgreSQL at {PG_URL}: {type(e).__name__}; its figures are skipped)")
        return None

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{PG_URL}?options=-csearch_path%3D{schema}", drop


def measure(tasks: int = 100_000, runs: int = 5) -> list[Figure]:
    baseline = best_of([sys.executable, "-c", "pass"], runs)
    figures = []
    status, jobs = timed_commands(tasks, runs)
    figures += [
        Figure("status", f"farm status JOB, {tasks:,} tasks, SQLite", status, "s", "python -c pass", baseline,
               target="under 0.5 s"),
        Figure("status", f"farm jobs, {tasks:,} tasks, SQLite", jobs, "s", "python -c pass", baseline,
               target="under 0.5 s"),
    ]
    pg = postgres_schema()
    if pg is not None:
        url, drop = pg
        try:
            status, jobs = timed_commands(tasks, runs, FARM_DATABASE_URL=url)
        finally:
            drop()
        figures += [
            Figure("status", f"farm status JOB, {tasks:,} tasks, PostgreSQL", status, "s", "python -c pass", baseline,
                   target="under 0.5 s"),
            Figure("status", f"farm jobs, {tasks:,} tasks, PostgreSQL", jobs, "s", "python -c pass", baseline,
                   target="under 0.5 s"),
        ]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    show(measure(args.tasks, args.runs))


if __name__ == "__main__":
    main()
