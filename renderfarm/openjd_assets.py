"""The files an OpenJD job brings from the artist's disk: those of its PATH parameters whose
`dataFlow` is IN or INOUT and those its bundle's asset references name, found, bounded, hashed
and uploaded content-addressed (`assets/<sha256>`, like scenes), so a worker's session finds them
after they are gone from the artist's disk.

Where a session holds them (paths relative to its params/ folder, as the worker lays it out):

    <Name>/<leaf>[/<path in it>]     a file or folder of an IN/INOUT PATH parameter (the folder the
                                     worker maps the parameter's absolute value to)
    asset-roots/<i>/<path in it>     an asset reference outside every such parameter; folder <i> is
                                     the i-th root (a referenced folder, or a referenced file's
                                     folder), and gets a path mapping rule from its absolute path

`asset-roots` holds a '-', which no parameter name does, so it never collides with one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderfarm.errors import InputError, shown
from renderfarm.storage.base import sha256_file

if TYPE_CHECKING:
    from renderfarm.renderers.limits import RenderLimits
    from renderfarm.wire import OpenJDAsset, OpenJDPathMapping

ROOTS = "asset-roots"


@dataclass(frozen=True)
class Gathered:
    """The files to upload (local path, path in the session) and the path mapping rules."""

    files: tuple[tuple[Path, str], ...]
    mappings: tuple[tuple[str, str], ...]  # (absolute folder on the artist's disk, path in the session)


def gather(template: dict[str, Any], values: dict[str, str], references: dict[str, Any] | None,
           base: Path, limits: RenderLimits) -> Gathered:
    """What the job brings: IN/INOUT PATH parameters (their value, or their default), then the
    asset references outside them. Relative paths are read from `base` (the bundle's folder).
    InputError names a missing file, a name a session cannot hold, or a cap passed."""
    files: dict[Path, str] = {}
    covered: list[Path] = []
    for definition in template.get("parameterDefinitions") or []:
        if not isinstance(definition, dict) or definition.get("type") != "PATH":
            continue
        flow, name = definition.get("dataFlow", "NONE"), str(definition.get("name"))
        value = values.get(name, definition.get("default"))
        if flow not in ("IN", "INOUT") or not isinstance(value, str) or not value:
            continue
        local = _absolute(value, base)
        leaf = Path(value).name
        at = name if leaf in ("", ".", "..") else f"{name}/{leaf}"
        if not local.exists():
            if flow == "IN":
                raise InputError(f"parameter {name}: {shown(value)} does not exist (an IN path is uploaded)")
            continue
        _add(files, local, at, f"parameter {name}")
        covered.append(local)
    refs = ((references or {}).get("inputs") or {})
    wanted = [(_absolute(p, base), False) for p in refs.get("filenames") or []]
    wanted += [(_absolute(p, base), True) for p in refs.get("directories") or []]
    wanted = [(p, is_dir) for p, is_dir in wanted if not any(_within(p, c) for c in covered)]
    for path, is_dir in wanted:
        if not (path.is_dir() if is_dir else path.is_file()):
            kind = "folder" if is_dir else "file"
            raise InputError(f"asset_references: {kind} {shown(str(path))} does not exist")
    tops = sorted({p if is_dir else p.parent for p, is_dir in wanted}, key=lambda p: (len(p.parts), str(p)))
    roots: list[Path] = []
    for top in tops:
        if not any(_within(top, r) for r in roots):
            roots.append(top)
    for path, _is_dir in wanted:
        i = next(i for i, r in enumerate(roots) if _within(path, r))
        relative = path.relative_to(roots[i]).as_posix()
        _add(files, path, f"{ROOTS}/{i}" + ("" if relative == "." else f"/{relative}"), "asset_references")
    _check_caps(files, limits)
    return Gathered(tuple(files.items()), tuple((str(r), f"{ROOTS}/{i}") for i, r in enumerate(roots)))


def _absolute(text: str, base: Path) -> Path:
    return Path(os.path.normpath(base / os.path.expanduser(text)))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _add(files: dict[Path, str], local: Path, at: str, what: str) -> None:
    """`local` (a file, or every file under a folder, links never followed) at `at`."""
    from renderfarm.wire.base import check_relative_path

    found = [(local, at)] if not local.is_dir() else [
        (Path(folder, n), f"{at}/{Path(folder, n).relative_to(local).as_posix()}")
        for folder, _dirs, names in os.walk(local) for n in sorted(names)]
    for path, relative in found:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            check_relative_path(relative)
        except ValueError as e:
            raise InputError(f"{what}: {shown(str(path))} cannot travel: {e}") from None
        files.setdefault(path, relative)


def _check_caps(files: dict[Path, str], limits: RenderLimits) -> None:
    from renderfarm.renderers.limits import raise_hint, size_text
    from renderfarm.wire.submission import ASSETS_CAP

    cap = min(ASSETS_CAP, limits.max_pack_entries)
    if len(files) > cap:
        raise InputError(f"assets: {len(files)} files to upload, over the farm's cap of {cap} "
                         f"({raise_hint('max_pack_entries')}; at most {ASSETS_CAP} in any case)")
    total = sum(p.stat().st_size for p in files)
    if total > limits.max_unpacked_bytes:
        raise InputError(f"assets: {size_text(total)} to upload, over the farm's cap of "
                         f"{size_text(limits.max_unpacked_bytes)} ({raise_hint('max_unpacked_bytes')})")


def describe(gathered: Gathered) -> tuple[tuple[OpenJDAsset, ...], tuple[OpenJDPathMapping, ...]]:
    """The job's record of what it brings: each file's path in the session, size and SHA-256."""
    from renderfarm.wire import OpenJDAsset, OpenJDPathMapping

    assets = tuple(OpenJDAsset(path=at, size=path.stat().st_size, sha256=sha256_file(path))
                   for path, at in gathered.files)
    return assets, tuple(OpenJDPathMapping(source=s, path=p) for s, p in gathered.mappings)


def upload(storage, gathered: Gathered, assets) -> int:
    """Upload each file not in storage yet (content-addressed); returns how many were sent."""
    sent = 0
    for (path, _at), asset in zip(gathered.files, assets):
        if storage.head(asset.key) is None:
            storage.put_file(asset.key, path, sha256=asset.sha256)
            sent += 1
    return sent
