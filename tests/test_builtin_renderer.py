"""The builtin ray tracer: regions match their frame byte for byte in every format, renders
repeat exactly, the subprocess protocol, and a region costs in proportion to its area."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from renderfarm import images
from renderfarm.errors import InputError
from renderfarm.renderers.builtin.raytrace import (
    blocks,
    check_region,
    render_linear,
    render_region,
    sample_offsets,
)
from renderfarm.renderers.builtin.scene import Scene, load_scene, parse_scene

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RENDERER = [sys.executable, "-m", "renderfarm.renderers.builtin"]


def resized(scene: Scene, width: int, height: int, samples: int | None = None) -> Scene:
    render = dataclasses.replace(
        scene.render, width=width, height=height, samples=samples or scene.samples
    )
    return dataclasses.replace(scene, render=render)


@pytest.fixture(scope="module")
def demo() -> Scene:
    """The demo shot, small: every feature (checker, mirror, box, two lights, fog) in view."""
    return resized(load_scene(EXAMPLES / "bouncing-balls.toml"), 96, 54)


@pytest.fixture(scope="module")
def demo_frame(demo) -> np.ndarray:
    return render_region(demo, 20)


@pytest.fixture(scope="module")
def demo_linear(demo) -> np.ndarray:
    return render_linear(demo, 20)


def write_scene(tmp_path: Path, width: int = 48, height: int = 27) -> Path:
    text = (EXAMPLES / "orbit.toml").read_text()
    text = text.replace("width = 320", f"width = {width}").replace(
        "height = 180", f"height = {height}"
    )
    path = tmp_path / "orbit.toml"
    path.write_text(text)
    return path


# --- pure parts ------------------------------------------------------------------------------


def test_sample_offsets_exact():
    assert sample_offsets(1) == [(0.5, 0.5)]
    assert sample_offsets(2) == [(0.25, 0.25), (0.75, 0.75)]
    assert sample_offsets(4) == [(0.125, 0.375), (0.625, 0.125), (0.375, 0.875), (0.875, 0.625)]
    assert sample_offsets(5) == [(0.1, 0.1), (0.3, 0.5), (0.5, 0.9), (0.7, 0.3), (0.9, 0.7)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 9, 16, 17])
def test_sample_offsets_fill_every_row_and_column_once(count):
    offsets = sample_offsets(count)
    assert len(offsets) == count
    for axis in (0, 1):
        cells = sorted(int(point[axis] * count) for point in offsets)
        assert cells == list(range(count))


def test_blocks_partition_the_region_in_row_order():
    assert list(blocks((10, 5, 7, 3), 8)) == [
        (10, 5, 7, 1),
        (10, 6, 7, 1),
        (10, 7, 7, 1),
    ]
    assert list(blocks((0, 0, 5, 5), 10)) == [(0, 0, 5, 2), (0, 2, 5, 2), (0, 4, 5, 1)]
    assert list(blocks((0, 0, 5, 1), 2)) == [(0, 0, 2, 1), (2, 0, 2, 1), (4, 0, 1, 1)]


def test_region_pixels_are_the_8bit_encoding_of_linear_colour(demo, demo_frame, demo_linear):
    assert demo_linear.dtype == np.float64 and demo_linear.shape == (54, 96, 3)
    assert images.to_8bit(demo_linear).tobytes() == demo_frame.tobytes()


def test_8bit_pixels_are_what_they_were_before_other_formats_came():
    """The demo frame's pixels as the renderer wrote them before png16 and exr existed."""
    scene = resized(load_scene(EXAMPLES / "bouncing-balls.toml"), 96, 54)
    digest = hashlib.sha256(render_region(scene, 20).tobytes()).hexdigest()
    assert digest == "eb42c04291806c7cb5f1daaf49a10a2fe1ae3910529a7d5d000e4aa00962c5a0"


