"""Tile grids: exact tiles for CxR and tile-size grids, exact coverage, and one-line errors."""

from __future__ import annotations

import random

import pytest

from renderfarm.errors import InputError
from renderfarm.tiles import MAX_TILES, Tile, TileGrid, grid_of_size, parse_grid


def test_3x2_of_10x5_exact():
    assert parse_grid("3x2").split(10, 5) == [
        Tile(index=0, column=0, row=0, x=0, y=0, width=3, height=2),
        Tile(index=1, column=1, row=0, x=3, y=0, width=3, height=2),
        Tile(index=2, column=2, row=0, x=6, y=0, width=4, height=2),
        Tile(index=3, column=0, row=1, x=0, y=2, width=3, height=3),
        Tile(index=4, column=1, row=1, x=3, y=2, width=3, height=3),
        Tile(index=5, column=2, row=1, x=6, y=2, width=4, height=3),
    ]


def test_columns_split_at_floor_boundaries():
    assert [t.x for t in parse_grid("4x1").split(10, 1)] == [0, 2, 5, 7]
    assert [t.width for t in parse_grid("4x1").split(10, 1)] == [2, 3, 2, 3]
    assert [t.height for t in parse_grid("1x3").split(1, 7)] == [2, 2, 3]


def test_a_grid_as_large_as_the_frame_makes_single_pixels():
    tiles = parse_grid("3x2").split(3, 2)
    assert [(t.x, t.y, t.width, t.height) for t in tiles] == [
        (0, 0, 1, 1), (1, 0, 1, 1), (2, 0, 1, 1), (0, 1, 1, 1), (1, 1, 1, 1), (2, 1, 1, 1),
    ]


def test_1x1_is_the_whole_frame():
    assert parse_grid("1x1").split(640, 360) == [Tile(0, 0, 0, 0, 0, 640, 360)]


def test_tile_size_100_of_250x130_is_uneven_in_the_last_row_and_column():
    tiles = grid_of_size(100).split(250, 130)
    assert [t.width for t in tiles if t.row == 0] == [100, 100, 50]
    assert [t.height for t in tiles if t.column == 0] == [100, 30]
    assert [(t.index, t.column, t.row, t.x, t.y) for t in tiles] == [
        (0, 0, 0, 0, 0), (1, 1, 0, 100, 0), (2, 2, 0, 200, 0),
        (3, 0, 1, 0, 100), (4, 1, 1, 100, 100), (5, 2, 1, 200, 100),
    ]


def test_tile_size_that_divides_evenly_has_no_remainder_tile():
    tiles = grid_of_size("64").split(128, 64)
    assert [t.region for t in tiles] == [(0, 0, 64, 64), (64, 0, 64, 64)]


def test_tile_size_larger_than_the_frame_is_one_tile():
    assert grid_of_size(1000).split(320, 180) == [Tile(0, 0, 0, 0, 0, 320, 180)]


def test_label_names_the_tile_and_its_rectangle():
    assert parse_grid("2x2").split(640, 360)[1].label() == "tile 1 (x=320 y=0 320x180)"


@pytest.mark.parametrize(
    ("grid", "text"),
    [
        (TileGrid(columns=3, rows=2), "3x2"),
        (TileGrid(columns=1, rows=1), "1x1"),
        (TileGrid(size=100), "100px"),
        (TileGrid(size=16), "16px"),
    ],
)
def test_text_round_trips(grid, text):
    assert grid.text() == text
    assert parse_grid(text) == grid


@pytest.mark.parametrize(
    ("text", "grid"),
    [
        (" 4X4 ", TileGrid(columns=4, rows=4)),
        ("64x64", TileGrid(columns=64, rows=64)),
        ("02x3", TileGrid(columns=2, rows=3)),
        ("100px", TileGrid(size=100)),
    ],
)
def test_parse_grid_forms(text, grid):
    assert parse_grid(text) == grid


@pytest.mark.parametrize("size", [100, "100", " 100 ", "100px"])
def test_grid_of_size_forms(size):
    assert grid_of_size(size) == TileGrid(size=100)


def test_count_without_splitting():
    assert parse_grid("3x2").count(640, 360) == 6
    assert grid_of_size(100).count(250, 130) == 6
    assert grid_of_size(16).count(1024, 1024) == 4096


def check_partition(tiles: list[Tile], width: int, height: int) -> None:
    covered = [[0] * width for _ in range(height)]
    for position, tile in enumerate(tiles):
        assert tile.index == position
        assert tile.width > 0 and tile.height > 0
        for y in range(tile.y, tile.y + tile.height):
            for x in range(tile.x, tile.x + tile.width):
                covered[y][x] += 1
    assert all(count == 1 for line in covered for count in line)


