"""What a ray sees: the sky, or a surface lit by point lights, shadowed, reflecting more rays."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from renderfarm.renderers.builtin.geometry import (
    EPSILON,
    Shapes,
    blocked,
    dot,
    nearest_hit,
    normalized,
    surface_normal,
)
from renderfarm.renderers.builtin.scene import Scene

Colour = tuple  # (r, g, b): three arrays


@dataclass(frozen=True)
class Surfaces:
    """Each object's material, as arrays indexed by object number."""

    colour: tuple[np.ndarray, np.ndarray, np.ndarray]
    checker: tuple[np.ndarray, np.ndarray, np.ndarray]  # the second colour, where there is one
    has_checker: np.ndarray
    checker_size: np.ndarray
    diffuse: np.ndarray
    specular: np.ndarray
    shininess: np.ndarray
    reflectivity: np.ndarray

    @classmethod
    def of(cls, scene: Scene) -> Surfaces:
        materials = [scene.material_of(thing) for thing in scene.objects]
        colour = np.array([m.colour for m in materials]).reshape(-1, 3).T
        checker = np.array([m.checker or m.colour for m in materials]).reshape(-1, 3).T
        return cls(
            colour=(colour[0], colour[1], colour[2]),
            checker=(checker[0], checker[1], checker[2]),
            has_checker=np.array([m.checker is not None for m in materials], dtype=bool),
            checker_size=np.array([m.checker_size for m in materials], dtype=float),
            diffuse=np.array([m.diffuse for m in materials], dtype=float),
            specular=np.array([m.specular for m in materials], dtype=float),
            shininess=np.array([m.shininess for m in materials], dtype=np.int64),
            reflectivity=np.array([m.reflectivity for m in materials], dtype=float),
        )


@dataclass(frozen=True)
class PackedScene:
    """One frame of a scene, laid out for tracing many rays at once."""

    shapes: Shapes
    surfaces: Surfaces
    lights: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]
    background: tuple[float, float, float]
    zenith: tuple[float, float, float] | None
    ambient: tuple[float, float, float]
    fog: float | None
    bounces: int
    pixel_angle: float  # radians one pixel spans, to fade checkers finer than a pixel

    @classmethod
    def of(cls, scene: Scene) -> PackedScene:
        """Pack `scene`, which must already be at a frame (`Scene.at`)."""
        return cls(
            shapes=Shapes.of(scene),
            surfaces=Surfaces.of(scene),
            lights=tuple(
                (light.position, tuple(c * light.intensity for c in light.colour))
                for light in scene.lights
            ),
            background=scene.world.background,
            zenith=scene.world.zenith,
            ambient=scene.world.ambient,
            fog=scene.world.fog,
            bounces=scene.render.bounces,
            pixel_angle=2 * math.tan(math.radians(scene.camera.fov) / 2) / scene.height,
        )


def trace(scene: PackedScene, origin, direction, travelled, depth: int = 0) -> Colour:
    """The colour seen along each ray; `travelled` is how far each has come from the camera."""
    t, which = nearest_hit(scene.shapes, origin, direction)
    colour = sky(scene, direction)
    hits = np.flatnonzero(which >= 0)
    if hits.size == 0:
        return colour
    seen = _shade(
        scene,
        _pick(origin, hits),
        _pick(direction, hits),
        t[hits],
        which[hits],
        travelled[hits] + t[hits],
        depth,
    )
    if scene.fog is not None:
        # Haze grows with distance squared: half at `fog`, no exp() needed.
        near = t[hits] * t[hits]
        haze = near / (near + scene.fog * scene.fog)
        seen = tuple(seen[a] + (scene.background[a] - seen[a]) * haze for a in range(3))
    for a in range(3):
        colour[a][hits] = seen[a]
    return colour


def sky(scene: PackedScene, direction) -> Colour:
    """The background: its colour at the horizon, blending to `zenith` straight up."""
    count = direction[0].shape[0]
    low = scene.background
    if scene.zenith is None:
        return tuple(np.full(count, low[a]) for a in range(3))
    height = np.clip(direction[1], 0.0, 1.0)
    return tuple(low[a] + (scene.zenith[a] - low[a]) * height for a in range(3))


