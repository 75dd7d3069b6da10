"""Builtin scenes: the examples load, keyframes interpolate exactly, every bad file is named."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from renderfarm.errors import SceneError
from renderfarm.renderers.builtin.animation import EASINGS, Key, ease, interpolate
from renderfarm.renderers.builtin.parts import Box, Plane, Sphere
from renderfarm.renderers.builtin.scene import load_scene, parse_scene

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

MINIMAL = """\
[render]
width = 64
height = 36
frames = "1-10"

[camera]
position = [0, 2, 8]
look_at = [0, 1, 0]

[lights.key]
position = [4, 6, 4]

[materials.floor]
checker = [0.1, 0.1, 0.1]

[objects.floor]
type = "plane"
material = "floor"

[objects.ball]
type = "sphere"
center = [0, 1, 0]
radius = 1

[objects.crate]
type = "box"
center = [2, 0.5, 0]
size = [1, 1, 1]
"""


def write(tmp_path: Path, text: str, name: str = "scene.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def scene_error(path: Path) -> str:
    with pytest.raises(SceneError) as caught:
        load_scene(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- the examples ----------------------------------------------------------------------------


def test_demo_shot_loads_with_its_render_settings():
    scene = load_scene(EXAMPLES / "bouncing-balls.toml")
    assert (scene.width, scene.height, scene.frames, scene.samples) == (640, 360, "1-48", 4)
    assert {thing.name for thing in scene.objects} >= {"floor", "red", "mirror-ball"}


def test_orbit_shot_loads_with_its_render_settings():
    scene = load_scene(EXAMPLES / "orbit.toml")
    assert (scene.width, scene.height, scene.frames, scene.samples) == (320, 180, "1-24", 4)


def test_json_scene_equals_the_same_scene_in_toml(tmp_path):
    toml_path = EXAMPLES / "bouncing-balls.toml"
    json_path = tmp_path / "bouncing-balls.json"
    json_path.write_text(json.dumps(tomllib.loads(toml_path.read_text())))
    from_toml, from_json = load_scene(toml_path), load_scene(json_path)
    assert from_json == dataclasses.replace(from_toml, source=str(json_path))


def documented_block(language: str, number: int = 0) -> str:
    text = (ROOT / "docs" / "scene-format.md").read_text()
    return text.split(f"```{language}\n")[number + 1].split("```")[0]


def test_the_documented_examples_load_and_agree(tmp_path):
    toml_scene = load_scene(write(tmp_path, documented_block("toml", 0)))
    assert (toml_scene.width, toml_scene.height, toml_scene.frames) == (320, 180, "1-24")
    json_scene = load_scene(write(tmp_path, documented_block("json"), "scene.json"))
    for frame in (1, 6, 12, 24):
        toml_ball = next(o for o in toml_scene.at(frame).objects if o.name == "ball")
        json_ball = next(o for o in json_scene.at(frame).objects if o.name == "ball")
        assert toml_ball.center == json_ball.center


def test_minimal_scene_fills_in_defaults(tmp_path):
    scene = load_scene(write(tmp_path, MINIMAL))
    assert scene.samples == 1
    assert scene.render.bounces == 2
    assert scene.camera.up == (0.0, 1.0, 0.0)
    floor, ball, crate = scene.objects
    assert isinstance(floor, Plane) and floor.normal == (0.0, 1.0, 0.0)
    assert isinstance(ball, Sphere) and ball.radius == 1.0 and ball.material is None
    assert isinstance(crate, Box) and crate.size == (1.0, 1.0, 1.0)
    assert scene.material_of(floor).checker == (0.1, 0.1, 0.1)
    assert scene.material_of(ball).name == "default"


def test_loading_a_scene_imports_no_numpy():
    code = (
        "import sys; from renderfarm.renderers.builtin import load_scene; "
        f"load_scene({str(EXAMPLES / 'bouncing-balls.toml')!r}); "
        "assert 'numpy' not in sys.modules, 'numpy was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- easing and keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("ease-in-out", [0.0, 0.15625, 0.5, 0.84375, 1.0]),
        ("ease-in", [0.0, 0.0625, 0.25, 0.5625, 1.0]),
        ("ease-out", [0.0, 0.4375, 0.75, 0.9375, 1.0]),
        ("step", [0.0, 0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_easing_curves_exact(name, expected):
    assert [ease(name, t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)] == expected


def test_easing_names():
    assert list(EASINGS) == ["linear", "ease-in", "ease-out", "ease-in-out", "step"]


def test_interpolate_linear_and_ease_in_out_exact():
    keys = (Key(1, 0.0, "linear"), Key(5, 8.0, "ease-in-out"), Key(9, 0.0, "linear"))
    values = [interpolate(keys, frame) for frame in range(-1, 12)]
    #          before   1    2    3    4    5    6       7    8       9    after
    assert values == [0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0, 6.75, 4.0, 1.25, 0.0, 0.0, 0.0]


def test_interpolate_vectors_component_by_component():
    keys = (Key(0, (0.0, 10.0, -4.0), "linear"), Key(4, (4.0, 10.0, 4.0), "linear"))
    assert interpolate(keys, 1) == (1.0, 10.0, -2.0)


def test_a_single_key_holds_everywhere():
    keys = (Key(10, 3.5, "ease-in-out"),)
    assert [interpolate(keys, f) for f in (-100, 10, 100)] == [3.5, 3.5, 3.5]


ANIMATED = (
    MINIMAL
    + """
