"""Benchmark: `farm --help` from the installed entry point against a bare `python -c pass`.

    uv run python -m benchmarks startup [--runs 10]

Both are timed in this one run, best of N (the least disturbed by the rest of the machine).
The target is 0.3 s for `farm --help`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.figures import Figure, show

TARGET = 0.3


def best_of(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def measure(runs: int = 10) -> list[Figure]:
    farm = str(Path(sys.executable).parent / "farm")
    baseline = best_of([sys.executable, "-c", "pass"], runs)
    help_time = best_of([farm, "--help"], runs)
    return [Figure("startup", f"farm --help, best of {runs}", help_time * 1000, "ms", "python -c pass",
                   baseline * 1000, target=f"under {TARGET * 1000:.0f} ms")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    show(measure(parser.parse_args().runs))


if __name__ == "__main__":
    main()
