"""Blender's command line for one chunk, the setup it runs before rendering, and what its output
says. Pure: nothing here starts Blender.

The argv is a list, never a shell line: background mode, no audio, auto-run scripts off unless
the job allows them, the scene, then a `--python-expr` setup (resolution, samples, output path
and format, the tile's border), threads, and last the frames (`-f 1,3,5`), so that Blender starts
once per chunk and the setup applies to every frame.

Tiles: Blender renders a border of the frame (`use_border` + `use_crop_to_border`), given as
fractions of the resolution with y counted from the bottom, and truncates `fraction * size` to
whole pixels. The border asked for is the tile grown by an overscan margin on every side that
is not the frame's edge (adaptive sampling and filters then see the same neighbourhood as in a
whole frame, so no seam shows), each edge set half a pixel in so truncation lands on the pixel
meant; the wrapper crops the margin off using the rectangle Blender really rendered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from renderfarm.renderers.registry import Region

DEFAULT_OVERSCAN = 16  # pixels around a tile, rendered and cropped off
_FORMATS = {  # the job's format: Blender's file format and colour depth
    "png": ("PNG", "8"),
    "png16": ("PNG", "16"),
    "exr": ("OPEN_EXR", "32"),
}
_SAVED = re.compile(r"^Saved: '(?P<path>.*)'")
_FRAME = re.compile(r"^Fra:(?P<frame>-?\d+) ")
_SAMPLE = re.compile(r"\| Sample (?P<done>\d+)/(?P<total>\d+)")
_ERROR = re.compile(r"^Error: (?P<error>.+)")
OUTPUT_STEM = "blender_"
SETUP_FAILED = 3  # Blender's exit status when the setup expression raised  # Blender writes blender_00001.png; the wrapper renames it


@dataclass(frozen=True)
class Rect:
    """Pixels from the frame's top-left: columns x0..x1, rows y0..y1 (ends excluded)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class Border:
    """A tile as Blender is asked for it: the border fractions (y from the bottom), the pixels it
    will render (after Blender's truncation) and where the tile lies in them."""

    min_x: float
    max_x: float
    min_y: float
    max_y: float
    rendered: Rect  # what Blender writes, in frame pixels from the top-left
    crop: Rect  # the tile, in the written image's pixels


def border_for(region: Region, width: int, height: int, overscan: int = DEFAULT_OVERSCAN) -> Border:
    """The border that renders `region` of a `width`x`height` frame with `overscan` pixels around it."""
    grown = Rect(max(region.x - overscan, 0), max(region.y - overscan, 0),
                 min(region.x + region.width + overscan, width), min(region.y + region.height + overscan, height))
    # Blender's y runs from the bottom: the top-left rows y0..y1 are rows height-y1..height-y0.
    bottom, top = height - grown.y1, height - grown.y0
    min_x, max_x = _edge(grown.x0, width), _edge(grown.x1, width)
    min_y, max_y = _edge(bottom, height), _edge(top, height)
    # What Blender will render: it truncates fraction * size.
    rx0, rx1 = int(min_x * width), int(max_x * width)
    rb0, rb1 = int(min_y * height), int(max_y * height)
    rendered = Rect(rx0, height - rb1, rx1, height - rb0)
    crop = Rect(region.x - rendered.x0, region.y - rendered.y0,
                region.x - rendered.x0 + region.width, region.y - rendered.y0 + region.height)
    return Border(min_x, max_x, min_y, max_y, rendered, crop)


def _edge(pixel: int, size: int) -> float:
    """The fraction that truncates to `pixel`: half a pixel in, and exactly 1.0 at the far edge."""
    return 1.0 if pixel >= size else (pixel + 0.5) / size


@dataclass(frozen=True)
class Setup:
    """What the job sets in the scene before rendering."""

    width: int
    height: int
    output: str  # Blender's output path, with #### for the frame
    fmt: str = "png"
    samples: int | None = None
    border: Border | None = None

    def expression(self) -> str:
        """The `--python-expr` that applies it: a JSON literal read by a few lines of bpy."""
        file_format, depth = _FORMATS[self.fmt]
        values = {
            "width": self.width, "height": self.height, "output": self.output,
            "file_format": file_format, "depth": depth, "samples": self.samples,
            "border": None if self.border is None else [self.border.min_x, self.border.max_x,
                                                          self.border.min_y, self.border.max_y],
        }
        return SETUP_TEMPLATE.replace("VALUES", repr(json.dumps(values)))


SETUP_TEMPLATE = """\
import bpy, json
v = json.loads(VALUES)
s = bpy.context.scene
r = s.render
r.resolution_x, r.resolution_y, r.resolution_percentage = v["width"], v["height"], 100
r.filepath, r.use_file_extension = v["output"], True
r.image_settings.file_format = v["file_format"]
r.image_settings.color_depth = v["depth"]
if v["samples"]:
    if r.engine == "CYCLES":
        s.cycles.samples = v["samples"]
    elif hasattr(s, "eevee"):
        s.eevee.taa_render_samples = v["samples"]
b = v["border"]
r.use_border = b is not None
if b is not None:
    r.use_crop_to_border = True
    r.border_min_x, r.border_max_x, r.border_min_y, r.border_max_y = b
    r.use_compositing = False
    r.use_sequencer = False
print("renderfarm: setup applied to scene", repr(s.name), flush=True)
"""


def blender_argv(blender: str, scene: str, setup: Setup, frames: tuple[int, ...], *,
                 threads: int = 0, allow_scripts: bool = False) -> list[str]:
    """The argv that renders `frames` of `scene` with `setup` applied first."""
    return [
        blender, "--background", "-noaudio",
        "--enable-autoexec" if allow_scripts else "--disable-autoexec",
        scene,  # the wrapper refuses a path starting with '-' (Blender would take it for an option)
        "--python-exit-code", str(SETUP_FAILED),  # a setup that fails stops Blender (else it renders on)
        "--python-expr", setup.expression(),
        "--threads", str(max(threads, 0)),
        "--render-frame", frame_list(frames),
    ]


def frame_list(frames: tuple[int, ...]) -> str:
    """Blender's -f argument: `A..B` for a run of consecutive frames, else `1,3,5`."""
    if any(f < 0 for f in frames):
        raise ValueError("Blender's -f takes no negative frames")
    if len(frames) > 1 and list(frames) == list(range(frames[0], frames[0] + len(frames))):
        return f"{frames[0]}..{frames[-1]}"
    return ",".join(map(str, frames))


@dataclass(frozen=True)
class Line:
    """What one line of Blender's output says, if anything the farm follows."""

    frame: int | None = None  # a `Fra:` line: the frame being rendered
    progress: float | None = None  # a sample count: the fraction of the frame done
    saved: str | None = None  # a `Saved:` line: the file written
    error: str | None = None  # an `Error:` line


def read_line(line: str) -> Line:
    if m := _SAVED.match(line):
        return Line(saved=m.group("path"))
    if m := _ERROR.match(line):
        return Line(error=m.group("error").strip())
    if m := _FRAME.match(line):
        sample = _SAMPLE.search(line)
        progress = None
        if sample and int(sample.group("total")) > 0:
            progress = min(int(sample.group("done")) / int(sample.group("total")), 1.0)
        return Line(frame=int(m.group("frame")), progress=progress)
    return Line()


def saved_frame(path: str) -> int | None:
    """The frame number of a file Blender saved as blender_00042.png."""
    name = path.rsplit("/", 1)[-1]
    m = re.fullmatch(re.escape(OUTPUT_STEM) + r"(-?\d+)\.\w+", name)
    return int(m.group(1)) if m else None
