"""Tile grids: splitting a frame into tiles that partition it exactly (`3x2`, or tiles of 100px).

Two ways to ask for tiles:

    columns x rows   `--tiles 3x2`      column i starts at x = i * width // columns (rows alike),
                                        so tiles differ by at most a pixel and meet exactly
    size             `--tile-size 100`  tiles of 100x100 pixels from the top-left; the last
                                        column and row take what is left (uneven, never empty)

Either way the tiles cover every pixel of the frame exactly once, in row-major order from the
top-left. A grid is stored as its text (`3x2`, `100px`) and read back with `parse_grid`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from renderfarm.errors import InputError

MAX_TILES = 4096
"""The most tiles one frame may be split into (each is a task, and 64x64 is already a lot)."""

MIN_TILE_SIZE = 16
"""The smallest `--tile-size`: below it a renderer's start-up cost dwarfs the tile's work."""

MAX_TILE_SIZE = 16384
"""The largest `--tile-size`: the largest frame side the farm renders."""

_GRID = re.compile(r"(?P<columns>[0-9]{1,6})[xX](?P<rows>[0-9]{1,6})")
_SIZE = re.compile(r"(?P<size>[0-9]{1,6})(?:px)?")
_EXAMPLES = "e.g. 2x2, 4x4"
_SHOWN_CHARS = 40  # a pasted wall of text should not become a wall of error line


@dataclass(frozen=True)
class Tile:
    """One rectangle of a frame, in pixels from the frame's top-left."""

    index: int  # row-major from the top-left, 0-based
    column: int
    row: int
    x: int
    y: int
    width: int
    height: int

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(x, y, width, height): what a renderer's `--region` takes."""
        return (self.x, self.y, self.width, self.height)

    def label(self) -> str:
        """How messages name the tile: `tile 3 (x=320 y=0 320x180)`."""
        return f"tile {self.index} (x={self.x} y={self.y} {self.width}x{self.height})"


@dataclass(frozen=True)
class TileGrid:
    """Either C columns by R rows, or tiles of at most `size` by `size` pixels."""

    columns: int | None = None
    rows: int | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            if self.columns is not None or self.rows is not None:
                raise InputError("tiles: give either columns and rows or a tile size, not both")
            _check_size(self.size, repr(self.size))
            return
        if self.columns is None or self.rows is None:
            raise InputError("tiles: give columns and rows, or a tile size")
        text = f"{self.columns}x{self.rows}"
        counts = (self.columns, self.rows)
        if not all(_is_count(v) for v in counts) or min(counts) < 1:
            raise InputError(f"tiles: {text!r} needs at least 1 column and 1 row ({_EXAMPLES})")
        if self.columns * self.rows > MAX_TILES:
            raise InputError(
                f"tiles: {text!r} makes {self.columns * self.rows:,} tiles per frame, "
                f"over the limit of {MAX_TILES:,}"
            )

    def text(self) -> str:
        """`3x2` or `100px`: how the grid is stored, read back by `parse_grid`."""
        if self.size is not None:
            return f"{self.size}px"
        return f"{self.columns}x{self.rows}"

    def shape(self, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) of this grid on a `width`x`height` frame, checked against the frame."""
        _check_frame(width, height)
        if self.size is not None:
            columns, rows = -(-width // self.size), -(-height // self.size)
            if columns * rows > MAX_TILES:
                raise InputError(
                    f"tile-size: {self.size} makes {columns * rows:,} tiles of a {width}x{height} "
                    f"frame, over the limit of {MAX_TILES:,}"
                )
            return columns, rows
        assert self.columns is not None and self.rows is not None
        for count, side, length in ((self.columns, "width", width), (self.rows, "height", height)):
            if count > length:
                raise InputError(
                    f"tiles: {self.text()} needs at least {count} pixels of {side}, "
                    f"the frame has {length}"
                )
        return self.columns, self.rows

    def count(self, width: int, height: int) -> int:
        """How many tiles this grid makes of a `width`x`height` frame (checked like `split`)."""
        columns, rows = self.shape(width, height)
        return columns * rows

    def split(self, width: int, height: int) -> list[Tile]:
        """The tiles of a `width`x`height` frame, row-major from the top-left."""
        columns, rows = self.shape(width, height)
        if self.size is not None:
            xs = [min(i * self.size, width) for i in range(columns + 1)]
            ys = [min(j * self.size, height) for j in range(rows + 1)]
        else:
            xs = [i * width // columns for i in range(columns + 1)]
            ys = [j * height // rows for j in range(rows + 1)]
        return [
            Tile(
                index=row * columns + column,
                column=column,
                row=row,
                x=xs[column],
                y=ys[row],
                width=xs[column + 1] - xs[column],
                height=ys[row + 1] - ys[row],
            )
            for row in range(rows)
            for column in range(columns)
        ]


def parse_grid(text: str) -> TileGrid:
    """Read `CxR` (the --tiles option, e.g. `3x2`) or `PXpx` (a stored tile size, e.g. `100px`)."""
    if not isinstance(text, str):
        raise InputError(f"tiles: {text!r} is not CxR ({_EXAMPLES})")
    stripped = text.strip()
    if stripped.endswith("px"):
        return grid_of_size(stripped)
    match = _GRID.fullmatch(stripped)
    if match is None:
        raise InputError(f"tiles: {_shown(text)} is not CxR ({_EXAMPLES})")
    return TileGrid(columns=int(match["columns"]), rows=int(match["rows"]))


def grid_of_size(size: object) -> TileGrid:
    """The grid of `--tile-size`: tiles of at most `size` by `size` pixels; `size` is an int,
    `"100"` or `"100px"`."""
    if isinstance(size, str):
        match = _SIZE.fullmatch(size.strip())
        if match is None:
            raise InputError(f"tile-size: {_shown(size)} is not a whole number of pixels")
        return TileGrid(size=_check_size(int(match["size"]), repr(size)))
    if not _is_count(size):
        raise InputError(f"tile-size: {_shown(size)} is not a whole number of pixels")
    return TileGrid(size=_check_size(size, repr(size)))  # type: ignore[arg-type]


def _check_size(size: object, shown: str) -> int:
    if not _is_count(size):
        raise InputError(f"tile-size: {shown} is not a whole number of pixels")
    assert isinstance(size, int)
    if size < MIN_TILE_SIZE:
        raise InputError(f"tile-size: {shown} must be at least {MIN_TILE_SIZE} pixels")
    if size > MAX_TILE_SIZE:
        raise InputError(f"tile-size: {shown} must be at most {MAX_TILE_SIZE} pixels")
    return size


def _check_frame(width: int, height: int) -> None:
    if not (_is_count(width) and _is_count(height)) or width < 1 or height < 1:
        raise InputError(f"tiles: a frame of {width!r}x{height!r} pixels cannot be split")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 4] + "...'"
