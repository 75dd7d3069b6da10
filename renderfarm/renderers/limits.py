"""The farm's caps on what one job may ask for: pixels a frame, samples, scene files and packs.

Each cap is a setting (renderfarm.config); a refusal is one line naming the value, the cap and
the setting that raises it. The CLI checks a submission against its own settings; a worker checks
again against its own before it unpacks or renders, since a job need not come from `farm submit`.

A scene pack (a ZIP) is checked from its directory before anything is unpacked: its entries'
count, their declared sizes and their names (none absolute, none through '..', no symbolic
links). The declared sizes bound what unpacking writes: Python's zipfile stops an entry at its
declared size (and then fails its CRC check).
"""

from __future__ import annotations

import re
import stat
import struct
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

from renderfarm.config import Settings
from renderfarm.errors import InputError, SceneError, shown

_EOCD = struct.Struct("<4s4H2LH")  # ZIP's end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    """The caps one process applies; `Limits.of(settings)` takes them from its settings."""

    max_pixels: int = Settings.max_pixels
    max_samples: int = Settings.max_samples
    max_scene_bytes: int = Settings.max_scene_bytes
    max_scene_objects: int = Settings.max_scene_objects
    max_unpacked_bytes: int = Settings.max_unpacked_bytes
    max_pack_entries: int = Settings.max_pack_entries

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @classmethod
    def current(cls) -> Limits:
        """This process's caps, from its environment and farm.toml (as `farm config` shows them)."""
        from renderfarm.config import load_settings

        return cls.of(load_settings())


def raise_hint(cap: str) -> str:
    """How to raise a cap: its environment variable or its farm.toml key."""
    return f"set FARM_{cap.upper()} or {cap} in farm.toml to raise it"


def size_text(n: int) -> str:
    """A byte count as people read it: 20 GiB, 1.5 MiB, 512 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def check_render_size(width: int, height: int, samples: int | None, limits: Limits, *,
                      what: str = "resolution") -> None:
    """Refuse a frame of more pixels, or more samples per pixel, than the farm's caps (InputError)."""
    pixels = width * height
    if pixels > limits.max_pixels:
        raise InputError(f"{what}: {width}x{height} is {pixels} pixels a frame, over the farm's cap of "
                         f"{limits.max_pixels} ({raise_hint('max_pixels')})")
    if samples is not None and samples > limits.max_samples:
        raise InputError(f"samples: {samples} is over the farm's cap of {limits.max_samples} samples "
                         f"per pixel ({raise_hint('max_samples')})")


def check_scene_file(path: Path, limits: Limits) -> None:
    """Refuse a scene file (TOML/JSON, read whole) larger than the cap, before reading it."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # reading it says why, in the words of the renderer that reads it
    if size > limits.max_scene_bytes:
        raise SceneError(f"scene: {shown(path.name)} is {size_text(size)}, over the farm's cap of "
                         f"{size_text(limits.max_scene_bytes)} a scene file "
                         f"({raise_hint('max_scene_bytes')})")


def check_scene_objects(name: str, count: int, limits: Limits) -> None:
    """Refuse a scene of more objects (and lights) than the cap."""
    if count > limits.max_scene_objects:
        raise SceneError(f"scene: {shown(name)} holds {count} objects and lights, over the farm's cap of "
                         f"{limits.max_scene_objects} ({raise_hint('max_scene_objects')})")


def check_pack_totals(name: str, entries: int, unpacked: int, limits: Limits) -> None:
    """Refuse a pack of more files, or more bytes unpacked, than the caps."""
    if entries > limits.max_pack_entries:
        raise SceneError(f"scene pack {shown(name)}: holds {entries} files, over the farm's cap of "
                         f"{limits.max_pack_entries} ({raise_hint('max_pack_entries')})")
    if unpacked > limits.max_unpacked_bytes:
        raise SceneError(f"scene pack {shown(name)}: unpacks to {size_text(unpacked)}, over the farm's "
                         f"cap of {size_text(limits.max_unpacked_bytes)} "
                         f"({raise_hint('max_unpacked_bytes')})")


def check_pack(pack: Path, limits: Limits) -> None:
    """Refuse a scene pack that would unpack to more than the caps allow, or outside its directory;
    read from its central directory, nothing unpacked. SceneError names the pack and the entry."""
    name = pack.name
    try:
        declared = declared_entries(pack)
        if declared is not None:  # before zipfile reads every entry of the directory into memory
            check_pack_totals(name, declared, 0, limits)
        with zipfile.ZipFile(pack) as z:
            infos = z.infolist()
    except zipfile.BadZipFile as e:
        raise SceneError(f"scene pack {shown(name)}: not a ZIP ({e})") from None
    except OSError as e:
        raise SceneError(f"scene pack {shown(name)}: unreadable ({e.strerror or e})") from None
    check_pack_totals(name, len(infos), sum(i.file_size for i in infos), limits)
    for info in infos:
        if why := unsafe_entry(info):
            raise SceneError(f"scene pack {shown(name)}: entry {shown(info.filename)} {why}; refused")


def unsafe_entry(info: zipfile.ZipInfo) -> str | None:
    """Why an entry may not be unpacked (a path outside the pack, a link), or None."""
    name = info.filename
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "climbs out of the pack with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    return None


def declared_entries(pack: Path) -> int | None:
    """The entry count a ZIP's end record declares (None when there is no end record: zipfile
    then says what is wrong)."""
    with pack.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        tail_start = max(size - _EOCD.size - 0xFFFF, 0)  # the record, then a comment of up to 64 KiB
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
        entries = _EOCD.unpack_from(tail, at)[4]
        locator_at = tail_start + at - _ZIP64_LOCATOR.size
        if locator_at < 0:
            return entries
        f.seek(locator_at)
        locator = f.read(_ZIP64_LOCATOR.size)
        if not locator.startswith(b"PK\x06\x07"):
            return entries
        f.seek(_ZIP64_LOCATOR.unpack(locator)[2])
        record = f.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or not record.startswith(b"PK\x06\x06"):
            return entries
        return _ZIP64_EOCD.unpack(record)[7]
