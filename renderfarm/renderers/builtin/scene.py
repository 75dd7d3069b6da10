"""The builtin renderer's scene: loading and checking a TOML/JSON file, and posing it at a frame.

Only the standard library is imported here: the CLI loads a scene on submit to check it and
read its size and frames, and that must stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderfarm.errors import SceneError
from renderfarm.renderers.builtin.animation import Target, Track, parse_track
from renderfarm.renderers.builtin.parts import (
    DEFAULT_MATERIAL,
    OBJECT_TYPES,
    Camera,
    Light,
    Material,
    RenderSettings,
    SceneObject,
    World,
)
from renderfarm.renderers.builtin.schema import (
    FieldError,
    Kind,
    Vector,
    build,
    expect_table,
    kind_of,
    reject_unknown,
    settings_of,
    show,
    suggestion,
)

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

SECTIONS = {"render", "camera", "world", "lights", "materials", "objects", "animate"}


@dataclass(frozen=True, kw_only=True)
class Scene:
    """A loaded, checked scene; `at(frame)` gives it with its animation applied."""

    source: str
    render: RenderSettings
    camera: Camera
    world: World
    lights: tuple[Light, ...] = ()
    materials: tuple[Material, ...] = ()
    objects: tuple[SceneObject, ...] = ()
    animation: tuple[Track, ...] = ()

    @property
    def width(self) -> int:
        return self.render.width

    @property
    def height(self) -> int:
        return self.render.height

    @property
    def frames(self) -> str:
        """The frames a submission renders unless it names others, as written in the file."""
        return self.render.frames

    @property
    def samples(self) -> int:
        return self.render.samples

    def material_of(self, thing: SceneObject) -> Material:
        for material in self.materials:
            if material.name == thing.material:
                return material
        return DEFAULT_MATERIAL

    def at(self, frame: int) -> Scene:
        """This scene at `frame`: every animated property set to its value there."""
        scene = self
        for track in self.animation:
            scene = _with_value(scene, track.target, track.value_at(frame))
        try:
            for track in self.animation:
                _recheck(scene, track.target)
            _check_camera(scene.camera)
        except FieldError as e:
            raise SceneError(f"{self.source}: frame {frame}: {e}") from None
        return dataclasses.replace(scene, animation=())


def load_scene(path: str | Path) -> Scene:
    """Read and check the scene file at `path` (.toml or .json); raise SceneError if it is bad."""
    source = str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in (".toml", ".json"):
        raise SceneError(
            f"{source}: unknown scene format {suffix or '(no extension)'!r} "
            "(expected .toml or .json)"
        )
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SceneError(f"{source}: no such scene file") from None
    except OSError as e:
        raise SceneError(f"{source}: cannot read the scene file ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SceneError(f"{source}: not UTF-8 text (byte {e.start})") from None
    document = _parse_toml(text, source) if suffix == ".toml" else _parse_json(text, source)
    return parse_scene(document, source)


def parse_scene(document: Mapping[str, Any], source: str = "<scene>") -> Scene:
    """Check an already-decoded scene document; `source` names it in error messages."""
    try:
        return _build_scene(document, source)
    except FieldError as e:
        raise SceneError(f"{source}: {e}") from None


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        reason = str(e)
        at = _TOML_POSITION.search(reason)
        if at is None:
            raise SceneError(f"{source}: invalid TOML ({reason})") from None
        reason = reason[: at.start()]
        raise SceneError(f"{source}: line {at[1]}: invalid TOML ({reason})") from None


def _parse_json(text: str, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise SceneError(f"{source}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(document, dict):
        raise SceneError(
            f"{source}: expected a JSON object at the top, got {type(document).__name__}"
        )
    return document


def _build_scene(document: Mapping[str, Any], source: str) -> Scene:
    # Built in the order the sections are documented, so the first mistake reported is the
    # first one a reader of the file meets.
    reject_unknown(document, SECTIONS, "top level")
    for section in ("render", "camera"):
        if section not in document:
            raise FieldError(section, "missing (required)")
    render = build(RenderSettings, document["render"], "render")
    camera = build(Camera, document["camera"], "camera")
    _check_camera(camera)
    world = build(World, document.get("world", {}), "world")
    lights = tuple(
        build(Light, table, f"lights.{name}", name=name)
        for name, table in _named_tables(document, "lights")
    )
    materials = tuple(
        build(Material, table, f"materials.{name}", name=name)
        for name, table in _named_tables(document, "materials")
    )
    objects = tuple(
        _build_object(name, table) for name, table in _named_tables(document, "objects")
    )
    known = {material.name for material in materials}
    for thing in objects:
        if thing.material is not None and thing.material not in known:
            raise FieldError(
                f"objects.{thing.name}.material",
                f"unknown material {thing.material!r}{suggestion(thing.material, known)}",
            )
    scene = Scene(
        source=source,
        render=render,
        camera=camera,
        world=world,
        lights=lights,
        materials=materials,
        objects=objects,
    )
    return dataclasses.replace(scene, animation=_build_animation(document, scene))


def _named_tables(document: Mapping[str, Any], section: str) -> list[tuple[str, Any]]:
    tables = expect_table(document.get(section, {}), section)
    for name in tables:
        if not _NAME.fullmatch(name):
            raise FieldError(section, f"name {name!r} may hold only letters, digits, '-' and '_'")
    return list(tables.items())


def _build_object(name: str, table: Any) -> SceneObject:
    where = f"objects.{name}"
    table = expect_table(table, where)
    if "type" not in table:
        raise FieldError(f"{where}.type", "missing (required: 'sphere', 'plane' or 'box')")
    kind = table["type"]
    cls = OBJECT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FieldError(f"{where}.type", f"expected 'sphere', 'plane' or 'box', got {show(kind)}")
    return build(cls, table, where, extra_keys={"type"}, name=name)


def _build_animation(document: Mapping[str, Any], scene: Scene) -> tuple[Track, ...]:
    tables = document.get("animate", [])
    if not isinstance(tables, list):
        raise FieldError("animate", "expected a list of tables ([[animate]] in TOML)")
    tracks: list[Track] = []
    for i, table in enumerate(tables):
        where = f"animate[{i}]"
        track = parse_track(table, where, lambda target, at: _resolve(scene, target, at))
        for earlier in tracks:
            if track.target.overlaps(earlier.target):
                raise FieldError(f"{where}.path", f"{track.target} is already animated")
        tracks.append(track)
    return tuple(tracks)


def _owner(scene: Scene, target: Target) -> Any:
    if target.name is None:
        return getattr(scene, target.section)
    for entity in getattr(scene, target.section):
        if entity.name == target.name:
            return entity
    return None


def _resolve(scene: Scene, target: Target, where: str) -> Kind:
    """The kind of value `target` addresses in `scene`, if it is a number that may be animated."""
    entity = _owner(scene, target)
    if entity is None:
        names = {entity.name for entity in getattr(scene, target.section)}
        noun = target.section.rstrip("s")
        raise FieldError(where, f"no {noun} named {target.name!r}{suggestion(target.name, names)}")
    kind = kind_of(type(entity), target.field)
    if kind is None:
        fields = set(settings_of(type(entity)))
        raise FieldError(
            where,
            f"{entity.noun} has no property {target.field!r}{suggestion(target.field, fields)}",
        )
    plain = dataclasses.replace(target, index=None)
    if not kind.animatable:
        raise FieldError(where, f"{plain} is not a number that can be animated")
    if getattr(entity, target.field) is None:
        raise FieldError(where, f"{plain} is not set in the scene, so it cannot be animated")
    if target.index is None:
        return kind
    if not isinstance(kind, Vector):
        raise FieldError(where, f"{plain} is a single number and has no [{target.index}]")
    if target.index > 2:
        raise FieldError(where, f"{plain} has components [0], [1] and [2], not [{target.index}]")
    return kind.component


def _with_value(scene: Scene, target: Target, value: Any) -> Scene:
    def changed(entity: Any) -> Any:
        new = value
        if target.index is not None:
            parts = list(getattr(entity, target.field))
            parts[target.index] = value
            new = tuple(parts)
        return dataclasses.replace(entity, **{target.field: new})

    if target.name is None:
        return dataclasses.replace(
            scene, **{target.section: changed(getattr(scene, target.section))}
        )
    entities = tuple(
        changed(entity) if entity.name == target.name else entity
        for entity in getattr(scene, target.section)
    )
    return dataclasses.replace(scene, **{target.section: entities})


def _recheck(scene: Scene, target: Target) -> None:
    # Keys are checked one by one, but components animated separately can meet
    # in a value no key holds, such as a plane normal of [0, 0, 0].
    entity = _owner(scene, target)
    where = str(dataclasses.replace(target, index=None))
    kind_of(type(entity), target.field).check(getattr(entity, target.field), where)


def _check_camera(camera: Camera) -> None:
    """Refuse a camera that has no direction to look in or whose `up` is along its view."""
    forward = tuple(b - a for a, b in zip(camera.position, camera.look_at, strict=True))
    if _length_squared(forward) == 0:
        raise FieldError("camera.look_at", f"equals camera.position {list(camera.position)}")
    (fx, fy, fz), (ux, uy, uz) = forward, camera.up
    side = (fy * uz - fz * uy, fz * ux - fx * uz, fx * uy - fy * ux)
    # Relative to both lengths, so that a tiny scene is not refused for being tiny.
    if _length_squared(side) <= 1e-12 * _length_squared(forward) * _length_squared(camera.up):
        raise FieldError("camera.up", f"{list(camera.up)} points along the view direction")


def _length_squared(v: tuple[float, ...]) -> float:
    return v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
