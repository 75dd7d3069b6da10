"""The command renderer: runs a program installed on the worker once per frame, from an argv
template (never a shell), for renderers the farm has no plugin for.

A command scene is TOML::

    [render]
    width = 1920
    height = 1080
    frames = "1-100"

    [command]
    argv = ["my-renderer", "--frame", "{frame}", "--out", "{output}", "--size", "{width}x{height}"]

Placeholders: {frame}, {output} (the PNG to write), {width}, {height}. Workers run it only when
their settings allow commands (`FARM_ALLOW_COMMANDS=1`).

    python -m renderfarm.renderers.command --scene=S --frames=1,2 --output=out.{frame}.png

prints ``frame <frame> <path>`` after each frame whose command exited 0 and wrote its file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from renderfarm.errors import SceneError
from renderfarm.renderers.process import die_with_parent

PLACEHOLDERS = ("frame", "output", "width", "height")


@dataclass(frozen=True)
class CommandScene:
    width: int
    height: int
    frames: str
    argv: tuple[str, ...]

    def argv_for(self, frame: int, output: str) -> list[str]:
        values = {"frame": str(frame), "output": output, "width": str(self.width), "height": str(self.height)}
        out = []
        for part in self.argv:
            for name, value in values.items():
                part = part.replace("{" + name + "}", value)
            out.append(part)
        return out


def load_command_scene(path: Path) -> CommandScene:
    """Read and check a command scene; SceneError names the file and the field."""
    name = path.name
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SceneError(f"scene: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{name}: unreadable ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise SceneError(f"{name}: invalid TOML ({e})") from None
    unknown = set(doc) - {"render", "command"}
    if unknown:
        raise SceneError(f"{name}: unknown table {sorted(unknown)[0]!r} (expected render, command)")
    render, command = doc.get("render"), doc.get("command")
    if not isinstance(render, dict) or not isinstance(command, dict):
        raise SceneError(f"{name}: needs a [render] and a [command] table")
    for key in ("width", "height"):
        value = render.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 65536:
            raise SceneError(f"{name}: render.{key}: expected a whole number of pixels, got {value!r}")
    frames = render.get("frames", "1")
    if not isinstance(frames, str):
        raise SceneError(f"{name}: render.frames: expected a frame spec string, got {frames!r}")
    argv = command.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise SceneError(f"{name}: command.argv: expected a non-empty list of strings, got {argv!r}")
    if "{output}" not in " ".join(argv):
        raise SceneError(f"{name}: command.argv: never names {{output}}, so no frame could be found")
    extra = set(render) - {"width", "height", "frames"} | set(command) - {"argv"}
    if extra:
        raise SceneError(f"{name}: unknown key {sorted(extra)[0]!r}")
    return CommandScene(render["width"], render["height"], frames, tuple(argv))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="renderfarm.renderers.command", description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, required=True)
    parser.add_argument("--frames", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        scene = load_command_scene(args.scene)
    except SceneError as e:
        print(f"command: {e}", file=sys.stderr)
        return 2
    for text in args.frames.split(","):
        frame = int(text)
        output = args.output.replace("{frame}", str(frame))
        command = scene.argv_for(frame, output)
        print(f"# frame {frame}: {command}", flush=True)
        try:
            # It dies with us, as we die with the worker (killing the group kills it too).
            code = subprocess.run(command, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent).returncode
        except OSError as e:
            print(f"command: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr, flush=True)
            return 1
        if code != 0:
            print(f"command: frame {frame}: {command[0]} exited with status {code}", file=sys.stderr, flush=True)
            return 1
        if Path(output).exists():
            print(f"frame {frame} {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
