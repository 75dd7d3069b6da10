"""A job's frame rate, read from its scene in storage (a job row does not keep one): a builtin
scene's `[render] fps`, or the frame rate of a .blend's active scene. For `farm movie`."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import RenderFarmError

if TYPE_CHECKING:
    from renderfarm.storage import Storage

# A .blend travels in a pack with its textures; past this size the pack is not fetched only to
# read its frame rate.
PACK_MAX = 256 * 2**20


def scene_fps(storage: Storage, scene_key: str) -> tuple[float | None, str]:
    """The frames per second the job's scene asks for, and where that came from; (None, why)
    when the scene does not say or cannot be read (the caller falls back on a default)."""
    suffix = Path(scene_key).suffix.lower()
    if suffix not in (".toml", ".json", ".zip"):
        return None, f"a {suffix or 'suffixless'} scene has no frame rate the farm can read"
    try:
        info = storage.head(scene_key)
        if info is None:
            return None, "the job's scene is no longer in storage"
        if info.size > PACK_MAX:
            return None, f"the scene pack is {info.size >> 20} MiB, too large to fetch for its frame rate"
        with tempfile.TemporaryDirectory(prefix="farm-fps-") as tmp:
            path = Path(tmp) / f"scene{suffix}"
            storage.download_file(scene_key, path)
            if suffix == ".zip":
                fps, where = _blend_fps(path, Path(tmp)), "the .blend's frame rate"
            else:
                fps, where = _builtin_fps(path), "the scene's [render] fps"
            return (fps, where) if fps else (None, "the scene names no frame rate")
    except (RenderFarmError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        return None, f"the scene's frame rate could not be read ({str(e)[:120] or type(e).__name__})"


def _builtin_fps(path: Path) -> float | None:
    from renderfarm.renderers.builtin.scene import load_scene

    try:
        return load_scene(path).render.fps
    except RenderFarmError:  # a command renderer's scene: a TOML of another shape, without fps
        return None


def _blend_fps(pack: Path, tmp: Path) -> float | None:
    """Blender's frame rate is `frs_sec / frs_sec_base` (29.97 is 30 / 1.001)."""
    from blender_asset_tracer import blendfile

    from renderfarm.renderers.blender.scene import MANIFEST, _active_scene, _quiet_bat

    with zipfile.ZipFile(pack) as z:
        main = json.loads(z.read(MANIFEST))["main"]
        blend = Path(z.extract(main, tmp / "unpacked"))
    _quiet_bat()
    try:
        bfile = blendfile.BlendFile(blend)
    except (blendfile.exceptions.BlendFileError, EOFError):
        return None
    try:
        scene = _active_scene(bfile)
        if scene is None:
            return None
        rate = int(scene.get((b"r", b"frs_sec"))) / (float(scene.get((b"r", b"frs_sec_base"))) or 1.0)
    except (KeyError, ValueError, TypeError, EOFError):
        return None
    finally:
        bfile.close()
    return rate if rate > 0 else None
