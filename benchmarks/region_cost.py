"""Benchmark: what a region of a builtin-renderer frame costs against the whole frame.

    uv run python -m benchmarks region_cost [--scene examples/bouncing-balls.toml] [--frame 24]

Renders the frame whole, its centre quarter, and its four quadrant tiles, best of a few
repeats each, in this one process (one core, memory tuned as the renderer subprocess tunes
it), and prints the times and the ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.figures import Figure, show
from renderfarm.renderers.builtin.memory import keep_freed_memory
from renderfarm.renderers.builtin.raytrace import render_region
from renderfarm.renderers.builtin.scene import load_scene

DEMO = Path(__file__).resolve().parent.parent / "examples" / "bouncing-balls.toml"


def best_of(repeats: int, render: Callable[[], object]) -> float:
    """The fastest of `repeats` runs, in seconds: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        render()
        best = min(best, time.perf_counter() - start)
    return best


def measure(scene_path: Path = DEMO, frame: int = 24, repeats: int = 3) -> list[Figure]:
    keep_freed_memory()  # as the renderer subprocess does
    scene = load_scene(scene_path)
    width, height = scene.width, scene.height
    half_w, half_h = width // 2, height // 2
    centre = (width // 4, height // 4, half_w, half_h)
    quadrants = [
        (0, 0, half_w, half_h),
        (half_w, 0, width - half_w, half_h),
        (0, half_h, half_w, height - half_h),
        (half_w, half_h, width - half_w, height - half_h),
    ]
    render_region(scene, frame, centre)  # warm up: imports, caches

    whole = best_of(repeats, lambda: render_region(scene, frame))
    quarter = best_of(repeats, lambda: render_region(scene, frame, centre))
    tiles = sum(best_of(repeats, lambda q=q: render_region(scene, frame, q)) for q in quadrants)
    about = f"{scene_path.name} frame {frame} ({width}x{height}, {scene.samples} spp), one process"
    return [
        Figure("region_cost", f"centre quarter, {about}", quarter, "s", "the whole frame", whole,
               target="about 0.25x"),
        Figure("region_cost", f"four quadrant tiles, {about}", tiles, "s", "the whole frame", whole,
               target="about 1.0x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=DEMO)
    parser.add_argument("--frame", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    show(measure(args.scene, args.frame, args.repeats))


if __name__ == "__main__":
    main()
