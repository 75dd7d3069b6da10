"""Blender scenes built by Blender itself, and reference renders made without the farm.

Imported, this module drives a Blender binary from outside: `build_scene` runs Blender on this
very file (`blender -b --factory-startup --python scenes.py -- SPEC`), where the code under
`__main__` builds the scene that SPEC describes and saves it; `render_reference` renders frames
of a saved scene directly. It imports only the standard library at the top, so Blender's own
Python can run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


def find_blender() -> str | None:
    """The Blender the farm's workers would use: FARM_BLENDER, else `blender` on PATH."""
    return os.environ.get("FARM_BLENDER") or shutil.which("blender")


@dataclass(frozen=True)
class SceneSpec:
    """What to build: an animated Cycles scene (ground, two objects, a sun, a camera; a cube
    moving across frames), or a variant of it."""

    width: int = 160
    height: int = 90
    samples: int = 64
    frame_start: int = 1
    frame_end: int = 8
    adaptive: bool = False  # Cycles adaptive sampling (differs a little along region borders)
    texture: str | None = None  # the ground shows this image (an absolute path), self-lit
    canary: str | None = None  # an auto-run text block writes this file when the scene is opened
    dither: float = 1.0  # Blender's default: 8-bit outputs carry a little noise
    compress: bool = False  # saved with Blender's "Compress" option (Zstandard since Blender 3.0)
    fps: int = 24


def build_scene(path: Path, spec: SceneSpec, blender: str | None = None, timeout: float = 120) -> Path:
    """Build the scene of `spec` with Blender and save it at `path`."""
    blender = blender or find_blender()
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [blender, "-b", "--factory-startup", "-noaudio", "--python", __file__, "--",
            json.dumps({"path": str(path), **asdict(spec)})]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"building {path.name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return path


def render_reference(scene: Path, frames: list[int], out_dir: Path, *, blender: str | None = None,
                     resolution: tuple[int, int] | None = None, threads: int = 0,
                     timeout: float = 600) -> dict[int, Path]:
    """Render `frames` of `scene` with one `blender -b` run, scripts off, as 8-bit PNGs in
    `out_dir`; at `resolution` (100 %) instead of the scene's own where given."""
    blender = blender or find_blender()
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [blender, "-b", "-Y", "-noaudio", str(scene)]
    if resolution is not None:
        w, h = resolution
        # --python-expr runs where it stands: after the file is loaded, before -f renders.
        argv += ["--python-expr", "import bpy; r = bpy.context.scene.render; "
                 f"r.resolution_x, r.resolution_y, r.resolution_percentage = {w}, {h}, 100"]
    argv += ["-t", str(threads), "-o", str(out_dir / "ref.####"), "-F", "PNG", "-x", "1",
             "-f", ",".join(map(str, frames))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    paths = {f: out_dir / f"ref.{f:04d}.png" for f in frames}
    missing = [f for f, p in paths.items() if not p.is_file()]
    if done.returncode != 0 or missing:
        raise RuntimeError(f"reference render of {scene.name} frames {frames} failed ({done.returncode}, "
                           f"missing {missing}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return paths


# -- inside Blender -----------------------------------------------------------------------------


def _material(bpy, name: str, color: tuple[float, float, float], texture: str | None = None):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    if texture is None:
        nodes["Principled BSDF"].inputs["Base Color"].default_value = (*color, 1.0)
        nodes["Principled BSDF"].inputs["Roughness"].default_value = 0.6
        return mat
    # Self-lit, so a missing image shows as exactly Blender's magenta (255, 0, 255).
    nodes.remove(nodes["Principled BSDF"])
    image = nodes.new("ShaderNodeTexImage")
    image.image = bpy.data.images.load(texture)
    image.interpolation = "Closest"
    emission = nodes.new("ShaderNodeEmission")
    links.new(image.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], nodes["Material Output"].inputs["Surface"])
    return mat


def _build(spec: dict) -> None:
    import bpy
    from mathutils import Vector

    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = spec["samples"]
    scene.cycles.seed = 7
    scene.cycles.use_animated_seed = False
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = spec["adaptive"]
    # Blender's 0.01 stops no pixel early below ~100 samples; 0.05 does at 64.
    scene.cycles.adaptive_threshold = 0.05
    scene.render.resolution_x, scene.render.resolution_y = spec["width"], spec["height"]
    scene.render.resolution_percentage = 100
    scene.render.dither_intensity = spec["dither"]
    scene.frame_start, scene.frame_end = spec["frame_start"], spec["frame_end"]
    scene.render.fps, scene.render.fps_base = spec["fps"], 1.0
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    settings = scene.render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"
    scene.world = bpy.data.worlds.new("sky")
    scene.world.color = (0.05, 0.07, 0.1)

    bpy.ops.mesh.primitive_plane_add(size=12)
    bpy.context.object.data.materials.append(_material(bpy, "ground", (0.5, 0.5, 0.45), spec["texture"]))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1, location=(-1.5, 1.5, 1))
    bpy.ops.object.shade_smooth()
    bpy.context.object.data.materials.append(_material(bpy, "sphere", (0.1, 0.3, 0.8)))
    bpy.ops.mesh.primitive_cube_add(size=1.2)
    cube = bpy.context.object
    cube.data.materials.append(_material(bpy, "cube", (0.8, 0.25, 0.05)))
    last = spec["frame_end"]
    for frame, x, turn in ((spec["frame_start"], -3.0, 0.0), (last, 3.0, 1.5)):
        cube.location = (x, -1.0, 0.6)
        cube.rotation_euler = (0.0, 0.0, turn)
        cube.keyframe_insert("location", frame=frame)
        cube.keyframe_insert("rotation_euler", frame=frame)

    bpy.ops.object.light_add(type="SUN", rotation=(0.6, 0.2, 0.8))
    bpy.context.object.data.energy = 4.0
    bpy.ops.object.camera_add(location=(7.0, -7.0, 5.0))
    camera = bpy.context.object
    camera.rotation_euler = (Vector((0.0, 0.0, 0.5)) - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera

    if spec["canary"]:
        text = bpy.data.texts.new("canary.py")
        text.from_string(f"import pathlib\npathlib.Path({spec['canary']!r}).write_text('ran')\n")
        text.use_module = True  # "Register": run whenever the file is opened with scripts allowed

    scene.frame_set(spec["frame_start"])
    bpy.ops.wm.save_as_mainfile(filepath=spec["path"], compress=spec["compress"])
    if spec["texture"]:
        saved = [i.filepath for i in bpy.data.images if i.source == "FILE"]
        assert saved == [spec["texture"]], f"texture path not kept absolute: {saved}"


if __name__ == "__main__":
    _build(json.loads(sys.argv[sys.argv.index("--") + 1]))