@pytest.mark.parametrize(
    "region",
    [(0, 0, 0, 5), (-1, 0, 5, 5), (90, 0, 7, 5), (0, 50, 5, 5), (0, 0, 1.5, 2), (0, 0, 5)],
)
def test_bad_regions_are_refused(region):
    with pytest.raises(InputError, match=r"^region: "):
        check_region(region, 96, 54)


# --- exact pixels ----------------------------------------------------------------------------


def test_empty_scene_is_its_background_exactly():
    scene = parse_scene(
        {
            "render": {"width": 7, "height": 3},
            "camera": {"position": [0, 0, 5], "look_at": [0, 0, 0]},
            "world": {"background": [0.25, 1.0, 0.0625]},
        }
    )
    image = render_region(scene, 1)
    assert image.shape == (3, 7, 3) and image.dtype == np.uint8
    assert (image == [128, 255, 64]).all()


def test_a_lit_sphere_covers_the_middle(tmp_path):
    scene = parse_scene(
        {
            "render": {"width": 9, "height": 9},
            "camera": {"position": [0, 0, 5], "look_at": [0, 0, 0], "fov": 40},
            "world": {"background": [0, 0, 0], "ambient": [0, 0, 0]},
            "lights": {"key": {"position": [0, 0, 10]}},
            "materials": {"white": {"colour": [1, 1, 1], "diffuse": 1.0, "specular": 0}},
            "objects": {
                "ball": {"type": "sphere", "center": [0, 0, 0], "radius": 1, "material": "white"}
            },
        }
    )
    image = render_region(scene, 1)
    assert image[4, 4].tolist() == [255, 255, 255]  # facing the light head on: full Lambert
    assert image[0, 0].tolist() == [0, 0, 0]


# --- byte identity ---------------------------------------------------------------------------

REGIONS = [
    (0, 0, 1, 1),
    (95, 53, 1, 1),
    (47, 26, 1, 1),
    (0, 0, 96, 1),
    (95, 0, 1, 54),
    (10, 7, 33, 19),
    (50, 20, 46, 34),
    (0, 27, 96, 27),
    (13, 0, 17, 54),
    (0, 0, 96, 54),
]


@pytest.mark.parametrize("region", REGIONS, ids=[",".join(map(str, r)) for r in REGIONS])
def test_region_is_byte_identical_to_the_crop_of_the_frame(demo, demo_frame, region):
    x, y, w, h = region
    tile = render_region(demo, 20, region)
    assert tile.shape == (h, w, 3)
    assert tile.tobytes() == demo_frame[y : y + h, x : x + w].tobytes()


@pytest.mark.parametrize("region", REGIONS, ids=[",".join(map(str, r)) for r in REGIONS])
def test_linear_region_is_bit_identical_to_the_crop_of_the_frame(demo, demo_linear, region):
    """Linear colour agrees to the bit, so every format encoded from it agrees too."""
    x, y, w, h = region
    tile = render_linear(demo, 20, region)
    assert tile.tobytes() == demo_linear[y : y + h, x : x + w].tobytes()


def test_block_size_does_not_change_a_pixel(demo, demo_frame):
    assert render_region(demo, 20, max_rays=52).tobytes() == demo_frame.tobytes()


def test_orbit_region_matches_its_frame():
    scene = resized(load_scene(EXAMPLES / "orbit.toml"), 80, 45)
    whole = render_region(scene, 7)
    for x, y, w, h in [
        (0, 0, 40, 23),
        (40, 0, 40, 23),
        (0, 23, 40, 22),
        (40, 23, 40, 22),
        (33, 11, 9, 30),
    ]:
        assert (
            render_region(scene, 7, (x, y, w, h)).tobytes() == whole[y : y + h, x : x + w].tobytes()
        )


def test_same_frame_twice_is_identical_and_frames_differ(demo, demo_frame):
    assert render_region(demo, 20).tobytes() == demo_frame.tobytes()
    assert render_region(demo, 21).tobytes() != demo_frame.tobytes()


