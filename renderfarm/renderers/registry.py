"""The renderers a job may name, what each needs of a scene file, and the command that runs it."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from renderfarm.errors import InputError, RenderError, SceneError, shown
from renderfarm.renderers.limits import (
    Limits,
    check_render_size,
    check_scene_file,
    check_scene_objects,
)


@dataclass(frozen=True)
class SceneInfo:
    """What the farm needs to know of a scene before planning: its size and default frames."""

    width: int
    height: int
    frames: str
    version: str | None = None  # the renderer version the scene was made with, if it says


@dataclass(frozen=True)
class Region:
    """A rectangle of pixels, origin top-left."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class RenderRequest:
    """One renderer run: these frames of this scene, written to `output_pattern` ({frame})."""

    scene: Path
    frames: tuple[int, ...]
    output_pattern: str
    width: int  # of the image to write: the region's size when there is a region
    height: int
    region: Region | None = None
    fmt: str = "png"
    frame_size: tuple[int, int] | None = None  # the whole frame's, when there is a region
    program: str | None = None  # the renderer's executable on this worker, for those that have one
    threads: int = 0  # render threads (0: all cores)
    options: Mapping[str, Any] = field(default_factory=dict)  # the job's render options (samples...)
    limits: Limits | None = None  # the caps this worker renders within (None: its settings')


class Renderer(Protocol):
    name: str
    suffixes: tuple[str, ...]
    formats: tuple[str, ...]
    options: tuple[str, ...]  # the job options it takes beyond frames and format (`samples`...)

    def describe(self, path: Path, limits: Limits | None = None) -> SceneInfo: ...
    def package(self, path: Path, into: Path, limits: Limits | None = None) -> Path: ...
    def command(self, request: RenderRequest) -> list[str]: ...
    def session_command(self) -> list[str] | None: ...
    def session_request(self, request: RenderRequest) -> dict: ...


def _python_module(module: str, request: RenderRequest, *extra: str) -> list[str]:
    # `--opt=value`: a frame list such as -5,-4 or a path starting with '-' is never an option.
    return [
        sys.executable, "-m", module, f"--scene={request.scene}",
        f"--frames={','.join(map(str, request.frames))}", f"--output={request.output_pattern}", *extra,
    ]


class BuiltinRenderer:
    """Our numpy ray tracer, run as `python -m renderfarm.renderers.builtin`."""

    name = "builtin"
    suffixes = (".toml", ".json")
    formats = ("png", "png16", "exr")
    options: tuple[str, ...] = ()

    def describe(self, path: Path, limits: Limits | None = None) -> SceneInfo:
        """The scene's size and frames, once it is checked whole and within the farm's caps."""
        from renderfarm.renderers.builtin.scene import load_scene

        limits = limits or Limits.current()
        check_scene_file(path, limits)
        scene = load_scene(path)
        check_scene_objects(path.name, len(scene.objects) + len(scene.lights), limits)
        check_render_size(scene.width, scene.height, scene.samples, limits,
                          what=f"scene: {shown(path.name)}: render size")
        return SceneInfo(scene.width, scene.height, scene.frames)

    def package(self, path: Path, into: Path, limits: Limits | None = None) -> Path:
        return path  # a scene file is self-contained

    def session_command(self) -> list[str] | None:
        """A warm session: one process renders a job's consecutive tasks."""
        return [sys.executable, "-m", f"renderfarm.renderers.{self.name}", "--session"]

    def session_request(self, request: RenderRequest) -> dict:
        region = request.region
        return {
            "scene": str(request.scene), "frames": list(request.frames), "output": request.output_pattern,
            "format": request.fmt, "region": None if region is None else [region.x, region.y, region.width, region.height],
        }

    def command(self, request: RenderRequest) -> list[str]:
        with _refused_on_worker():
            limits = request.limits or Limits.current()
            check_scene_file(request.scene, limits)
            frame = request.frame_size or (request.width, request.height)
            check_render_size(*frame, None, limits)
        extra = [f"--format={request.fmt}"]
        if request.region is not None:
            r = request.region
            extra.append(f"--region={r.x},{r.y},{r.width},{r.height}")
        return _python_module("renderfarm.renderers.builtin", request, *extra)


class NullRenderer(BuiltinRenderer):
    """Reads a builtin scene for its size and frames, and writes flat images at once: the farm
    measured apart from rendering."""

    name = "null"

    def session_request(self, request: RenderRequest) -> dict:
        return {"size": [request.width, request.height], "frames": list(request.frames),
                "output": request.output_pattern, "format": request.fmt}

    def command(self, request: RenderRequest) -> list[str]:
        with _refused_on_worker():
            limits = request.limits or Limits.current()
            check_render_size(request.width, request.height, None, limits)
        return _python_module(
            "renderfarm.renderers.null", request, f"--size={request.width}x{request.height}", f"--format={request.fmt}"
        )


