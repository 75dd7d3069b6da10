"""Assembling a tiled frame: check every tile, paste each into the frame, write it once.

`assemble_frame` streams: it holds the output frame and one decoded tile, never all the tiles,
and takes them from an iterable that may download each just before it is needed. The frame is
written by `images.write_pixels`, the same writer the renderer's whole frames go through, so a
stitched frame is identical to the frame encoded whole, pixel for pixel and byte for byte.

Bad tiles are all reported at once. After the first bad tile nothing more is pasted, but every
remaining tile is still checked, and one `TileProblem` lists them all in `tile_indexes`, so a
retry re-renders every tile that needs it rather than discovering them one failure at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from typing import TYPE_CHECKING, Any

from renderfarm import images
from renderfarm.errors import VerificationError
from renderfarm.tiles import Tile, TileGrid

if TYPE_CHECKING:
    import numpy as np

_SHOWN_PROBLEMS = 8  # the message lists this many bad tiles; `tile_indexes` has them all


class TileProblem(VerificationError):
    """A tile is missing, truncated, undecodable, the wrong size or format, or misplaced."""

    def __init__(self, tile_index: int, message: str, *, tile_indexes: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.tile_index = tile_index
        """The first bad tile's index."""
        self.tile_indexes: tuple[int, ...] = tuple(sorted({tile_index, *tile_indexes}))
        """Every bad tile's index, ascending: the tiles a retry must render again."""


def assemble_frame(
    tiles: Iterable[tuple[Tile, str | PathLike[str] | None]],
    *,
    width: int,
    height: int,
    fmt: str,
    out_path: str | PathLike[str],
    grid: TileGrid | None = None,
) -> None:
    """Stitch `width`x`height` frame `out_path` (format `fmt`) from its tiles' files.

    `tiles` yields each tile with the path of its file, or None where the file is missing; it
    is consumed lazily, each file used before the next pair is asked for, so a generator may
    delete the last file when asked for the next. Every tile must decode as `fmt`, be its
    Tile's size, and share one layout (channels, element type) with the others; together
    the tiles must cover the frame exactly. With `grid`, each tile must also be the grid's
    tile of its index, and a tile never yielded is reported missing by its index. Without it,
    a gap nobody yielded a tile for raises a plain VerificationError: no index to name.

    Raises TileProblem listing every bad tile; nothing is written then. The frame is written
    atomically, and only once every tile has passed.
    """
    images.check_format(fmt)
    assembly = _Assembly(width, height, fmt, grid)
    for tile, path in tiles:
        assembly.add(tile, path)  # done with the file before the next one is asked for
    frame, channels = assembly.finish()
    images.write_pixels(frame, fmt, out_path, channel_names=channels if fmt == "exr" else None)


