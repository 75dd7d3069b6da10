"""The parts of a builtin scene: render settings, camera, world, lights, materials, objects.

Each part is a frozen dataclass; a field annotated with a kind (``Annotated[float, POSITIVE]``)
is a setting a scene file may write, and is required when it has no default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from renderfarm.renderers.builtin.schema import (
    COLOUR,
    DIRECTION,
    FRACTION,
    NAME,
    NON_NEGATIVE,
    POSITIVE,
    SIZE,
    VECTOR,
    FrameSpec,
    Integer,
    Number,
)

MAX_SIZE = 16384
MAX_SAMPLES = 256
MAX_BOUNCES = 8

Vec3 = tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class RenderSettings:
    """How big and how finely sampled the images are, and the frames a shot renders by default."""

    noun: ClassVar[str] = "render settings"
    width: Annotated[int, Integer(1, MAX_SIZE)]
    height: Annotated[int, Integer(1, MAX_SIZE)]
    frames: Annotated[str, FrameSpec()] = "1"
    samples: Annotated[int, Integer(1, MAX_SAMPLES)] = 1
    fps: Annotated[float, POSITIVE] = 24.0
    bounces: Annotated[int, Integer(0, MAX_BOUNCES)] = 2


@dataclass(frozen=True, kw_only=True)
class Camera:
    """A pinhole camera looking from `position` at `look_at`; `fov` is vertical, in degrees."""

    noun: ClassVar[str] = "the camera"
    position: Annotated[Vec3, VECTOR]
    look_at: Annotated[Vec3, VECTOR]
    up: Annotated[Vec3, DIRECTION] = (0.0, 1.0, 0.0)
    fov: Annotated[float, Number(low=0, high=180, low_open=True, high_open=True)] = 45.0


@dataclass(frozen=True, kw_only=True)
class World:
    """What surrounds the objects: the sky behind them, ambient light and haze on them."""

    noun: ClassVar[str] = "the world"
    background: Annotated[Vec3, COLOUR] = (0.05, 0.05, 0.08)
    zenith: Annotated[Vec3 | None, COLOUR] = None
    ambient: Annotated[Vec3, COLOUR] = (0.1, 0.1, 0.1)
    fog: Annotated[float | None, POSITIVE] = None


@dataclass(frozen=True, kw_only=True)
class Light:
    """A point light; it does not fall off with distance."""

    noun: ClassVar[str] = "light"
    name: str
    position: Annotated[Vec3, VECTOR]
    colour: Annotated[Vec3, COLOUR] = (1.0, 1.0, 1.0)
    intensity: Annotated[float, NON_NEGATIVE] = 1.0


@dataclass(frozen=True, kw_only=True)
class Material:
    """How a surface shades: Lambert diffuse, Blinn-Phong specular, mirror reflection."""

    noun: ClassVar[str] = "material"
    name: str
    colour: Annotated[Vec3, COLOUR] = (0.8, 0.8, 0.8)
    diffuse: Annotated[float, NON_NEGATIVE] = 0.9
    specular: Annotated[float, NON_NEGATIVE] = 0.3
    shininess: Annotated[int, Integer(1, 4096)] = 32
    reflectivity: Annotated[float, FRACTION] = 0.0
    checker: Annotated[Vec3 | None, COLOUR] = None
    checker_size: Annotated[float, POSITIVE] = 1.0


DEFAULT_MATERIAL = Material(name="default")


@dataclass(frozen=True, kw_only=True)
class Sphere:
    """A sphere."""

    noun: ClassVar[str] = "sphere"
    name: str
    center: Annotated[Vec3, VECTOR]
    radius: Annotated[float, POSITIVE]
    material: Annotated[str | None, NAME] = None


@dataclass(frozen=True, kw_only=True)
class Plane:
    """An infinite plane through `point`, facing `normal`."""

    noun: ClassVar[str] = "plane"
    name: str
    point: Annotated[Vec3, VECTOR] = (0.0, 0.0, 0.0)
    normal: Annotated[Vec3, DIRECTION] = (0.0, 1.0, 0.0)
    material: Annotated[str | None, NAME] = None


@dataclass(frozen=True, kw_only=True)
class Box:
    """An axis-aligned box: `size` is its full extent along x, y and z."""

    noun: ClassVar[str] = "box"
    name: str
    center: Annotated[Vec3, VECTOR]
    size: Annotated[Vec3, SIZE]
    material: Annotated[str | None, NAME] = None


SceneObject = Sphere | Plane | Box
OBJECT_TYPES: dict[str, type] = {"sphere": Sphere, "plane": Plane, "box": Box}
