"""`farm --help` from the installed entry point starts fast (target 0.3 s; guard at twice that)."""

from __future__ import annotations

import subprocess
import time

from conftest import farm_command

TARGET = 0.3


def best_of(argv: list[str], runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def test_farm_help_is_fast():
    took = best_of(farm_command() + ["--help"])
    print(f"farm --help: {took * 1000:.0f} ms (target {TARGET * 1000:.0f} ms)")
    assert took < 2 * TARGET


def test_help_imports_no_heavy_libraries():
    probe = (
        "import sys, runpy; sys.argv = ['farm', '--help']\n"
        "try:\n    runpy.run_module('renderfarm_cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('sqlmodel', 'sqlalchemy', 'boto3', 'rq', 'redis', 'numpy', 'PIL', 'rich') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([farm_command()[0].replace("/farm", "/python"), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY=", out.stdout
