"""The benchmark suite's entry point: a table with a ratio column, JSON figures, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_runs_a_named_benchmark_and_writes_its_figures(tmp_path):
    out = tmp_path / "figures.json"
    done = run("startup", "--json", str(out))
    assert done.returncode == 0, done.stderr
    header = [line for line in done.stdout.splitlines() if line.startswith("benchmark")]
    assert header and "ratio" in header[0]
    row = [line for line in done.stdout.splitlines() if line.startswith("startup ")]
    assert row and "python -c pass" in row[0]
    report = json.loads(out.read_text())
    (figure,) = report["figures"]
    assert figure["benchmark"] == "startup" and figure["unit"] == "ms"
    assert 0 < figure["baseline_value"] < figure["value"] < 5000
    assert figure["ratio"] == figure["value"] / figure["baseline_value"]
    assert report["machine"]["cpus"] >= 1 and report["failed"] == []


def test_every_listed_benchmark_has_a_measure_function():
    from benchmarks.__main__ import BENCHMARKS

    listed = run("--list")
    assert listed.returncode == 0
    for name in BENCHMARKS:
        assert name in listed.stdout
        module = __import__(f"benchmarks.{name}", fromlist=["measure"])
        assert callable(module.measure), name


def test_an_unknown_benchmark_is_one_clear_error():
    done = run("warp-speed")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown benchmark 'warp-speed'; choose from " + ", ".join(
            __import__("benchmarks.__main__", fromlist=["BENCHMARKS"]).BENCHMARKS)
    ]


def test_scale_runs_enrolled_simulated_nodes_against_a_manager():
    """The scale benchmark in small: 4 enrolled nodes, each acting as itself (its own Valkey user,
    key, stream and S3 identity), 40 null tasks; every task is seen done and no dead letter is
    kept (the benchmark fails on one: the manager refused something a simulated node sent)."""
    code = ("import json; from benchmarks.scale import measure; "
            "print(json.dumps([f.to_json() for f in measure(workers=4, tasks=40, processes=2)]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "4 nodes enrolled" in done.stdout
    rate, p50, p99 = json.loads(done.stdout.splitlines()[-1])
    assert rate["what"] == "events applied per second, 4 simulated workers, 40 null tasks"
    assert rate["unit"] == "events/s" and rate["value"] > 0 and rate["ratio"] == rate["value"] / 1000
    assert 0 <= p50["value"] <= p99["value"] < 60 and p99["target"] == "under 2 s"


BURN = "import time\nend = time.process_time() + {0}\nwhile time.process_time() < end: pass\n"


def test_the_efficiency_cpu_figure_counts_the_farms_processes_and_not_their_renderers():
    """benchmarks.efficiency.farm_cpu: the own CPU of this process's children alive now (the
    farm's processes); a grandchild's (a renderer's) is not counted, even once its parent reaped it."""
    from benchmarks.efficiency import farm_cpu

    child_code = (BURN.format(0.3) + "import subprocess, sys\n"
                  f"subprocess.run([sys.executable, '-c', {BURN.format(0.6)!r}], check=True)\n"
                  "print('burnt', flush=True)\nsys.stdin.read()\n")
    before = farm_cpu()
    child = subprocess.Popen([sys.executable, "-c", child_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        used = farm_cpu() - before
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert 0.3 <= used < 0.8  # its own 0.3 s and its start; with the grandchild's 0.6 s it would be over 0.9
