"""Benchmark: submitting a 100,000-frame job until the manager has committed it, against raw RQ
`Queue.enqueue_many` of as many no-op jobs, in the same run.

    uv run python -m benchmarks submit [--frames 100000]

Prints the wall time and the peak memory of the submitting process and of the manager (their
VmHWM, reset before the submit). Targets (issue 7): under 10 s, under 500 MB, at most 3x the
raw enqueue.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.farm import temporary_farm
from benchmarks.figures import Figure, show

SCENE = Path(__file__).resolve().parent.parent / "examples" / "orbit.toml"
SUBMIT = """
import json, sys, time
open("/proc/self/clear_refs", "w").write("5")  # a child's peak would otherwise start at its parent's
start = time.time()
from renderfarm.client import Submission, submit
from renderfarm.config import load_settings
job = submit(load_settings(), Submission(scene=sys.argv[1], renderer="null", frames=sys.argv[2], name="big"))
took = time.time() - start
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"job": job, "seconds": took, "peak_kb": peak}))
"""


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def farm_submit(frames: int) -> tuple[float, float, float]:
    """(seconds, submitting process peak MB, manager peak MB)."""
    import json

    with temporary_farm(2) as settings:
        from renderfarm.localfarm import LocalFarm

        manager = next(p for p in LocalFarm(settings).running() if p.role == "manager")
        reset_peak(manager.pid)
        before = peak_kb(manager.pid)
        out = subprocess.run([sys.executable, "-c", SUBMIT, str(SCENE), f"1-{frames}"], env=os.environ,
                             capture_output=True, text=True, check=True)
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        manager_peak = max(peak_kb(manager.pid), before)
        from renderfarm.client import send_verb

        send_verb(settings, "cancel", doc["job"])
    return doc["seconds"], doc["peak_kb"] / 1024, manager_peak / 1024


def raw_enqueue(count: int) -> float:
    import redis
    from rq import Queue

    from renderfarm.localfarm import services

    with tempfile.TemporaryDirectory(prefix="rf-rq-") as folder:
        port = services.free_ports(1)[0]
        server = services.spawn(services.valkey_argv(Path(folder), port, "bench", "127.0.0.1"), cwd=Path(folder),
                                env=dict(os.environ), log_path=Path(folder) / "log", detach=False)
        try:
            r = redis.Redis(port=port, password="bench")
            services.wait_until(r.ping, timeout=20, proc=server, what="valkey", log_path=None)
            start = time.time()
            jobs = [Queue.prepare_data("benchmarks.dispatch.noop", result_ttl=0) for _ in range(count)]
            Queue("bench", connection=r).enqueue_many(jobs)
            return time.time() - start
        finally:
            server.terminate()
            server.wait(10)


def measure(frames: int = 100_000) -> list[Figure]:
    baseline = raw_enqueue(frames)
    seconds, submit_mb, manager_mb = farm_submit(frames)
    return [
        Figure("submit", f"submit {frames:,} frames until committed", seconds, "s",
               f"RQ enqueue_many of {frames:,} no-op jobs", baseline, target="under 10 s and at most 3.0x"),
        Figure("submit", "peak memory of the submitting process", submit_mb, "MB", target="under 500 MB"),
        Figure("submit", "peak memory of the manager while committing", manager_mb, "MB", target="under 500 MB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    args = parser.parse_args()
    show(measure(args.frames))


if __name__ == "__main__":
    main()
