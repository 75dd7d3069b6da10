"""The Blender renderer's parts that need no farm: the tile border arithmetic, Blender's argv and
output lines, version matching, the submission's options, and reading and packing a .blend (with
a real Blender, where one is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from renderfarm.client import Submission, check_submission
from renderfarm.config import load_settings
from renderfarm.errors import FrameSpecError, InputError, SceneError
from renderfarm.renderers.blender.command import (
    Setup, blender_argv, border_for, frame_list, read_line, saved_frame,
)
from renderfarm.renderers.registry import Region
from renderfarm.scheduling import Candidate, WorkerView, pick_task, unschedulable, version_matches
from renderfarm.tiles import parse_grid

BLENDER = shutil.which("blender")
needs_blender = pytest.mark.skipif(BLENDER is None, reason="Blender is not installed")


@given(st.integers(1, 8192), st.integers(1, 8192), st.integers(1, 8), st.integers(1, 8), st.integers(0, 64))
def test_a_tile_border_truncates_to_the_pixels_meant(width, height, columns, rows, overscan):
    """Blender truncates border * size; the border asked for must land on the grown tile exactly,
    and the crop must take the tile back out of it."""
    columns, rows = min(columns, width), min(rows, height)
    for tile in parse_grid(f"{columns}x{rows}").split(width, height):
        border = border_for(Region(*tile.region), width, height, overscan)
        for low, high in ((border.min_x, border.max_x), (border.min_y, border.max_y)):
            assert 0.0 <= low < high <= 1.0
        # What Blender does with it (render/intern/initrender: disprect = border * winx, truncated).
        x0, x1 = int(border.min_x * width), int(border.max_x * width)
        b0, b1 = int(border.min_y * height), int(border.max_y * height)
        assert (x0, x1) == (max(tile.x - overscan, 0), min(tile.x + tile.width + overscan, width))
        assert (height - b1, height - b0) == (max(tile.y - overscan, 0), min(tile.y + tile.height + overscan, height))
        r, c = border.rendered, border.crop
        assert (r.x0, r.y0, r.x1, r.y1) == (x0, height - b1, x1, height - b0)
        assert (c.width, c.height) == (tile.width, tile.height)
        assert (r.x0 + c.x0, r.y0 + c.y0) == (tile.x, tile.y)
        assert 0 <= c.x0 and c.x1 <= r.width and 0 <= c.y0 and c.y1 <= r.height


def test_the_bottom_row_of_tiles_is_the_bottom_of_blenders_border():
    # 161x91 in 2x2: the top-left tile is 80x45 at the top, which Blender counts from the bottom.
    border = border_for(Region(0, 0, 80, 45), 161, 91, overscan=0)
    assert int(border.min_y * 91) == 91 - 45 and border.max_y == 1.0
    assert border.min_x == 0.5 / 161 and int(border.max_x * 161) == 80


def test_argv_is_a_list_with_the_setup_before_the_frames():
    setup = Setup(160, 90, "/w/out/.blender/blender_#####", "exr", samples=8)
    argv = blender_argv("/opt/blender", "/w/scene.blend", setup, (1, 3, 5), threads=2)
    assert argv[:4] == ["/opt/blender", "--background", "-noaudio", "--disable-autoexec"]
    assert argv[4] == "/w/scene.blend"
    assert argv.index("--python-expr") < argv.index("--threads") < argv.index("--render-frame")
    assert argv[-2:] == ["--render-frame", "1,3,5"]
    assert "--enable-autoexec" in blender_argv("b", "s.blend", setup, (1,), allow_scripts=True)
    expression = argv[argv.index("--python-expr") + 1]
    compile(expression, "<setup>", "exec")  # valid Python
    assert '"OPEN_EXR"' in expression and '"samples": 8' in expression


def test_frame_lists():
    assert frame_list((4, 5, 6, 7)) == "4..7"
    assert frame_list((1, 3, 5, 7)) == "1,3,5,7"
    assert frame_list((0,)) == "0"
    with pytest.raises(ValueError):
        frame_list((-2, -1))


def test_blender_output_lines():
    line = "Fra:12 Mem:10.52M (Peak 11.18M) | Time:00:00.00 | Remaining:00:00.03 | Mem:1.28M | Scene, ViewLayer | Sample 4/16"
    assert read_line(line).frame == 12 and read_line(line).progress == 0.25
    assert read_line("Fra:3 Mem:9.43M | Scene, ViewLayer | Initializing").progress is None
    assert read_line("Saved: '/w/out/.blender/blender_00012.png'").saved == "/w/out/.blender/blender_00012.png"
    assert read_line("Error: File format is not supported in file '/x.blend'").error.startswith("File format")
    assert read_line("Blender quit") == read_line("")
    assert saved_frame("/w/out/.blender/blender_00012.png") == 12
    assert saved_frame("/w/out/.blender/blender_123456.exr") == 123456
    assert saved_frame("/w/out/other.png") is None


def test_versions_match_by_their_leading_parts():
    assert version_matches("3.4.1", "3.4") and version_matches("3.4.1", "3") and version_matches("3.4.1", "3.4.1")
    assert not version_matches("3.4.1", "3.5") and not version_matches("3.40.0", "3.4")
    assert not version_matches(None, "3.4") and not version_matches("4.2.0", "4.2.1")


def test_a_job_goes_only_to_workers_with_its_blender():
    old = WorkerView("old", renderers=frozenset({"blender"}), versions=(("blender", "3.4.1"),))
    new = WorkerView("new", renderers=frozenset({"blender"}), versions=(("blender", "4.2.0"),))
    task = Candidate(1, "j", 0, 50, 0.0, renderer="blender", renderer_version="4.2")
    assert pick_task(old, [task]) is None and pick_task(new, [task]) == task
    assert unschedulable([old], "default", None, "blender", frozenset(), "4.2") == (
        "no live worker of pool 'default' has Blender 4.2 (they have 3.4.1)")
    assert unschedulable([old, new], "default", None, "blender", frozenset(), "4.2") is None


# A submission is checked before any farm is reached: these need no farm.

@pytest.fixture
def settings(tmp_path):
    return load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)


def test_blender_options_belong_to_the_blender_renderer(settings):
    scene = Path(__file__).resolve().parent.parent / "examples" / "orbit.toml"
    for option, value, said in (("samples", 8, "--samples"), ("resolution", "64x64", "--resolution"),
                                ("allow_scripts", True, "--allow-scripts"),
                                ("renderer_version", "4.2", "--blender-version")):
        with pytest.raises(InputError, match=f"the builtin renderer does not take {said}"):
            check_submission(settings, Submission(scene=scene, **{option: value}))


@pytest.fixture(scope="module")
def blend(tmp_path_factory) -> Path:
    """A small Cycles scene saved by Blender itself, with a texture outside its directory."""
    if BLENDER is None:
        pytest.skip("Blender is not installed")
    root = tmp_path_factory.mktemp("blend")
    (root / "assets").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (20, 200, 40)).save(root / "assets" / "green.png")
    (root / "shot").mkdir()
    script = f"""
