"""The builtin renderer's command line, run by a worker as a subprocess.

    python -m renderfarm.renderers.builtin --scene PATH --frames 1,3,5 --output out.{frame}.png
        [--region X,Y,W,H] [--format png|png16|exr]

Frames render in the order given, each to an 8-bit PNG (`png`, the default), a 16-bit PNG
(`png16`) or a float RGBA OpenEXR (`exr`), written by `renderfarm.images`. On stdout, one line
each, flushed at once: ``progress <frame> <fraction>`` now and then, ``frame <frame> <path>``
once a file is complete (the protocol's lines), and for the people reading the log,
``rendering frame <frame>: ...`` when a frame starts and about once a second after, and
``rendered frame <frame> ...`` when it is written.
Exit 0 when all frames are written; 2 with one line on stderr for a bad scene or argument;
1 for anything else.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from renderfarm.errors import InputError
from renderfarm.images import FORMATS, encode_linear, extension
from renderfarm.renderers.builtin.memory import keep_freed_memory
from renderfarm.renderers.builtin.scene import load_scene

USAGE = (
    "usage: python -m renderfarm.renderers.builtin --scene PATH --frames F[,F...] "
    "--output PATTERN [--region X,Y,W,H] [--format png|png16|exr]\n"
    "PATTERN must hold {frame} (replaced by the frame number) and end in .png "
    "(png, png16) or .exr (exr)."
)
OPTIONS = ("--scene", "--frames", "--output", "--region", "--format")
# Report progress only when a frame is this much further along, to keep the log short.
PROGRESS_STEP = 0.05
# Seconds between two of the human progress lines of one frame (the worker shows those live).
HUMAN_EVERY = 1.0


@dataclass(frozen=True)
class Arguments:
    """What to render: a scene file, frames in order, an output pattern, maybe a region, and
    the file format."""

    scene: str
    frames: tuple[int, ...]
    output: str
    region: tuple[int, int, int, int] | None
    format: str = "png"


class _HelpWanted(Exception):
    pass


def parse_arguments(argv: list[str]) -> Arguments:
    """Parse the command line; a value may follow its option or be joined with '='.

    Hand-rolled rather than argparse: `--frames -3,-1` must read as frames, not an option,
    and any mistake must come out as one line.
    """
    values: dict[str, str] = {}
    position = 0
    while position < len(argv):
        token = argv[position]
        if token in ("-h", "--help"):
            raise _HelpWanted
        name, joined, value = token.partition("=")
        if name not in OPTIONS:
            raise InputError(f"unknown argument {token!r} (expected {', '.join(OPTIONS)})")
        if not joined:
            if position + 1 >= len(argv):
                raise InputError(f"{name}: missing its value")
            position += 1
            value = argv[position]
        if name in values:
            raise InputError(f"{name}: given twice")
        values[name] = value
        position += 1
    for name in ("--scene", "--frames", "--output"):
        if name not in values:
            raise InputError(f"{name}: missing (required)")
    fmt = values.get("--format", "png")
    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    output = values["--output"]
    if "{frame}" not in output:
        raise InputError(f"--output: {output!r} does not contain {{frame}}")
    suffix = "." + extension(fmt)
    if not output.lower().endswith(suffix):
        raise InputError(f"--output: {output!r} does not end in {suffix} (--format {fmt})")
    region = values.get("--region")
    return Arguments(
        scene=values["--scene"],
        frames=_numbers("--frames", values["--frames"]),
        output=output,
        region=None if region is None else _region(region),
        format=fmt,
    )


def _numbers(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(
            f"{option}: expected whole numbers separated by commas, got {text!r}"
        ) from None


def _region(text: str) -> tuple[int, int, int, int]:
    numbers = _numbers("--region", text)
    if len(numbers) != 4:
        raise InputError(f"--region: expected X,Y,WIDTH,HEIGHT, got {text!r}")
    return numbers  # type: ignore[return-value]


def output_path(pattern: str, frame: int) -> str:
    """The file a frame goes to: `{frame}` replaced by the frame number as str() writes it."""
    return pattern.replace("{frame}", str(frame))


def render(arguments: Arguments) -> None:
    """Render each frame in order, writing its file and saying so on stdout."""
    from renderfarm.renderers.builtin.raytrace import check_region, render_linear

    scene = load_scene(arguments.scene)
    x, y, width, height = check_region(arguments.region, scene.width, scene.height)
    size = f"{width}x{height}" + ("" if arguments.region is None else f" at {x},{y}")
    for frame in arguments.frames:
        started = time.monotonic()
        _say(f"rendering frame {frame}: {size}, {scene.samples} samples a pixel")
        progress = _progress_printer(frame, height, started)
        linear = render_linear(scene, frame, arguments.region, progress=progress)
        path = output_path(arguments.output, frame)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        encode_linear(linear, arguments.format, path)
        del linear  # the next frame's buffer can take its place
        _say(f"rendered frame {frame} in {time.monotonic() - started:.2f} s")
        _say(f"frame {frame} {path}")


def _progress_printer(frame: int, rows: int, started: float) -> Callable[[float], None]:
    """The progress callback of one frame: a protocol line every PROGRESS_STEP of the frame, and
    a line for people (rows done, seconds so far) every HUMAN_EVERY seconds."""
    reported = 0.0
    told = started

    def progress(fraction: float) -> None:
        nonlocal reported, told
        if fraction - reported >= PROGRESS_STEP or (fraction == 1.0 and reported < 1.0):
            reported = fraction
            _say(f"progress {frame} {fraction:.3f}")
        now = time.monotonic()
        if now - told >= HUMAN_EVERY and fraction < 1.0:
            told = now
            _say(f"rendering frame {frame}: {int(fraction * rows)} of {rows} rows "
                 f"({fraction:.0%}) after {now - started:.1f} s")

    return progress


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def arguments_from_request(request: dict) -> Arguments:
    """A session request ({"scene", "frames", "output", "region", "format"}) checked as the
    command line is."""
    argv = [f"--scene={request.get('scene')}", f"--output={request.get('output')}",
            f"--frames={','.join(str(f) for f in request.get('frames') or [])}",
            f"--format={request.get('format') or 'png'}"]
    if request.get("region") is not None:
        argv.append(f"--region={','.join(str(v) for v in request['region'])}")
    return parse_arguments(argv)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--session"]:
        from renderfarm.renderers.protocol import serve_session

        return serve_session(lambda request: render(arguments_from_request(request)))
    try:
        render(parse_arguments(argv))
    except _HelpWanted:
        print(USAGE)
        return 0
    except InputError as e:
        print(f"builtin: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a renderer reports every failure as its exit status
        traceback.print_exc()
        print(f"builtin: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