def test_random_grids_partition_the_frame_exactly():
    rng = random.Random(3)
    for _ in range(300):
        width, height = rng.randint(1, 120), rng.randint(1, 90)
        columns, rows = rng.randint(1, min(width, 64)), rng.randint(1, min(height, 64))
        grid = TileGrid(columns=columns, rows=rows)
        tiles = grid.split(width, height)
        check_partition(tiles, width, height)
        assert len(tiles) == grid.columns * grid.rows
        assert max(t.width for t in tiles) - min(t.width for t in tiles) <= 1
        assert max(t.height for t in tiles) - min(t.height for t in tiles) <= 1
        assert [t.index for t in tiles] == [t.row * grid.columns + t.column for t in tiles]
        assert parse_grid(grid.text()) == grid


def test_random_tile_sizes_partition_the_frame_exactly():
    rng = random.Random(4)
    for _ in range(300):
        width, height, size = rng.randint(1, 300), rng.randint(1, 200), rng.randint(16, 120)
        tiles = grid_of_size(size).split(width, height)
        check_partition(tiles, width, height)
        assert all(t.width == size for t in tiles if t.x + size < width)
        assert all(t.height == size for t in tiles if t.y + size < height)
        assert all(0 < t.width <= size and 0 < t.height <= size for t in tiles)
        assert parse_grid(grid_of_size(size).text()) == grid_of_size(size)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "tiles: 'abc' is not CxR (e.g. 2x2, 4x4)"),
        ("", "tiles: '' is not CxR (e.g. 2x2, 4x4)"),
        ("3", "tiles: '3' is not CxR (e.g. 2x2, 4x4)"),
        ("3x", "tiles: '3x' is not CxR (e.g. 2x2, 4x4)"),
        ("-2x2", "tiles: '-2x2' is not CxR (e.g. 2x2, 4x4)"),
        ("2.5x2", "tiles: '2.5x2' is not CxR (e.g. 2x2, 4x4)"),
        ("2x2x2", "tiles: '2x2x2' is not CxR (e.g. 2x2, 4x4)"),
        ("1234567x1", "tiles: '1234567x1' is not CxR (e.g. 2x2, 4x4)"),
        ("0x2", "tiles: '0x2' needs at least 1 column and 1 row (e.g. 2x2, 4x4)"),
        ("2x0", "tiles: '2x0' needs at least 1 column and 1 row (e.g. 2x2, 4x4)"),
        ("65x64", "tiles: '65x64' makes 4,160 tiles per frame, over the limit of 4,096"),
        ("8px", "tile-size: '8px' must be at least 16 pixels"),
        ("x" * 100, "tiles: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' is not CxR"),
    ],
)
def test_bad_grid_text_is_one_line_naming_the_value(text, message):
    with pytest.raises(InputError) as caught:
        parse_grid(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_parse_grid_refuses_a_non_string():
    with pytest.raises(InputError, match=r"^tiles: 3 is not CxR"):
        parse_grid(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("8", "tile-size: '8' must be at least 16 pixels"),
        (8, "tile-size: 8 must be at least 16 pixels"),
        (0, "tile-size: 0 must be at least 16 pixels"),
        (16385, "tile-size: 16385 must be at most 16384 pixels"),
        ("abc", "tile-size: 'abc' is not a whole number of pixels"),
        ("-100", "tile-size: '-100' is not a whole number of pixels"),
        ("1e3", "tile-size: '1e3' is not a whole number of pixels"),
        (100.0, "tile-size: 100.0 is not a whole number of pixels"),
        (True, "tile-size: True is not a whole number of pixels"),
        (None, "tile-size: None is not a whole number of pixels"),
    ],
)
def test_bad_tile_size_is_one_line_naming_the_value(size, message):
    with pytest.raises(InputError) as caught:
        grid_of_size(size)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("grid", "width", "height", "message"),
    [
        ("2000x1", 640, 360,
         "tiles: 2000x1 needs at least 2000 pixels of width, the frame has 640"),
        ("1x400", 640, 360, "tiles: 1x400 needs at least 400 pixels of height, the frame has 360"),
        ("16px", 7680, 4320,
         "tile-size: 16 makes 129,600 tiles of a 7680x4320 frame, over the limit of 4,096"),
        ("2x2", 0, 10, "tiles: a frame of 0x10 pixels cannot be split"),
    ],
)
def test_a_grid_too_fine_for_its_frame_is_refused(grid, width, height, message):
    with pytest.raises(InputError) as caught:
        parse_grid(grid).split(width, height)
    assert str(caught.value) == message


def test_a_grid_is_columns_and_rows_or_a_size_never_both():
    with pytest.raises(InputError, match="not both"):
        TileGrid(columns=2, rows=2, size=100)
    with pytest.raises(InputError, match="give columns and rows"):
        TileGrid(columns=2)
    assert MAX_TILES == 4096