import bpy
s = bpy.context.scene
s.render.engine = "CYCLES"
s.render.resolution_x, s.render.resolution_y, s.render.resolution_percentage = 320, 180, 50
s.frame_start, s.frame_end, s.frame_step = 5, 20, 3
m = bpy.data.materials.new("m"); m.use_nodes = True
t = m.node_tree.nodes.new("ShaderNodeTexImage"); t.image = bpy.data.images.load({str(root / "assets" / "green.png")!r})
bpy.data.objects["Cube"].data.materials.append(m)
bpy.ops.wm.save_as_mainfile(filepath={str(root / "shot" / "scene.blend")!r})
"""
    subprocess.run([BLENDER, "-b", "--factory-startup", "--python-expr", script], check=True, capture_output=True,
                   timeout=120)
    return root / "shot" / "scene.blend"


@needs_blender
def test_a_blend_is_read_without_blender(settings, blend):
    spec = check_submission(settings, Submission(scene=blend))  # a .blend: Blender, without asking
    assert (spec.renderer, spec.width, spec.height, spec.frames) == ("blender", 160, 90, "5-20x3")
    version = subprocess.run([BLENDER, "--version"], capture_output=True, text=True).stdout.split()[1]
    assert version.startswith(spec.renderer_version + ".")
    spec = check_submission(settings, Submission(scene=blend, renderer="blender", resolution="161x91", samples="4",
                                                 allow_scripts=True, renderer_version="4.2", frames="1-3"))
    assert (spec.width, spec.height, spec.renderer_version) == (161, 91, "4.2")
    assert spec.render_options.model_dump(exclude_none=True) == {"samples": 4, "allow_scripts": True}
    with pytest.raises(FrameSpecError, match="negative frames"):
        check_submission(settings, Submission(scene=blend, renderer="blender", frames="-3-1"))
    with pytest.raises(InputError, match="blender-version: '4.x'"):
        check_submission(settings, Submission(scene=blend, renderer="blender", renderer_version="4.x"))


def test_a_file_that_is_not_a_blend_is_refused(settings, tmp_path):
    bad = tmp_path / "broken.blend"
    bad.write_bytes(b"BLENDER-v304" + bytes(range(256)) * 4)
    with pytest.raises(SceneError, match="broken.blend is not a Blender file"):
        check_submission(settings, Submission(scene=bad, renderer="blender"))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(SceneError, match="broken.blend is not a Blender file"):
        check_submission(settings, Submission(scene=bad, renderer="blender"))


@needs_blender
def test_a_pack_holds_the_texture_and_is_the_same_bytes_twice(blend, tmp_path):
    from renderfarm.renderers.blender.scene import pack_scene, unpack_scene

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = pack_scene(blend, tmp_path / "a"), pack_scene(blend, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()  # content-addressed: uploaded once
    names = zipfile.ZipFile(first).namelist()
    assert names[0] == "renderfarm.json" and "scene.blend" in names
    assert any(n.endswith("green.png") for n in names)
    assert json.loads(zipfile.ZipFile(first).read("renderfarm.json")) == {"main": "scene.blend"}
    main = unpack_scene(first, tmp_path / "unpacked")
    assert main == (tmp_path / "unpacked" / "scene.blend").resolve() and main.is_file()
    assert unpack_scene(first, tmp_path / "unpacked") == main  # once: a second call finds it


@needs_blender
def test_a_missing_texture_is_named_at_submit(blend, tmp_path):
    from renderfarm.renderers.blender.scene import pack_scene

    texture = blend.parent.parent / "assets" / "green.png"
    moved = tmp_path / "green.png"
    shutil.move(texture, moved)
    try:
        with pytest.raises(SceneError, match="green.png, which does not exist"):
            pack_scene(blend, tmp_path)
    finally:
        shutil.move(moved, texture)


@needs_blender
def test_a_pack_over_the_caps_is_refused_while_it_is_packed(blend, tmp_path):
    from renderfarm.renderers.blender.scene import pack_scene
    from renderfarm.renderers.limits import Limits

    size = blend.stat().st_size  # the .blend alone fits; with its texture it does not
    with pytest.raises(SceneError, match=r"^scene pack 'scene.zip': unpacks to .* over the farm's cap of .* "
                                         r"\(set FARM_MAX_UNPACKED_BYTES or max_unpacked_bytes in farm.toml"):
        pack_scene(blend, tmp_path, Limits(max_unpacked_bytes=size + 10))
    with pytest.raises(SceneError, match=r"holds 3 files, over the farm's cap of 2 \(set FARM_MAX_PACK_ENTRIES"):
        pack_scene(blend, tmp_path, Limits(max_pack_entries=2))
    assert list(tmp_path.iterdir()) == []  # nothing left half-packed
    packed = pack_scene(blend, tmp_path, Limits(max_pack_entries=3, max_unpacked_bytes=size + 10_000))
    assert len(zipfile.ZipFile(packed).namelist()) == 3


def fake_blender(path: Path, version: str, runs: Path) -> None:
    """An executable that answers `--version` as Blender does, and counts its runs."""
    path.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'Blender {version}'\necho 'build date: 2024-01-01'\n")
    path.chmod(0o755)


def test_a_blender_found_by_farm_up_is_not_run_again_unless_it_changed(tmp_path):
    """`farm up` runs `blender --version` once and hands its finding to its workers
    (FARM_BLENDER_PROBED): a worker takes the version without running Blender, only for the very
    file found, unchanged; anything else (a Blender installed over it, another path, a record that
    does not parse) is run again."""
    from renderfarm.renderers.blender import find_blender, probe_record

    runs = tmp_path / "runs"
    blender = tmp_path / "blender"
    fake_blender(blender, "3.4.1", runs)
    env = {"FARM_BLENDER": str(blender)}
    found = find_blender(env)
    record = probe_record(found)
    assert (found.version, runs.read_text().count("run")) == ("3.4.1", 1)
    assert find_blender(env, probed=record).version == "3.4.1"
    assert runs.read_text().count("run") == 1  # taken from the record

    other = tmp_path / "other-blender"
    fake_blender(other, "4.2.0", runs)
    assert find_blender({"FARM_BLENDER": str(other)}, probed=record).version == "4.2.0"
    for garbage in ("", "{", "[]", json.dumps({"path": str(blender)}), record.replace("3.4.1", "3.4; rm -rf /")):
        assert find_blender(env, probed=garbage).version == "3.4.1"
    assert runs.read_text().count("run") == 2 + 5

    fake_blender(blender, "4.10.1", runs)  # installed over the one found (its size tells, whatever the clock)
    assert find_blender(env, probed=record).version == "4.10.1"
    assert runs.read_text().count("run") == 8
