"""Stitching tiled frames: identical to the frame encoded whole, every bad tile named, streaming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from renderfarm import images
from renderfarm.errors import VerificationError
from renderfarm.images import FORMATS, encode_linear, extension
from renderfarm.stitching import TileProblem, assemble_frame
from renderfarm.tiles import Tile, TileGrid, grid_of_size, parse_grid

GRIDS = [("3x2", 64, 40), ("100px", 250, 130), ("1x1", 37, 23), ("7x5", 50, 31)]


def random_linear(width: int, height: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3)) * 1.2


def cut_tiles(
    linear: np.ndarray, grid: TileGrid, fmt: str, directory: Path
) -> list[tuple[Tile, Path]]:
    """Each tile encoded on its own, as a renderer writes a region."""
    height, width, _ = linear.shape
    pairs = []
    for tile in grid.split(width, height):
        path = directory / f"tile.{tile.index}.{extension(fmt)}"
        crop = linear[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
        encode_linear(crop, fmt, path)
        pairs.append((tile, path))
    return pairs


@pytest.fixture
def job(tmp_path):
    """A 3x2 png16 job's tiles, and the frame they make."""
    linear = random_linear(64, 40)
    return cut_tiles(linear, parse_grid("3x2"), "png16", tmp_path), tmp_path / "frame.png"


def assemble(pairs, out: Path, fmt: str = "png16", **kwargs) -> None:
    assemble_frame(pairs, width=64, height=40, fmt=fmt, out_path=out, **kwargs)


# --- exact ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("grid", "width", "height"), GRIDS, ids=[g[0] for g in GRIDS])
def test_stitched_frame_is_the_whole_frame_byte_for_byte(tmp_path, fmt, grid, width, height):
    linear = random_linear(width, height)
    whole = tmp_path / f"whole.{extension(fmt)}"
    encode_linear(linear, fmt, whole)
    pairs = cut_tiles(linear, parse_grid(grid), fmt, tmp_path)
    out = tmp_path / f"stitched.{extension(fmt)}"
    assemble_frame(iter(pairs), width=width, height=height, fmt=fmt, out_path=out)
    stitched = images.read_pixels(out, fmt)
    assert stitched.tobytes() == images.read_pixels(whole, fmt).tobytes()
    assert out.read_bytes() == whole.read_bytes()  # the same writer, the same settings


def test_the_grid_checks_each_tile_is_its_own(job):
    pairs, out = job
    assemble(reversed(pairs), out, grid=parse_grid("3x2"))  # any order will do
    images.check_image(out.read_bytes(), fmt="png16", width=64, height=40, what="frame")


def test_tiles_are_consumed_one_at_a_time(job):
    """The worker's generator deletes each tile when asked for the next: that must work."""
    pairs, out = job
    events = []

    def downloads():
        previous = None
        for tile, path in pairs:
            if previous is not None:
                previous.unlink()
            events.append(tile.index)
            yield tile, path
            previous = path

    assemble(downloads(), out)
    assert events == [0, 1, 2, 3, 4, 5]
    assert out.exists()


def test_rgba_tiles_make_an_rgba_frame(tmp_path):
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 65536, (40, 64, 4), dtype=np.uint16)
    pairs = []
    for tile in parse_grid("2x2").split(64, 40):
        path = tmp_path / f"t{tile.index}.png"
        crop = frame[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
        images.write_pixels(crop, "png16", path)
        pairs.append((tile, path))
    assemble(pairs, tmp_path / "out.png")
    assert images.read_pixels(tmp_path / "out.png", "png16").tobytes() == frame.tobytes()


# --- bad tiles ----------------------------------------------------------------------------------


def problem_of(pairs, out: Path, fmt: str = "png16", **kwargs) -> TileProblem:
    with pytest.raises(TileProblem) as caught:
        assemble(pairs, out, fmt, **kwargs)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".partial")] == []
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_missing_tile_is_named(job):
    pairs, out = job
    pairs[3] = (pairs[3][0], None)
    problem = problem_of(pairs, out)
    assert str(problem) == "tile 3 (x=0 y=20 21x20): missing from storage"
    assert problem.tile_index == 3 and problem.tile_indexes == (3,)