def test_progress_reaches_one(demo):
    seen: list[float] = []
    render_region(demo, 1, (0, 0, 96, 20), progress=seen.append, max_rays=4 * 96 * 4)
    assert seen == [0.2, 0.4, 0.6, 0.8, 1.0]


# --- the subprocess --------------------------------------------------------------------------


def run_renderer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RENDERER, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_subprocess_renders_frames_in_order_and_reports_each(tmp_path):
    scene_path = write_scene(tmp_path)
    pattern = str(tmp_path / "out" / "orbit.{frame}.png")
    done = run_renderer("--scene", str(scene_path), "--frames", "5,-3,1", "--output", pattern)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    frame_lines = [line for line in lines if line.startswith("frame ")]
    expected = [f"frame {f} {tmp_path / 'out' / f'orbit.{f}.png'}" for f in (5, -3, 1)]
    assert frame_lines == expected
    assert all(line.startswith(("frame ", "progress ", "rendering frame ", "rendered frame ")) for line in lines)
    assert "rendering frame 5: 48x27, 4 samples a pixel" in lines
    assert "progress 5 1.000" in lines
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "orbit.-3.png",
        "orbit.1.png",
        "orbit.5.png",
    ]
    scene = load_scene(scene_path)
    for frame in (5, -3):
        with Image.open(tmp_path / "out" / f"orbit.{frame}.png") as image:
            assert image.mode == "RGB" and image.size == (48, 27)
            assert np.asarray(image).tobytes() == render_region(scene, frame).tobytes()


def test_subprocess_png_bytes_repeat_exactly_and_regions_crop(tmp_path):
    scene_path = write_scene(tmp_path)
    first = run_renderer(
        "--scene", str(scene_path), "--frames", "3", "--output", str(tmp_path / "a{frame}.png")
    )
    again = run_renderer(
        "--scene", str(scene_path), "--frames=3", "--output", str(tmp_path / "b{frame}.png")
    )
    tile = run_renderer(
        "--scene",
        str(scene_path),
        "--frames",
        "3",
        "--output",
        str(tmp_path / "t{frame}.png"),
        "--region",
        "11,5,20,13",
    )
    assert (first.returncode, again.returncode, tile.returncode) == (0, 0, 0)
    assert (tmp_path / "a3.png").read_bytes() == (tmp_path / "b3.png").read_bytes()
    whole = np.asarray(Image.open(io.BytesIO((tmp_path / "a3.png").read_bytes())))
    region = np.asarray(Image.open(io.BytesIO((tmp_path / "t3.png").read_bytes())))
    assert region.shape == (13, 20, 3)
    assert region.tobytes() == whole[5:18, 11:31].tobytes()


