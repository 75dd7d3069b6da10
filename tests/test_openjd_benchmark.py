"""The OpenJD benchmark in small (issue 18, acceptance 8): both jobs of 4 tasks run to done on
its 2-worker farm and it reports OpenJD's time per task against the null renderer's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_the_openjd_benchmark_compares_true_tasks_with_null_tasks_on_one_farm():
    code = ("import json; from benchmarks.openjd import measure; "
            "print(json.dumps([f.to_json() for f in measure(tasks=4, rounds=1)]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    per_task, wall = json.loads(done.stdout.splitlines()[-1])
    assert per_task["what"] == "time per task on a worker, OpenJD /bin/true (4 tasks, 2 workers)"
    assert per_task["unit"] == "ms" and per_task["baseline"] == "null renderer, same farm"
    assert per_task["target"] == "at most 1.5x" and per_task["ratio"] == per_task["value"] / per_task["baseline_value"]
    assert 0 < wall["value"] < 120 and 0 < wall["baseline_value"] < 120
    assert per_task["value"] == pytest.approx(wall["value"] * 2 / 4 * 1000)