class _Assembly:
    """One frame being stitched: the frame so far, what the tiles hold, and every problem."""

    def __init__(self, width: int, height: int, fmt: str, grid: TileGrid | None) -> None:
        self.width, self.height, self.fmt = width, height, fmt
        self.expected = {t.index: t for t in grid.split(width, height)} if grid is not None else None
        self.frame: np.ndarray | None = None
        self.layout: images.Layout | None = None
        self.layout_from: Tile | None = None  # the first good tile, which set the layout
        self.placed: dict[int, Tile] = {}
        self.problems: dict[int, str] = {}
        self.seen = 0

    def add(self, tile: Tile, path: str | PathLike[str] | None) -> None:
        self.seen += 1
        problem = _misplaced(tile, self.placed, self.expected, self.width, self.height)
        if problem is not None:
            return self._fail(tile, f"{tile.label()}: {problem}")
        self.placed[tile.index] = tile
        if path is None:
            return self._fail(tile, f"{tile.label()}: missing from storage")
        try:
            pixels, layout = images.read_image(
                path, self.fmt, width=tile.width, height=tile.height, what=tile.label()
            )
        except VerificationError as e:
            return self._fail(tile, str(e))
        if self.layout is None:
            self.layout, self.layout_from = layout, tile
        elif layout != self.layout:
            first = self.layout_from.label()  # type: ignore[union-attr]
            return self._fail(
                tile,
                f"{tile.label()}: holds {layout.describe()} where {first} holds "
                f"{self.layout.describe()}",
            )
        if self.problems:
            return  # the frame will not be written: checking the rest is all that is left
        if self.frame is None:
            self.frame = _blank_frame(self.width, self.height, pixels)
        self.frame[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = pixels

    def finish(self) -> tuple[np.ndarray, tuple[str, ...]]:
        """The whole frame and its channel names; TileProblem listing every bad tile."""
        if self.expected is not None:
            for index in self.expected.keys() - self.placed.keys():
                label = self.expected[index].label()
                self.problems.setdefault(index, f"{label}: not given (missing)")
        else:
            tiles = list(self.placed.values())
            self.problems.update(_coverage_problems(tiles, self.width, self.height, self.problems))
        if self.problems:
            total = len(self.expected) if self.expected is not None else self.seen
            raise _tile_problem(self.problems, total)
        if self.frame is None or self.layout is None:
            raise VerificationError(
                f"no tiles to assemble the {self.width}x{self.height} frame from"
            )
        return self.frame, self.layout.channels

    def _fail(self, tile: Tile, message: str) -> None:
        self.problems.setdefault(tile.index, message)
        self.frame = None  # nothing will be written: let its memory go


def _misplaced(
    tile: Tile, placed: dict[int, Tile], expected: dict[int, Tile] | None, width: int, height: int
) -> str | None:
    """Why `tile` cannot go where it says, or None when it can."""
    if tile.index in placed:
        return "given twice"
    if expected is not None:
        if tile.index not in expected:
            return f"is not in the {len(expected)}-tile grid"
        if tile != expected[tile.index]:
            return f"is not the grid's tile {tile.index}, {expected[tile.index].label()}"
        return None
    if tile.width < 1 or tile.height < 1 or tile.x < 0 or tile.y < 0 or (
        tile.x + tile.width > width or tile.y + tile.height > height
    ):
        return f"is not inside the {width}x{height} frame"
    return None


def _coverage_problems(
    tiles: list[Tile], width: int, height: int, problems: dict[int, str]
) -> dict[int, str]:
    """Tiles that overlap others; VerificationError where no tile covers part of the frame.

    Counts coverage on the grid of distinct tile edges rather than per pixel: as many cells
    as a regular grid has tiles, however large the frame.
    """
    import numpy as np

    if not tiles:
        return {}
    xs = sorted({0, width, *(t.x for t in tiles), *(t.x + t.width for t in tiles)})
    ys = sorted({0, height, *(t.y for t in tiles), *(t.y + t.height for t in tiles)})
    column = {x: i for i, x in enumerate(xs)}
    row = {y: i for i, y in enumerate(ys)}
    cells = [(row[t.y], row[t.y + t.height], column[t.x], column[t.x + t.width]) for t in tiles]
    counts = np.zeros((len(ys) - 1, len(xs) - 1), dtype=np.int32)
    for top, bottom, left, right in cells:
        counts[top:bottom, left:right] += 1
    found = {
        t.index: f"{t.label()}: overlaps another tile"
        for t, (top, bottom, left, right) in zip(tiles, cells)
        if (counts[top:bottom, left:right] > 1).any() and t.index not in problems
    }
    gaps = np.argwhere(counts == 0)
    if len(gaps) and not found and not problems:
        j, i = gaps[0]
        raise VerificationError(
            f"the tiles leave x={xs[i]} y={ys[j]} {xs[i + 1] - xs[i]}x{ys[j + 1] - ys[j]} "
            f"of the {width}x{height} frame uncovered"
        )
    return found


def _blank_frame(width: int, height: int, pixels: Any) -> np.ndarray:
    import numpy as np

    return np.zeros((height, width, pixels.shape[2]), dtype=pixels.dtype)


def _tile_problem(problems: dict[int, str], total: int) -> TileProblem:
    indexes = sorted(problems)
    if len(indexes) == 1:
        return TileProblem(indexes[0], problems[indexes[0]])
    shown = "; ".join(problems[i] for i in indexes[:_SHOWN_PROBLEMS])
    more = len(indexes) - _SHOWN_PROBLEMS
    tail = f"; and {more} more" if more > 0 else ""
    return TileProblem(
        indexes[0], f"{len(indexes)} of {total} tiles are unusable: {shown}{tail}",
        tile_indexes=indexes,
    )
