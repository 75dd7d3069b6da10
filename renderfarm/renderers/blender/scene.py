""".blend scenes: what the farm needs to know of one before planning (read with Blender Asset
Tracer, so submitting needs no Blender), and the pack it travels in.

A pack is a ZIP made by BAT's packer (`bat pack`): the .blend at its root with every file it
uses (textures, linked libraries), paths rewritten to point inside the pack. Its entries are
written in a fixed order with fixed times, so the same scene makes the same bytes and is uploaded
once (its key is its SHA-256). `renderfarm.json` in it names the main .blend.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from renderfarm.errors import SceneError
from renderfarm.renderers.limits import Limits, check_pack, check_pack_totals

MANIFEST = "renderfarm.json"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED = {"pack-info.txt"}  # BAT's note of when and where it packed: differs every time


@dataclass(frozen=True)
class BlendInfo:
    width: int  # the file's resolution times its percentage
    height: int
    frames: str  # its frame range, e.g. "1-250" or "1-250x2"
    version: str  # the Blender that saved it, e.g. "3.4"
    engine: str


def _quiet_bat() -> None:
    """BAT logs what it finds wrong with a file; we say it ourselves, once, as a SceneError."""
    bat = logging.getLogger("blender_asset_tracer")
    if not bat.handlers:
        bat.addHandler(logging.NullHandler())
        bat.propagate = False


def read_blend(path: Path) -> BlendInfo:
    """Size, frame range and Blender version of a .blend's active scene; SceneError names the file
    when it is not a .blend BAT can read."""
    from blender_asset_tracer import blendfile

    _quiet_bat()
    name = path.name[:100]
    try:
        bfile = blendfile.BlendFile(path)
    except (blendfile.exceptions.BlendFileError, OSError, ValueError, EOFError) as e:
        raise SceneError(f"scene: {name} is not a Blender file Blender could open ({_reason(e)})") from None
    try:
        scene = _active_scene(bfile)
        if scene is None:
            raise SceneError(f"scene: {name} holds no scene")
        percent = int(scene.get((b"r", b"size"))) or 100
        width = int(scene.get((b"r", b"xsch"))) * percent // 100
        height = int(scene.get((b"r", b"ysch"))) * percent // 100
        start, end = int(scene.get((b"r", b"sfra"))), int(scene.get((b"r", b"efra")))
        step = max(int(scene.get((b"r", b"frame_step"))), 1)
        engine = scene.get((b"r", b"engine"), as_str=True)
        version = str(bfile.header.version)
    except (KeyError, ValueError, TypeError, EOFError, OSError) as e:
        raise SceneError(f"scene: {name}: cannot read its render settings ({_reason(e)})") from None
    finally:
        bfile.close()
    frames = f"{start}-{end}" if start != end else str(start)
    if step > 1 and start != end:
        frames += f"x{step}"
    return BlendInfo(max(width, 1), max(height, 1), frames, _dotted(version), engine)


def _active_scene(bfile):
    glob = bfile.find_blocks_from_code(b"GLOB")
    if glob:
        try:
            scene = glob[0].get_pointer(b"curscene")
        except (KeyError, ValueError):
            scene = None
        if scene is not None:
            return scene
    scenes = bfile.find_blocks_from_code(b"SC")
    return scenes[0] if scenes else None


def _dotted(version: str) -> str:
    """BAT's header version (304, 1002) as Blender writes it (3.4, 10.2)."""
    digits = re.sub(r"\D", "", version)
    if len(digits) < 3:
        return digits or "0"
    return f"{int(digits[:-2])}.{int(digits[-2:])}"


def _reason(e: Exception) -> str:
    return (str(e).strip() or type(e).__name__).splitlines()[0][:200]


