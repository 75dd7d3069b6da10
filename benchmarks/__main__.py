"""Run the benchmarks and print one table of figures, each with its baseline and their ratio.

    uv run python -m benchmarks                     # every benchmark (about 20 minutes)
    uv run python -m benchmarks dispatch status     # some of them
    uv run python -m benchmarks --list
    uv run python -m benchmarks.dispatch --tasks 200   # one, with its own options

Each benchmark runs against real parts (the local farm's Valkey and SeaweedFS, SQLite, and
PostgreSQL where it names it) and measures its baseline in the same run. The figures are also
written as JSON (`--json PATH`, default benchmarks/results/latest.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from benchmarks.figures import Figure

# In the order they run: the quick ones first.
BENCHMARKS = {
    "startup": "farm --help against python -c pass",
    "status": "farm status and farm jobs at 100,000 tasks, SQLite and PostgreSQL",
    "submit": "a 100,000-frame submit against RQ's enqueue_many",
    "dispatch": "null-renderer tasks per second against raw RQ workers",
    "openjd": "per-task time of OpenJD /bin/true tasks against null-renderer tasks",
    "efficiency": "16 builtin frames on the farm against 2 bare renders",
    "scale": "200 simulated workers against one manager",
    "region_cost": "a region of a builtin frame against the whole frame",
    "tiles": "a hero frame in 2x2 tiles on 2 workers against whole on 1",
    "stitch": "stitching an 8K 16-bit frame and an EXR against OpenImageIO's lower bound",
    "blender": "16 Blender frames on 2 one-thread workers against blender -a -t 2",
    "week": "a studio's week on 3 sites by the farm's planner, simulated, against FCFS at the studio",
    "idle": "a task's wait to start after 3 idle minutes against a warm farm's (about 10 minutes)",
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def table(figures: list[Figure]) -> str:
    """The figures as a plain-text table; the header names the ratio column."""
    rows = [("benchmark", "figure", "value", "baseline", "baseline value", "ratio", "target")]
    for f in figures:
        rows.append((
            f.benchmark, f.what, f"{_num(f.value)} {f.unit}", f.baseline or "-",
            "-" if f.baseline_value is None else f"{_num(f.baseline_value)} {f.unit}",
            "-" if f.ratio is None else f"{f.ratio:.2f}x", f.target or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(report: dict, names: list[str]) -> str:
    """The figures as the Markdown table docs/benchmarks.md holds, with the machine and command."""
    m = report["machine"]
    command = "uv run python -m benchmarks" + "".join(f" {n}" for n in names)
    lines = [
        f"Measured {report['when']} on {m['platform']}, Python {m['python']}, {m['cpus']} CPUs, "
        f"{m['memory_gib']} GiB, by `{command}` ({report['seconds']:.0f} s).", "",
        "| benchmark | figure | value | baseline | baseline value | ratio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in report["figures"]:
        base = "-" if f["baseline_value"] is None else f"{_num(f['baseline_value'])} {f['unit']}"
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        lines.append(f"| {f['benchmark']} | {f['what']} | {_num(f['value'])} {f['unit']} | {f['baseline'] or '-'} "
                     f"| {base} | {ratio} | {f['target'] or '-'} |")
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def machine() -> dict:
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the figures as a Markdown page")
    args = parser.parse_args(argv)
    if args.list:
        for name, what in BENCHMARKS.items():
            print(f"{name:12} {what}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    failed: list[str] = []
    started = time.time()
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}: {BENCHMARKS[name]}", flush=True)
        began = time.time()
        try:
            got = importlib.import_module(f"benchmarks.{name}").measure()
        except Exception:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        for figure in got:
            print(f"   {figure.line()}", flush=True)
        print(f"   ({time.time() - began:.0f} s)", flush=True)
        figures += got
    print()
    print(table(figures))
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "seconds": round(time.time() - started, 1), "failed": failed,
              "figures": [f.to_json() for f in figures]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown(report, args.names))
        print(f"and to {args.markdown}")
    if failed:
        print(f"error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