def test_subprocess_png_is_pillows_encoding_of_the_pixels(tmp_path):
    """8-bit PNGs are written as they always were: Pillow, no metadata, compress_level 6."""
    scene_path = write_scene(tmp_path)
    done = run_renderer(
        "--scene", str(scene_path), "--frames", "2", "--output", str(tmp_path / "f{frame}.png")
    )
    assert done.returncode == 0, done.stderr
    expected = io.BytesIO()
    pixels = render_region(load_scene(scene_path), 2)
    Image.fromarray(pixels).save(expected, format="PNG", compress_level=6)
    assert (tmp_path / "f2.png").read_bytes() == expected.getvalue()


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_subprocess_other_formats_repeat_exactly_and_regions_crop(tmp_path, fmt):
    scene_path = write_scene(tmp_path)
    ext = images.extension(fmt)

    def render(name: str, *extra: str) -> Path:
        pattern = str(tmp_path / f"{name}.{{frame}}.{ext}")
        done = run_renderer(
            "--scene", str(scene_path), "--frames", "3", "--output", pattern, "--format", fmt,
            *extra,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == f"frame 3 {tmp_path / f'{name}.3.{ext}'}"
        return tmp_path / f"{name}.3.{ext}"

    whole, again = render("a"), render("b")
    region = render("t", "--region", "11,5,20,13")
    assert whole.read_bytes() == again.read_bytes()
    pixels = images.read_pixels(whole, fmt)
    linear = render_linear(load_scene(scene_path), 3)
    if fmt == "png16":
        assert pixels.dtype == np.uint16 and pixels.tobytes() == images.to_16bit(linear).tobytes()
    else:
        assert pixels.dtype == np.float32 and pixels.shape == (27, 48, 4)
        assert pixels[:, :, :3].tobytes() == linear.astype(np.float32).tobytes()
        assert (pixels[:, :, 3] == 1.0).all()
    cropped = images.read_pixels(region, fmt)
    assert cropped.shape[:2] == (13, 20)
    assert cropped.tobytes() == pixels[5:18, 11:31].tobytes()
    images.check_image(region.read_bytes(), fmt=fmt, width=20, height=13, what="region")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "1", "--output", "o{frame}.png"], "builtin: --scene: missing (required)"),
        (
            ["--frames", "1,x", "--output", "o{frame}.png"],
            "builtin: --frames: expected whole numbers",
        ),
        (
            ["--frames", "1", "--output", "out.png"],
            "builtin: --output: 'out.png' does not contain {frame}",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.exr"],
            "builtin: --output: 'o{frame}.exr' does not end in .png (--format png)",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.png", "--format", "exr"],
            "builtin: --output: 'o{frame}.png' does not end in .exr (--format exr)",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.exr", "--format", "tiff"],
            "builtin: --format: 'tiff' is not one of png, png16, exr",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.png", "--format=png16", "--format", "png"],
            "builtin: --format: given twice",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.png", "--region", "0,0,49,5"],
            "builtin: region: 0,0,49,5 is not inside the 48x27 frame",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.png", "--region", "1,2"],
            "builtin: --region: expected X,Y,WIDTH,HEIGHT",
        ),
        (
            ["--frames", "1", "--output", "o{frame}.png", "--speed", "2"],
            "builtin: unknown argument '--speed'",
        ),
    ],
)
def test_subprocess_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    scene_path = write_scene(tmp_path)
    if "--scene" not in message:
        args = ["--scene", str(scene_path), *args]
    done = subprocess.run(
        [*RENDERER, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(message), done.stderr
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.exr"))


def test_subprocess_bad_scene_exits_2(tmp_path):
    scene_path = tmp_path / "bad.toml"
    scene_path.write_text(
        '[render]\nwidth = "big"\nheight = 10\n[camera]\nposition = [0,0,1]\nlook_at = [0,0,0]\n'
    )
    done = run_renderer(
        "--scene", str(scene_path), "--frames", "1", "--output", str(tmp_path / "{frame}.png")
    )
    assert done.returncode == 2
    expected = "render.width: expected an integer between 1 and 16384, got 'big'"
    assert done.stderr == f"builtin: {scene_path}: {expected}\n"


def test_subprocess_unwritable_output_exits_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = run_renderer(
        "--scene",
        str(write_scene(tmp_path)),
        "--frames",
        "1",
        "--output",
        str(blocker / "{frame}.png"),
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("builtin: ")


# --- cost ------------------------------------------------------------------------------------


def best_time(render, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        render()
        best = min(best, time.perf_counter() - start)
    return best


def test_a_quarter_region_costs_about_a_quarter_of_the_frame():
    scene = resized(load_scene(EXAMPLES / "bouncing-balls.toml"), 320, 180)
    whole = best_time(lambda: render_region(scene, 20))
    quarter = best_time(lambda: render_region(scene, 20, (80, 45, 160, 90)))
    ratio = quarter / whole
    print(
        f"\nwhole {whole:.3f} s, centre quarter {quarter:.3f} s, quarter/whole ratio: {ratio:.2f}"
    )
    assert ratio < 0.5