def pack_scene(path: Path, into: Path, limits: Limits | None = None) -> Path:
    """Pack `path` and every file it uses into `into/<stem>.zip`; SceneError names what is missing,
    or the cap the files come to more than (counted as they are queued: a pack over the cap stops
    there, not once it is written)."""
    from blender_asset_tracer.pack import transfer

    _quiet_bat()
    limits = limits or Limits.current()
    raw = into / "bat.zip"
    refused: list[SceneError] = []
    try:
        with _packer(path, raw, limits, refused) as packer:
            try:
                packer.strategise()
                missing = sorted(str(p) for p in packer.missing_files)
                if missing:
                    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                    raise SceneError(f"scene: {path.name[:100]} uses {missing[0][:200]}{more}, which does not exist")
                packer.execute()
            except BaseException:
                packer.abort()  # else BAT's transfer thread waits on forever, and so does this process
                raise
    except transfer.FileTransferError as e:
        if refused:
            raise refused[0] from None
        raise SceneError(f"scene: {path.name[:100]}: could not pack {len(e.files_remaining)} file(s), "
                         f"starting with {str(e.files_remaining[0])[:200]}") from None
    finally:
        if refused:
            raw.unlink(missing_ok=True)
    if refused:
        raise refused[0]
    target = into / f"{path.stem}.zip"
    _normalize(raw, target, path.name)
    raw.unlink()
    check_pack(target, limits)  # the pack as a worker will see it
    return target


def _packer(path: Path, target: Path, limits: Limits, refused: list[SceneError]):
    """BAT's ZIP packer, copying its temporary files where it would move them: in BAT 1.23 a move
    is queued before the file's size is read, and the ZIP thread may have deleted it by then
    (1 pack in 12 failed here). BAT deletes its temporary directory when the packer closes.

    Files are counted as they are queued; the first one over a cap stops the transfer thread and
    lands in `refused`, and nothing more is queued (raising there would leave BAT's thread
    waiting forever)."""
    from blender_asset_tracer.pack import transfer, zipped

    class CopyingTransferrer(zipped.ZipTransferrer):
        entries, unpacked = 1, 0  # the manifest is an entry too

        def queue_copy(self, src, dst) -> None:
            if refused:
                return
            if Path(dst).name not in _SKIPPED:  # left out of the pack by _normalize
                self.entries, self.unpacked = self.entries + 1, self.unpacked + src.stat().st_size
            try:
                check_pack_totals(f"{path.stem}.zip", self.entries, self.unpacked, limits)
            except SceneError as e:
                refused.append(e)
                self.abort()
                return
            super().queue_copy(src, dst)

        def queue_move(self, src, dst) -> None:
            self.queue_copy(src, dst)

    class Packer(zipped.ZipPacker):
        def _create_file_transferer(self) -> transfer.FileTransferer:
            return CopyingTransferrer(target.absolute())

    return Packer(path, path.parent, str(target))


def _normalize(source: Path, target: Path, main: str) -> None:
    """The pack rewritten with sorted entries and fixed times, and the manifest first."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as dst:
        dst.writestr(zipfile.ZipInfo(MANIFEST, _FIXED_TIME), json.dumps({"main": main}))
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            if info.is_dir() or info.filename in _SKIPPED:
                continue
            entry = zipfile.ZipInfo(info.filename, _FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            with src.open(info) as data, dst.open(entry, "w") as out:
                shutil.copyfileobj(data, out, 1 << 20)


def unpack_scene(pack: Path, target: Path, limits: Limits | None = None) -> Path:
    """Unpack a scene pack into the directory `target` (made whole or not at all); returns the main
    .blend in it. A pack over the caps (`limits`, else this process's settings) or with an entry
    that would land outside `target` is refused before anything is written."""
    if not target.exists():
        check_pack(pack, limits or Limits.current())
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            with zipfile.ZipFile(pack) as z:
                z.extractall(tmp)
            tmp.rename(target)
        except FileExistsError:  # another task of this worker unpacked it meanwhile
            pass
        except OSError as e:
            if not target.exists():
                raise SceneError(f"scene pack {pack.name}: cannot unpack ({e})") from None
        except zipfile.BadZipFile as e:
            raise SceneError(f"scene pack {pack.name}: not a ZIP ({e})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        main = json.loads((target / MANIFEST).read_text())["main"]
    except (OSError, ValueError, KeyError) as e:
        raise SceneError(f"scene pack {pack.name}: no readable {MANIFEST} ({e})") from None
    blend = (target / main).resolve()
    if blend.parent != target.resolve() or not blend.is_file():
        raise SceneError(f"scene pack {pack.name}: its main file {main!r} is not at its root")
    return blend