class CommandRenderer:
    """A program installed on the worker, run per frame from an argv template."""

    name = "command"
    suffixes = (".toml",)
    formats = ("png",)
    options: tuple[str, ...] = ()

    def describe(self, path: Path, limits: Limits | None = None) -> SceneInfo:
        from renderfarm.renderers.command import load_command_scene

        limits = limits or Limits.current()
        check_scene_file(path, limits)
        scene = load_command_scene(path)
        check_render_size(scene.width, scene.height, None, limits,
                          what=f"scene: {shown(path.name)}: render size")
        return SceneInfo(scene.width, scene.height, scene.frames)

    def package(self, path: Path, into: Path, limits: Limits | None = None) -> Path:
        return path

    def command(self, request: RenderRequest) -> list[str]:
        with _refused_on_worker():
            limits = request.limits or Limits.current()
            check_scene_file(request.scene, limits)
            check_render_size(request.width, request.height, None, limits)
        return _python_module("renderfarm.renderers.command", request)

    def session_command(self) -> list[str] | None:
        return None  # every frame is a program run of its own anyway

    def session_request(self, request: RenderRequest) -> dict:
        raise NotImplementedError


class BlenderRenderer:
    """Blender, as the worker has it: one Blender process per chunk, through our wrapper
    (`python -m renderfarm.renderers.blender`), which renames each frame and crops tiles."""

    name = "blender"
    suffixes = (".blend",)
    formats = ("png", "png16", "exr")
    options = ("resolution", "samples", "allow_scripts", "version")

    def describe(self, path: Path, limits: Limits | None = None) -> SceneInfo:
        """What the .blend says; its size is checked against the caps once the job's own
        resolution is known (`check_render_size`), its files when it is packed."""
        from renderfarm.renderers.blender.scene import read_blend

        info = read_blend(path)
        return SceneInfo(info.width, info.height, info.frames, info.version)

    def package(self, path: Path, into: Path, limits: Limits | None = None) -> Path:
        """The scene and every file it uses, packed by Blender Asset Tracer into one ZIP within
        the farm's caps on packs."""
        from renderfarm.renderers.blender.scene import pack_scene

        return pack_scene(path, into, limits)

    def command(self, request: RenderRequest) -> list[str]:
        if request.program is None:
            raise RenderError("no Blender on this worker (set FARM_BLENDER or put blender on PATH)")
        options = request.options
        with _refused_on_worker():
            samples = int(options["samples"]) if options.get("samples") else None
            check_render_size(*(request.frame_size or (request.width, request.height)), samples,
                              request.limits or Limits.current())
        argv = [
            *_python_module("renderfarm.renderers.blender", request), f"--blender={request.program}",
            "--size={}x{}".format(*(request.frame_size or (request.width, request.height))),
            f"--format={request.fmt}", f"--threads={request.threads}",
        ]
        if request.region is not None:
            r = request.region
            argv.append(f"--region={r.x},{r.y},{r.width},{r.height}")
        if options.get("samples"):
            argv.append(f"--samples={int(options['samples'])}")
        if options.get("allow_scripts"):
            argv.append("--allow-scripts")
        return argv

    def session_command(self) -> list[str] | None:
        return None  # Blender starts once per chunk; a chunk is the session

    def session_request(self, request: RenderRequest) -> dict:
        raise NotImplementedError


@contextmanager
def _refused_on_worker() -> Iterator[None]:
    """A job over this worker's caps fails its attempt, saying which cap and how to raise it."""
    try:
        yield
    except InputError as e:
        raise RenderError(f"over this worker's caps: {e}") from None


RENDERERS: dict[str, Renderer] = {
    r.name: r for r in (BuiltinRenderer(), NullRenderer(), CommandRenderer(), BlenderRenderer())
}


def get_renderer(name: str) -> Renderer:
    try:
        return RENDERERS[name]
    except KeyError:
        raise InputError(f"renderer: {name!r} is not one of {', '.join(RENDERERS)}") from None


def check_scene_path(renderer: Renderer, path: Path) -> Path:
    """A scene path a renderer may be given: exists, is a file, has a known suffix."""
    if str(path).startswith("-"):
        raise SceneError(f"scene: {shown(path)} starts with '-' (write ./{str(path)[:60]})")
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte...
        raise SceneError(f"scene: {shown(path)} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not exists:
        raise SceneError(f"scene: {str(path)[:200]} does not exist")
    if not is_file:
        raise SceneError(f"scene: {str(path)[:200]} is not a file")
    if path.suffix.lower() not in renderer.suffixes:
        raise SceneError(
            f"scene: {path.name[:100]} has suffix {path.suffix[:20] or '(none)'!r}; the {renderer.name} renderer reads "
            + ", ".join(renderer.suffixes)
        )
    return path