def _pick(v, indices):
    return tuple(c[indices] if isinstance(c, np.ndarray) else c for c in v)


def _shade(scene: PackedScene, origin, direction, t, which, travelled, depth: int) -> Colour:
    point = tuple(origin[a] + t * direction[a] for a in range(3))
    normal = surface_normal(scene.shapes, which, point, direction)
    albedo = _albedo(scene, which, point, normal, direction, travelled)
    lift = tuple(point[a] + normal[a] * EPSILON for a in range(3))
    colour = [scene.ambient[a] * albedo[a] for a in range(3)]
    surfaces = scene.surfaces
    diffuse = surfaces.diffuse[which]
    specular = surfaces.specular[which]
    shininess = surfaces.shininess[which]
    for position, light in scene.lights:
        to_light = tuple(position[a] - point[a] for a in range(3))
        distance = np.sqrt(dot(to_light, to_light))
        towards = tuple(to_light[a] / distance for a in range(3))
        facing = dot(normal, towards)
        lit = facing > 0
        candidates = np.flatnonzero(lit)
        if candidates.size:
            lit[candidates] = ~blocked(
                scene.shapes,
                _pick(lift, candidates),
                _pick(towards, candidates),
                distance[candidates],
            )
        halfway = normalized(tuple(towards[a] - direction[a] for a in range(3)))
        shine = specular * _power(np.maximum(dot(normal, halfway), 0.0), shininess)
        strength = np.where(lit, facing, 0.0) * diffuse
        shine = np.where(lit, shine, 0.0)
        for a in range(3):
            colour[a] = colour[a] + light[a] * (strength * albedo[a] + shine)
    if depth < scene.bounces:
        _reflect(scene, colour, which, lift, direction, normal, travelled, depth)
    return tuple(colour)


def _reflect(scene: PackedScene, colour: list, which, lift, direction, normal, travelled, depth):
    reflectivity = scene.surfaces.reflectivity[which]
    mirrors = np.flatnonzero(reflectivity > 0)
    if mirrors.size == 0:
        return
    d = _pick(direction, mirrors)
    n = _pick(normal, mirrors)
    along = 2.0 * dot(d, n)
    bounced = tuple(d[a] - along * n[a] for a in range(3))
    seen = trace(scene, _pick(lift, mirrors), bounced, travelled[mirrors], depth + 1)
    amount = reflectivity[mirrors]
    for a in range(3):
        mixed = colour[a][mirrors] * (1.0 - amount) + seen[a] * amount
        colour[a][mirrors] = mixed


def _albedo(scene: PackedScene, which, point, normal, direction, travelled) -> Colour:
    surfaces = scene.surfaces
    base = tuple(surfaces.colour[a][which] for a in range(3))
    checkered = surfaces.has_checker[which]
    if not checkered.any():
        return base
    size = surfaces.checker_size[which]
    # Just inside the surface, so a floor lying on a cell boundary does not flicker between cells.
    cells = sum(np.floor((point[a] - normal[a] * EPSILON) / size) for a in range(3))
    odd = checkered & ((cells.astype(np.int64) & 1) == 1)
    second = tuple(surfaces.checker[a][which] for a in range(3))
    pattern = tuple(np.where(odd, second[a], base[a]) for a in range(3))
    # Cells smaller than a pixel would alias into moire, so blend them towards their average
    # as the pixel's footprint on the surface (longer at grazing angles) approaches a cell.
    slant = np.maximum(np.abs(dot(normal, direction)), 0.05)
    footprint = travelled * scene.pixel_angle / slant
    fade = np.clip(footprint / size * 2.0 - 0.5, 0.0, 1.0)
    return tuple(
        np.where(
            checkered,
            pattern[a] + ((base[a] + second[a]) * 0.5 - pattern[a]) * fade,
            base[a],
        )
        for a in range(3)
    )


def _power(base: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """base ** exponent by repeated squaring, exact-rounded step by step (np.power is not)."""
    result = np.ones_like(base)
    bits = int(exponent.max()).bit_length() if exponent.size else 0
    for bit in range(bits):
        result = np.where(((exponent >> bit) & 1) == 1, result * base, result)
        base = base * base
    return result