def test_a_truncated_tile_is_named(job):
    pairs, out = job
    path = pairs[4][1]
    path.write_bytes(path.read_bytes()[:-300])
    problem = problem_of(pairs, out)
    assert str(problem).startswith("tile 4 (x=21 y=20 21x20): truncated 16-bit PNG")
    assert problem.tile_indexes == (4,)


def test_a_tile_of_the_wrong_size_is_named(job, tmp_path):
    pairs, out = job
    encode_linear(random_linear(22, 20), "png16", pairs[1][1])
    problem = problem_of(pairs, out)
    assert str(problem) == "tile 1 (x=21 y=0 21x20): 22x20 pixels, expected 21x20"


def test_an_8bit_tile_in_a_png16_job_is_named(job):
    pairs, out = job
    encode_linear(random_linear(22, 20), "png", pairs[5][1])
    problem = problem_of(pairs, out)
    assert str(problem) == (
        "tile 5 (x=42 y=20 22x20): an 8-bit RGB PNG, expected 16-bit PNG (RGB or RGBA)"
    )


def test_a_tile_of_another_layout_is_named(job):
    pairs, out = job
    rgba = np.zeros((20, 21, 4), np.uint16)
    images.write_pixels(rgba, "png16", pairs[2][1])
    problem = problem_of(pairs, out)
    assert str(problem) == (
        "tile 2 (x=42 y=0 22x20): 21x20 pixels, expected 22x20"
    )
    images.write_pixels(np.zeros((20, 22, 4), np.uint16), "png16", pairs[2][1])
    problem = problem_of(pairs, out)
    assert str(problem) == (
        "tile 2 (x=42 y=0 22x20): holds uint16 R,G,B,A where tile 0 (x=0 y=0 21x20) holds "
        "uint16 R,G,B"
    )


def test_every_bad_tile_is_listed_at_once(job):
    pairs, out = job
    pairs[1] = (pairs[1][0], None)
    pairs[4][1].write_bytes(b"")
    pairs[5][1].write_bytes(pairs[5][1].read_bytes()[:100])
    problem = problem_of(pairs, out)
    assert problem.tile_index == 1 and problem.tile_indexes == (1, 4, 5)
    assert str(problem).startswith(
        "3 of 6 tiles are unusable: tile 1 (x=21 y=0 21x20): missing from storage; "
        "tile 4 (x=21 y=20 21x20): empty file, expected 16-bit PNG; "
        "tile 5 (x=42 y=20 22x20): truncated 16-bit PNG"
    )


def test_a_long_list_of_bad_tiles_is_cut_short_but_all_indexes_kept(tmp_path):
    tiles = parse_grid("5x4").split(64, 40)
    problem = problem_of([(t, None) for t in tiles], tmp_path / "frame.png")
    assert problem.tile_indexes == tuple(range(20))
    assert str(problem).startswith("20 of 20 tiles are unusable: tile 0 ")
    assert str(problem).endswith("; and 12 more")


def test_a_tile_the_grid_expects_but_never_given_is_named(job):
    pairs, out = job
    problem = problem_of(pairs[:2] + pairs[3:], out, grid=parse_grid("3x2"))
    assert str(problem) == "tile 2 (x=42 y=0 22x20): not given (missing)"


def test_a_tile_in_the_wrong_place_is_named(job):
    pairs, out = job
    tile, path = pairs[1]
    pairs[1] = (Tile(1, 1, 0, 20, 0, 21, 20), path)
    problem = problem_of(pairs, out, grid=parse_grid("3x2"))
    assert str(problem) == (
        "tile 1 (x=20 y=0 21x20): is not the grid's tile 1, tile 1 (x=21 y=0 21x20)"
    )


