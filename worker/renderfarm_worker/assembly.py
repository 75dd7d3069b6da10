"""Assembling a tiled frame on a worker: fetch its committed tiles one at a time, stitch them,
and upload the frame under the attempt's own prefix for the manager to verify and promote."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import StorageError

if TYPE_CHECKING:
    from renderfarm.tiles import Tile
    from renderfarm_worker.runtime import WorkerRuntime
    from renderfarm.wire import Output, TaskOrder
    from renderfarm_worker.attemptlog import AttemptLog

log = logging.getLogger("renderfarm.worker")


def assemble(rt: WorkerRuntime, spec: TaskOrder, workdir: Path, log_file: AttemptLog) -> list[Output]:
    """Stitch the frame; a missing or broken tile raises TileProblem naming it (and the manager
    has exactly those tiles rendered again)."""
    from renderfarm.stitching import assemble_frame
    from renderfarm.tiles import parse_grid
    from renderfarm_worker.render import upload_output

    frame = spec.frames[0]
    out = workdir / "out" / spec.output_name(frame)
    log_file.note(f"{spec.label} on {rt.name}: assembling frame {frame} from {len(spec.tile_keys)} tiles")
    assemble_frame(
        _fetch(rt, spec, workdir, log_file), width=spec.width, height=spec.height, fmt=spec.format,
        out_path=out, grid=parse_grid(spec.grid or ""),
    )
    rt.raise_if_stopped()
    rt.check_lease()
    rt.raise_if_stopped()
    return [upload_output(rt, spec, frame, out)]


def _fetch(rt: WorkerRuntime, spec: TaskOrder, workdir: Path, log_file: AttemptLog) -> Iterator[tuple[Tile, Path | None]]:
    """Each tile downloaded just before it is stitched, the one before deleted: one tile on disk
    and in memory at a time. A tile storage no longer has comes as None."""
    from renderfarm.errors import RenderError
    from renderfarm.tiles import parse_grid

    tiles = parse_grid(spec.grid or "").split(spec.width, spec.height)
    if len(tiles) != len(spec.tile_keys):
        raise RenderError(f"assembly payload names {len(spec.tile_keys)} tiles, the grid has {len(tiles)}")
    previous: Path | None = None
    try:
        urls = spec.tile_urls or (None,) * len(spec.tile_keys)
        for tile, key, url in zip(tiles, spec.tile_keys, urls):
            index = tile.index
            rt.raise_if_stopped()
            path = workdir / f"tile-{index}.{spec.ext}"
            try:
                rt.download(key, path, url)
            except StorageError as e:
                if e.transient:
                    raise
                log_file.write(f"# tile {index}: {e}\n".encode())
                path = None
            if previous is not None:
                previous.unlink(missing_ok=True)
            previous = path
            yield tile, path
    finally:
        if previous is not None:
            previous.unlink(missing_ok=True)