[[animate]]
path = "objects.ball.center[1]"
keys = [[1, 1.0], [5, 3.0, "ease-out"], [9, 1.0]]

[[animate]]
path = "camera.position"
interpolation = "ease-in-out"
keys = [[1, [0, 2, 8]], [5, [4, 2, 8]]]

[[animate]]
path = "lights.key.intensity"
keys = [[1, 0.0], [11, 1.0]]

[[animate]]
path = "materials.floor.checker[2]"
keys = [[1, 0.0], [11, 1.0]]

[[animate]]
path = "world.ambient"
keys = [[1, [0, 0, 0]], [11, [1, 0.5, 0.25]]]
"""
)


def test_at_applies_every_track(tmp_path):
    scene = load_scene(write(tmp_path, ANIMATED))
    posed = scene.at(3)
    assert posed.objects[1].center == (0.0, 2.0, 0.0)
    assert posed.camera.position == (2.0, 2.0, 8.0)
    assert posed.lights[0].intensity == 0.2
    assert posed.materials[0].checker == (0.1, 0.1, 0.2)
    assert posed.world.ambient == (0.2, 0.1, 0.05)
    assert posed.animation == ()
    assert scene.at(7).objects[1].center == (0.0, 1.0 + 2.0 * 0.25, 0.0)  # ease-out at t=0.5
    assert scene.objects[1].center == (0.0, 1.0, 0.0)  # the loaded scene itself is unchanged


def test_components_meeting_at_zero_fail_at_that_frame(tmp_path):
    text = (
        MINIMAL
        + """
