"""The Blender renderer's wrapper, run by a worker as a subprocess: one Blender for a chunk's frames.

    python -m renderfarm.renderers.blender --blender=PATH --scene=PATH --frames=1,3 \\
        --output=out.{frame}.png --size=WxH [--format=png|png16|exr] [--region=X,Y,W,H] \\
        [--overscan=PX] [--samples=N] [--threads=N] [--allow-scripts]

Blender's output passes through line by line (it is the attempt's log). After each frame Blender
saves, the file is moved to the output pattern (a tile's overscan cropped off first) and
``frame <frame> <path>`` is printed; sample counts come out as ``progress <frame> <fraction>``.
Blender runs in this process's group and dies with it. Exit 0 when every frame was written;
1 with Blender's error on stderr otherwise; 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from renderfarm.renderers.blender.command import (
    DEFAULT_OVERSCAN, OUTPUT_STEM, SETUP_FAILED, Setup, blender_argv, border_for, read_line, saved_frame,
)
from renderfarm.renderers.process import die_with_parent
from renderfarm.renderers.registry import Region


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="renderfarm.renderers.blender", description=__doc__.splitlines()[0])
    parser.add_argument("--blender", required=True)
    parser.add_argument("--scene", required=True)
    parser.add_argument("--frames", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--format", default="png", choices=("png", "png16", "exr"))
    parser.add_argument("--region")
    parser.add_argument("--overscan", type=int, default=DEFAULT_OVERSCAN)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--allow-scripts", action="store_true")
    return parser.parse_args(argv)


class Frames:
    """Takes each file Blender saves: moves it to the output pattern (cropping a tile's margin)."""

    def __init__(self, args: argparse.Namespace, width: int, height: int) -> None:
        self.pattern, self.fmt = args.output, args.format
        self.border = None
        if args.region:
            region = Region(*(int(v) for v in args.region.split(",")))
            self.border = border_for(region, width, height, max(args.overscan, 0))
        self.written: list[int] = []

    def take(self, saved: str) -> None:
        frame = saved_frame(saved)
        if frame is None:
            return
        target = self.pattern.replace("{frame}", str(frame))
        if self.border is None:
            os.replace(saved, target)
        else:
            self._crop(saved, target)
            os.unlink(saved)
        self.written.append(frame)
        print(f"frame {frame} {target}", flush=True)

    def _crop(self, saved: str, target: str) -> None:
        import numpy as np

        from renderfarm.images import read_pixels, write_pixels

        pixels = read_pixels(saved, self.fmt)
        rendered, crop = self.border.rendered, self.border.crop
        if pixels.shape[:2] != (rendered.height, rendered.width):
            raise RuntimeError(
                f"Blender rendered {pixels.shape[1]}x{pixels.shape[0]} for a border of "
                f"{rendered.width}x{rendered.height} (x={rendered.x0} y={rendered.y0})"
            )
        tile = np.ascontiguousarray(pixels[crop.y0 : crop.y1, crop.x0 : crop.x1])
        write_pixels(tile, self.fmt, target)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.scene.startswith("-"):
        print(f"blender: scene path {args.scene[:100]!r} starts with '-'", file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.size.split("x"))
        frames = tuple(int(f) for f in args.frames.split(","))
        take = Frames(args, width, height)
    except ValueError as e:
        print(f"blender: bad argument ({e})", file=sys.stderr)
        return 2
    saved_dir = Path(args.output).parent / ".blender"
    saved_dir.mkdir(parents=True, exist_ok=True)
    setup = Setup(width, height, str(saved_dir / f"{OUTPUT_STEM}#####"), args.format, args.samples, take.border)
    argv = blender_argv(args.blender, args.scene, setup, frames, threads=args.threads,
                        allow_scripts=args.allow_scripts)
    print("# " + " ".join(a if "\n" not in a else "<setup>" for a in argv), flush=True)
    try:
        # Not a session of its own: killing the worker's renderer group kills Blender too.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
    except OSError as e:
        print(f"blender: cannot run {args.blender}: {e.strerror}", file=sys.stderr)
        return 1
    errors: list[str] = []
    exceptions: list[str] = []  # Python's last lines of a traceback: `KeyError: 'cycles'`
    current = None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        print(line, flush=True)
        if re.match(r"\w+(Error|Exception): ", line):
            exceptions.append(line)
        said = read_line(line)
        if said.error:
            errors.append(said.error)
        elif said.frame is not None:
            current = said.frame
            if said.progress is not None:
                print(f"progress {current} {said.progress:.3f}", flush=True)
        elif said.saved:
            try:
                take.take(said.saved)
            except (OSError, RuntimeError, ValueError) as e:
                proc.kill()
                print(f"blender: frame {saved_frame(said.saved)}: {e}", file=sys.stderr, flush=True)
                return 1
    code = proc.wait()
    missing = [f for f in frames if f not in take.written]
    if not missing:
        return 0
    if code == SETUP_FAILED:
        why = "the farm's setup script failed in Blender" + (f": {exceptions[-1][:300]}" if exceptions else "")
    else:
        why = f"Error: {errors[0][:300]}" if errors else f"Blender exited {code}"
    print(f"blender: frame(s) {','.join(map(str, missing))} not rendered: {why}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
