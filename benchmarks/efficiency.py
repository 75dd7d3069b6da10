"""Benchmark: a 16-frame builtin job on a 2-worker local farm, from submit to the last commit,
against the same 16 frames rendered by 2 bare renderer processes in parallel (8 frames each),
in the same run, best of N each. Target (issue 7): farm / bare ratio at most 1.11x.

On 2 cores the farm's own CPU is wall time taken from the renders, and the machine's noise moves
the wall ratio by more than that CPU: a second figure is the CPU the farm's own processes
(manager, workers without their renderers, Valkey, SeaweedFS) used per job, against the CPU of
the bare renders (median of the rounds). It compares code across runs where wall times cannot.

    uv run python -m benchmarks efficiency [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.farm import temporary_farm, wait_for_job
from benchmarks.figures import Figure, show

SCENE = Path(__file__).resolve().parent.parent / "examples" / "bouncing-balls.toml"
FRAMES = list(range(1, 17))


def bare_with_cpu() -> tuple[float, float]:
    """The bare renders' wall time, and the CPU (user + system) they used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = _bare()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _bare() -> float:
    with tempfile.TemporaryDirectory(prefix="rf-bare-") as out:
        halves = [FRAMES[0::2], FRAMES[1::2]]
        start = time.time()
        procs = [
            subprocess.Popen([sys.executable, "-m", "renderfarm.renderers.builtin", f"--scene={SCENE}",
                              f"--frames={','.join(map(str, half))}", f"--output={out}/bare.{{frame}}.png"],
                             stdout=subprocess.DEVNULL)
            for half in halves
        ]
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError("a bare render failed")
        return time.time() - start


def farm_with_cpu(settings) -> tuple[float, float | None]:
    """The job's wall time, from submit to its commit, and the CPU the farm's own processes used
    meanwhile (None where /proc cannot tell)."""
    from renderfarm.client import Submission, submit

    before = farm_cpu()
    start = time.time()
    job = submit(settings, Submission(scene=SCENE, frames=f"{FRAMES[0]}-{FRAMES[-1]}", name="efficiency"))
    wall = wait_for_job(settings, job) - start
    after = farm_cpu()
    return wall, (after - before if before is not None and after is not None else None)


def farm_cpu() -> float | None:
    """CPU seconds (user + system) used so far by this process's children alive now: the
    processes of temporary_farm (started here, not detached), each its own CPU, not that of its
    renderers (grandchildren). None without Linux's /proc."""
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def measure(rounds: int = 2) -> list[Figure]:
    best_bare = best_farm = float("inf")
    bare_cpus, farm_cpus = [], []
    with temporary_farm(2) as settings:
        for _ in range(rounds):  # alternating, so a noisy neighbour hurts both alike
            wall, cpu = bare_with_cpu()
            best_bare, bare_cpus = min(best_bare, wall), bare_cpus + [cpu]
            wall, cpu = farm_with_cpu(settings)
            best_farm, farm_cpus = min(best_farm, wall), farm_cpus + ([cpu] if cpu is not None else [])
    figures = [
        Figure("efficiency", f"farm wall time, {len(FRAMES)} builtin frames on 2 workers", best_farm, "s",
               "2 bare renderer processes in parallel", best_bare, target="at most 1.11x"),
    ]
    if farm_cpus:
        figures.append(Figure("efficiency", "CPU of the farm's own processes a job (renders aside)",
                              statistics.median(farm_cpus), "s", "CPU of the 2 bare renders", statistics.median(bare_cpus)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    show(measure(args.rounds))


if __name__ == "__main__":
    main()