[[animate]]
path = "objects.floor.normal[1]"
keys = [[1, 1.0], [3, -1.0]]
"""
    )
    scene = load_scene(write(tmp_path, text))
    scene.at(1)
    with pytest.raises(
        SceneError, match=r"scene.toml: frame 2: objects.floor.normal: expected a non-zero"
    ):
        scene.at(2)


# --- bad files -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert scene_error(tmp_path / "nope.toml").endswith("no such scene file")


def test_unknown_extension(tmp_path):
    message = scene_error(write(tmp_path, MINIMAL, "scene.yaml"))
    assert "unknown scene format '.yaml' (expected .toml or .json)" in message


def test_invalid_toml_names_the_line(tmp_path):
    message = scene_error(write(tmp_path, "[render]\nwidth = 64\nheight = = 3\n"))
    assert message.startswith(f"{tmp_path / 'scene.toml'}: line 3: invalid TOML (")


def test_invalid_json_names_the_line(tmp_path):
    message = scene_error(write(tmp_path, '{\n  "render": {\n    "width": 64,,\n', "scene.json"))
    assert message.startswith(f"{tmp_path / 'scene.json'}: line 3: invalid JSON (")


def test_json_must_hold_an_object(tmp_path):
    assert "expected a JSON object" in scene_error(write(tmp_path, "[1, 2]", "scene.json"))


def test_a_directory_is_not_readable(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    assert "cannot read the scene file" in scene_error(tmp_path / "dir.toml")


def replace_line(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, 1)


BAD_SCENES = [
    # missing required fields
    (MINIMAL.replace("width = 64\n", ""), "render.width: missing (required)"),
    (
        MINIMAL.replace("[camera]\nposition = [0, 2, 8]\nlook_at = [0, 1, 0]\n", ""),
        "camera: missing (required)",
    ),
    (replace_line("radius = 1\n", ""), "objects.ball.radius: missing (required)"),
    (replace_line('type = "sphere"\n', ""), "objects.ball.type: missing"),
    # wrong types and values
    (
        replace_line("width = 64", "width = 'big'"),
        "render.width: expected an integer between 1 and 16384, got 'big'",
    ),
    (
        replace_line("width = 64", "width = 0"),
        "render.width: expected an integer between 1 and 16384, got 0",
    ),
    (
        replace_line("height = 36", "height = -5"),
        "render.height: expected an integer between 1 and 16384, got -5",
    ),
    (
        replace_line("width = 64", "width = 20000"),
        "render.width: expected an integer between 1 and 16384, got 20000",
    ),
    (
        replace_line("width = 64", "width = 64.0"),
        "render.width: expected an integer between 1 and 16384, got 64.0",
    ),
    (
        replace_line("width = 64", "width = true"),
        "render.width: expected an integer between 1 and 16384, got True",
    ),
    (
        replace_line('frames = "1-10"', "samples = 0"),
        "render.samples: expected an integer between 1 and 256, got 0",
    ),
    (replace_line('frames = "1-10"', 'frames = "10-1"'), "render.frames: '10-1' runs backwards"),
    (replace_line('frames = "1-10"', 'frames = "1..10"'), "render.frames: expected a frame spec"),
    (
        replace_line("radius = 1", "radius = 'big'"),
        "objects.ball.radius: expected a positive number, got 'big'",
    ),
    (
        replace_line("radius = 1", "radius = 0"),
        "objects.ball.radius: expected a positive number, got 0",
    ),
    (
        replace_line("radius = 1", "radius = -2.5"),
        "objects.ball.radius: expected a positive number, got -2.5",
    ),
    (
        replace_line("radius = 1", "radius = nan"),
        "objects.ball.radius: expected a positive number, got nan",
    ),
    (
        replace_line("size = [1, 1, 1]", "size = [1, 0, 1]"),
        "objects.crate.size: expected a list of 3 numbers, each a positive number, got [1, 0, 1]",
    ),
    (
        replace_line("center = [0, 1, 0]", "center = [0, 1]"),
        "objects.ball.center: expected a list of 3 numbers, got [0, 1]",
    ),
    (
        replace_line("checker = [0.1, 0.1, 0.1]", "checker = [0.1, -0.1, 0.1]"),
        "materials.floor.checker: expected a list of 3 numbers, each a number >= 0",
    ),
    (
        replace_line("look_at = [0, 1, 0]", "look_at = [0, 1, 0]\nfov = 180"),
        "camera.fov: expected a number greater than 0 and less than 180, got 180",
    ),
    (
        replace_line("look_at = [0, 1, 0]", "look_at = [0, 2, 8]"),
        "camera.look_at: equals camera.position [0.0, 2.0, 8.0]",
    ),
    (
        replace_line("look_at = [0, 1, 0]", "look_at = [0, 1, 0]\nup = [0, -2, -16]"),
        "camera.up: [0.0, -2.0, -16.0] points along the view direction",
    ),
    (
        replace_line('type = "sphere"', 'type = "cube"'),
        "objects.ball.type: expected 'sphere', 'plane' or 'box', got 'cube'",
    ),
    (replace_line("[render]", "render = 5\n[other]"), "top level: unknown key 'other'"),
    (
        replace_line("[objects.ball]", "[objects.'my ball']"),
        "objects: name 'my ball' may hold only letters, digits, '-' and '_'",
    ),
    # unknown keys (typos) and references
    (
        replace_line("radius = 1", "radus = 1"),
        "objects.ball: unknown key 'radus' (did you mean 'radius'?)",
    ),
    (
        replace_line("[objects.floor]", "[objets.floor]"),
        "top level: unknown key 'objets' (did you mean 'objects'?)",
    ),
    (
        replace_line("checker = [0.1, 0.1, 0.1]", "color = [0.1, 0.1, 0.1]"),
        "materials.floor: unknown key 'color' (did you mean 'colour'?)",
    ),
    (
        replace_line('material = "floor"', 'material = "flor"'),
        "objects.floor.material: unknown material 'flor' (did you mean 'floor'?)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SCENES, ids=[e for _, e in BAD_SCENES])
def test_bad_field_names_the_field_and_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert scene_error(path).startswith(f"{path}: {expected}")


def track(path: str, keys: str = "[[1, 1.0], [9, 2.0]]", extra: str = "") -> str:
    return MINIMAL + f'\n[[animate]]\npath = "{path}"\nkeys = {keys}\n{extra}'


BAD_TRACKS = [
    (track("objects.nope.radius"), "animate[0].path: no object named 'nope'"),
    (
        track("objects.ball.radus"),
        "animate[0].path: sphere has no property 'radus' (did you mean 'radius'?)",
    ),
    (
        track("objects.ball.material"),
        "animate[0].path: objects.ball.material is not a number that can be animated",
    ),
    (
        track("materials.floor.shininess"),
        "animate[0].path: materials.floor.shininess is not a number that can be animated",
    ),
    (
        track("objects.ball.radius[1]"),
        "animate[0].path: objects.ball.radius is a single number and has no [1]",
    ),
    (
        track("objects.ball.center[3]"),
        "animate[0].path: objects.ball.center has components [0], [1] and [2], not [3]",
    ),
    (
        track("world.zenith[0]"),
        "animate[0].path: world.zenith is not set in the scene, so it cannot be animated",
    ),
    (track("render.width"), "animate[0].path: 'render.width' is not a property path"),
    (track("objects.ball"), "animate[0].path: 'objects.ball' is not a property path"),
    (track("lights.sun.intensity"), "animate[0].path: no light named 'sun'"),
    (
        track("objects.ball.radius", extra='interpolation = "bouncy"'),
        (
            "animate[0].interpolation: unknown interpolation 'bouncy' "
            "(expected one of: linear, ease-in, ease-out, ease-in-out, step)"
        ),
    ),
    (
        track("objects.ball.radius", "[[1, 1.0, 'wobble'], [9, 2.0]]"),
        "animate[0].keys[0]: unknown interpolation 'wobble'",
    ),
    (
        track("objects.ball.radius", "[[1, 1.0], [9, -2.0]]"),
        "animate[0].keys[1]: expected a positive number, got -2.0",
    ),
    (
        track("objects.ball.radius", "[[5, 1.0], [5, 2.0]]"),
        "animate[0].keys[1]: frame 5 does not come after the previous key's frame 5",
    ),
    (
        track("objects.ball.radius", "[[1.5, 1.0]]"),
        "animate[0].keys[0]: expected a whole frame number first, got 1.5",
    ),
    (
        track("objects.ball.radius", "[]"),
        "animate[0].keys: expected a non-empty list of [frame, value] pairs, got []",
    ),
    (
        track("objects.ball.radius", "[[1]]"),
        "animate[0].keys[0]: expected [frame, value] or [frame, value, interpolation], got [1]",
    ),
    (
        track("objects.ball.center", "[[1, 2.0]]"),
        "animate[0].keys[0]: expected a list of 3 numbers, got 2.0",
    ),
    (track("objects.ball.radius", extra="speed = 2"), "animate[0]: unknown key 'speed'"),
    (
        track("objects.ball.center[1]")
        + '\n[[animate]]\npath = "objects.ball.center"\nkeys = [[1, [0, 0, 0]]]\n',
        "animate[1].path: objects.ball.center is already animated",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_TRACKS, ids=[e for _, e in BAD_TRACKS])
def test_bad_track_names_the_track(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = scene_error(path)
    assert message.startswith(f"{path}: {expected}")


def test_parse_scene_names_its_source():
    with pytest.raises(SceneError, match=r"^upload\.json: render: missing \(required\)$"):
        parse_scene({"camera": {"position": [0, 0, 1], "look_at": [0, 0, 0]}}, "upload.json")
