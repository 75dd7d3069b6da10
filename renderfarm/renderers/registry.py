"""The renderers a job may name, what each needs of a scene file, and the command that runs it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from renderfarm.errors import InputError, SceneError, shown


@dataclass(frozen=True)
class SceneInfo:
    """What the farm needs to know of a scene before planning: its size and default frames."""

    width: int
    height: int
    frames: str


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


class Renderer(Protocol):
    name: str
    suffixes: tuple[str, ...]
    formats: tuple[str, ...]

    def describe(self, path: Path) -> SceneInfo: ...
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

    def describe(self, path: Path) -> SceneInfo:
        from renderfarm.renderers.builtin.scene import load_scene

        scene = load_scene(path)
        return SceneInfo(scene.width, scene.height, scene.frames)

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
        return _python_module(
            "renderfarm.renderers.null", request, f"--size={request.width}x{request.height}", f"--format={request.fmt}"
        )


class CommandRenderer:
    """A program installed on the worker, run per frame from an argv template."""

    name = "command"
    suffixes = (".toml",)
    formats = ("png",)

    def describe(self, path: Path) -> SceneInfo:
        from renderfarm.renderers.command import load_command_scene

        scene = load_command_scene(path)
        return SceneInfo(scene.width, scene.height, scene.frames)

    def command(self, request: RenderRequest) -> list[str]:
        return _python_module("renderfarm.renderers.command", request)

    def session_command(self) -> list[str] | None:
        return None  # every frame is a program run of its own anyway

    def session_request(self, request: RenderRequest) -> dict:
        raise NotImplementedError


RENDERERS: dict[str, Renderer] = {r.name: r for r in (BuiltinRenderer(), NullRenderer(), CommandRenderer())}


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
