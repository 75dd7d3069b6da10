"""What each task must leave in storage once committed: whole frames, one tile, or an assembled
frame, each with its final key and its size in pixels."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from renderfarm.frames import parse_frames
from renderfarm.models import TaskKind
from renderfarm.storage.keys import frame_key, tile_key

if TYPE_CHECKING:
    from renderfarm.models import Job, Task
    from renderfarm.tiles import Tile


@dataclass(frozen=True)
class Expected:
    """One output a task must produce: its frame, where it is committed, and its size."""

    frame: int
    final_key: str
    width: int
    height: int


def extension(job: Job) -> str:
    from renderfarm.images import extension as ext

    return ext(job.output_format)


@lru_cache(maxsize=256)
def _tiles(grid_text: str, width: int, height: int) -> tuple[Tile, ...]:
    from renderfarm.tiles import parse_grid

    return tuple(parse_grid(grid_text).split(width, height))


def job_tiles(job: Job) -> tuple[Tile, ...]:
    """The tiles of a tiled job's frames (empty for a job rendered whole)."""
    return _tiles(job.tiles, job.width, job.height) if job.tiles else ()


def expected_outputs(job: Job, task: Task) -> list[Expected]:
    if task.kind == TaskKind.OPENJD.value:
        return []  # an OpenJD task's outputs are its PATH parameters' files (not verified yet)
    ext = extension(job)
    if task.kind == TaskKind.TILE.value:
        tile = job_tiles(job)[task.tile]
        return [Expected(task.first_frame, tile_key(job.id, job.name, task.first_frame, tile.index, ext), tile.width, tile.height)]
    return [Expected(f, frame_key(job.id, job.name, f, ext), job.width, job.height) for f in parse_frames(task.frames)]


def frame_tile_keys(job: Job, frame: int) -> list[str]:
    """Where a frame's committed tiles are."""
    ext = extension(job)
    return [tile_key(job.id, job.name, frame, t.index, ext) for t in job_tiles(job)]
