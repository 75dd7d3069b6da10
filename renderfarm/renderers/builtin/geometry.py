"""Ray-object intersection for spheres, planes and boxes, over arrays of rays at once.

Vectors are tuples of three arrays (x, y, z) or of three floats, so that every operation is
an element-wise +, -, *, /, sqrt, min, max or comparison: those are correctly rounded, so a
pixel's value cannot depend on where it sits in an array, and a tile matches its frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from renderfarm.renderers.builtin.parts import Box, Plane, Sphere
from renderfarm.renderers.builtin.scene import Scene

# Rays start this far along from a surface, so they do not hit it again by rounding.
EPSILON = 1e-4
# Stands in for a zero direction component, so a box's slab test divides by no zero.
_TINY = 1e-30

SPHERE, PLANE, BOX = 0, 1, 2

Vec = tuple  # (x, y, z): three arrays, or three floats


def dot(a: Vec, b: Vec):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def normalized(v: Vec) -> Vec:
    length = np.sqrt(dot(v, v))
    return (v[0] / length, v[1] / length, v[2] / length)


@dataclass(frozen=True)
class Shapes:
    """A frame's objects, flattened into per-object arrays indexed by object number."""

    kinds: np.ndarray  # SPHERE, PLANE or BOX
    centers: tuple[np.ndarray, np.ndarray, np.ndarray]  # sphere centre, plane point, box centre
    normals: tuple[np.ndarray, np.ndarray, np.ndarray]  # plane normals (unit)
    halves: tuple[np.ndarray, np.ndarray, np.ndarray]  # box half sizes; sphere radius in [0]
    objects: tuple  # the scene objects themselves, for the scalar loops below

    @classmethod
    def of(cls, scene: Scene) -> Shapes:
        count = len(scene.objects)
        kinds = np.zeros(count, dtype=np.int64)
        centers = np.zeros((3, count))
        normals = np.zeros((3, count))
        halves = np.ones((3, count))
        for i, thing in enumerate(scene.objects):
            if isinstance(thing, Sphere):
                kinds[i] = SPHERE
                centers[:, i] = thing.center
                halves[:, i] = thing.radius
            elif isinstance(thing, Plane):
                kinds[i] = PLANE
                centers[:, i] = thing.point
                normals[:, i] = _unit(thing.normal)
            else:
                kinds[i] = BOX
                centers[:, i] = thing.center
                halves[:, i] = [size / 2 for size in thing.size]
        return cls(
            kinds=kinds,
            centers=(centers[0], centers[1], centers[2]),
            normals=(normals[0], normals[1], normals[2]),
            halves=(halves[0], halves[1], halves[2]),
            objects=scene.objects,
        )


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    length = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / length, v[1] / length, v[2] / length)


def nearest_hit(shapes: Shapes, origin: Vec, direction: Vec) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest object along each ray (inf for none), and its number (-1)."""
    count = direction[0].shape[0]
    best = np.full(count, np.inf)
    which = np.full(count, -1, dtype=np.int64)
    inverse = _inverse(direction) if any(isinstance(o, Box) for o in shapes.objects) else None
    for i, thing in enumerate(shapes.objects):
        t = _distance(thing, origin, direction, inverse)
        closer = t < best
        best = np.where(closer, t, best)
        which[closer] = i
    return best, which


def blocked(shapes: Shapes, origin: Vec, direction: Vec, distance: np.ndarray) -> np.ndarray:
    """Whether anything lies along each ray before `distance` (a shadow test)."""
    hidden = np.zeros(direction[0].shape[0], dtype=bool)
    inverse = _inverse(direction) if any(isinstance(o, Box) for o in shapes.objects) else None
    for thing in shapes.objects:
        hidden |= _distance(thing, origin, direction, inverse) < distance
    return hidden


def surface_normal(shapes: Shapes, which: np.ndarray, point: Vec, direction: Vec) -> Vec:
    """The unit normal at each hit `point` on object `which`, turned to face the ray."""
    kind = shapes.kinds[which]
    offset = tuple(point[a] - shapes.centers[a][which] for a in range(3))
    radius = shapes.halves[0][which]
    normal = [offset[a] / radius for a in range(3)]
    if (kind != SPHERE).any():
        _box_normal(shapes, which, offset, kind == BOX, normal)
        planar = kind == PLANE
        for a in range(3):
            normal[a] = np.where(planar, shapes.normals[a][which], normal[a])
    facing = dot(normal, direction) > 0
    return tuple(np.where(facing, -normal[a], normal[a]) for a in range(3))


def _box_normal(shapes: Shapes, which, offset: Vec, is_box, normal: list) -> None:
    # The face hit is the axis along which the point lies furthest out, relative to the size.
    q = [offset[a] / shapes.halves[a][which] for a in range(3)]
    size = [np.abs(q[a]) for a in range(3)]
    along_x = (size[0] >= size[1]) & (size[0] >= size[2])
    along_y = ~along_x & (size[1] >= size[2])
    along_z = ~along_x & ~along_y
    for a, along in enumerate((along_x, along_y, along_z)):
        face = np.where(along, np.where(q[a] < 0, -1.0, 1.0), 0.0)
        normal[a] = np.where(is_box, face, normal[a])


def _inverse(direction: Vec) -> Vec:
    return tuple(
        1.0 / np.where(np.abs(direction[a]) < _TINY, _TINY, direction[a]) for a in range(3)
    )


def _distance(thing, origin: Vec, direction: Vec, inverse: Vec | None) -> np.ndarray:
    if isinstance(thing, Sphere):
        return _sphere(thing, origin, direction)
    if isinstance(thing, Plane):
        return _plane(thing, origin, direction)
    return _box(thing, origin, inverse)


def _sphere(sphere: Sphere, origin: Vec, direction: Vec) -> np.ndarray:
    to_origin = tuple(origin[a] - sphere.center[a] for a in range(3))
    b = dot(to_origin, direction)
    c = dot(to_origin, to_origin) - sphere.radius * sphere.radius
    disc = b * b - c
    root = np.sqrt(np.maximum(disc, 0.0))
    near = -b - root
    t = np.where(near > EPSILON, near, -b + root)
    return np.where((disc >= 0) & (t > EPSILON), t, np.inf)


def _plane(plane: Plane, origin: Vec, direction: Vec) -> np.ndarray:
    normal = _unit(plane.normal)
    facing = dot(normal, direction)
    height = dot(normal, tuple(plane.point[a] - origin[a] for a in range(3)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = height / facing
    return np.where(t > EPSILON, t, np.inf)


def _box(box: Box, origin: Vec, inverse: Vec) -> np.ndarray:
    near = far = None
    for a in range(3):
        half = box.size[a] / 2
        low = (box.center[a] - half - origin[a]) * inverse[a]
        high = (box.center[a] + half - origin[a]) * inverse[a]
        enter, leave = np.minimum(low, high), np.maximum(low, high)
        near = enter if near is None else np.maximum(near, enter)
        far = leave if far is None else np.minimum(far, leave)
    t = np.where(near > EPSILON, near, far)
    return np.where((near <= far) & (t > EPSILON), t, np.inf)