def test_a_tile_given_twice_is_named(job):
    pairs, out = job
    problem = problem_of(pairs + [pairs[0]], out)
    assert str(problem) == "tile 0 (x=0 y=0 21x20): given twice"


def test_without_a_grid_overlaps_are_named_and_gaps_refused(job):
    pairs, out = job
    tile, path = pairs[1]
    pairs[1] = (Tile(1, 1, 0, 20, 0, 21, 20), path)  # overlaps tile 0, leaves x=41 uncovered
    problem = problem_of(pairs, out)
    assert problem.tile_indexes == (0, 1)
    assert "tile 1 (x=20 y=0 21x20): overlaps another tile" in str(problem)
    with pytest.raises(VerificationError) as caught:
        assemble(pairs[1:], out)
    assert str(caught.value) == "the tiles leave x=0 y=0 20x20 of the 64x40 frame uncovered"
    assert not isinstance(caught.value, TileProblem)


def test_a_tile_outside_the_frame_is_named(job):
    pairs, out = job
    pairs[5] = (Tile(5, 2, 1, 42, 20, 23, 20), pairs[5][1])
    problem = problem_of(pairs, out)
    assert str(problem) == "tile 5 (x=42 y=20 23x20): is not inside the 64x40 frame"


def test_no_tiles_at_all_is_an_error(tmp_path):
    with pytest.raises(VerificationError, match="no tiles"):
        assemble([], tmp_path / "frame.png")


def test_the_size_grid_names_uneven_tiles(tmp_path):
    linear = random_linear(250, 130)
    pairs = cut_tiles(linear, grid_of_size(100), "exr", tmp_path)
    pairs[5] = (pairs[5][0], None)
    with pytest.raises(TileProblem) as caught:
        assemble_frame(pairs, width=250, height=130, fmt="exr", out_path=tmp_path / "f.exr",
                       grid=grid_of_size(100))
    assert str(caught.value) == "tile 5 (x=200 y=100 50x30): missing from storage"


# --- streaming ----------------------------------------------------------------------------------

PROBE = """
import json, sys
from renderfarm import images
from renderfarm.stitching import assemble_frame
from renderfarm.tiles import parse_grid

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

directory, fmt, grid = sys.argv[1:4]
width, height = int(sys.argv[4]), int(sys.argv[5])
ext = images.extension(fmt)
images.read_pixels(f"{directory}/tile.0.{ext}", fmt)  # load the decoders before measuring
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak RSS (VmHWM, ru_maxrss) to the RSS now
before = status("VmRSS")
tiles = ((t, f"{directory}/tile.{t.index}.{ext}") for t in parse_grid(grid).split(width, height))
assemble_frame(tiles, width=width, height=height, fmt=fmt, out_path=f"{directory}/frame.{ext}")
print(json.dumps({"peak_growth": status("VmHWM") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's clear_refs")
def test_stitching_holds_the_frame_and_one_tile_not_every_tile(tmp_path):
    """A 1536x1024 png16 frame (9 MB) from 12x8 tiles: if every tile were kept, the peak
    would grow by two frames; streaming, it grows by the frame plus a little."""
    width, height = 1536, 1024
    linear = random_linear(width, height)
    cut_tiles(linear, parse_grid("12x8"), "png16", tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), "png16", "12x8", str(width), str(height)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    growth = json.loads(done.stdout.splitlines()[-1])["peak_growth"]
    frame_bytes = width * height * 3 * 2
    print(f"\npeak RSS grew {growth / 2**20:.1f} MiB stitching a {frame_bytes / 2**20:.1f} MiB frame")
    assert growth < 1.5 * frame_bytes
    stitched = images.read_pixels(tmp_path / "frame.png", "png16")
    assert stitched.tobytes() == images.to_16bit(linear).tobytes()
