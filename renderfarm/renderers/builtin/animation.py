"""Keyframe animation: property paths, easing curves and tracks evaluated at a frame."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from renderfarm.renderers.builtin.schema import (
    FieldError,
    Kind,
    expect_table,
    reject_unknown,
    show,
)

Value = float | tuple[float, float, float]

EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease-in": lambda t: t * t,
    "ease-out": lambda t: t * (2.0 - t),
    "ease-in-out": lambda t: t * t * (3.0 - 2.0 * t),
    "step": lambda t: 0.0,
}
"""Each curve maps the fraction of time between two keys to the fraction of the change made.

`ease-in` and `ease-out` are parabolas, so a ball keyed ease-out going up and ease-in
coming down follows the same arc as one thrown under gravity.
"""

SECTIONS = ("camera", "world", "lights", "materials", "objects")
NAMED_SECTIONS = ("lights", "materials", "objects")

_PATH = re.compile(
    r"(?:(?P<single>camera|world)|(?P<section>lights|materials|objects)\.(?P<name>[A-Za-z0-9_-]+))"
    r"\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>\d+)\])?"
)


def ease(name: str, t: float) -> float:
    """The eased fraction for `t` (0..1) under the curve called `name`."""
    return EASINGS[name](t)


@dataclass(frozen=True)
class Target:
    """What a path addresses: a property of the camera, the world, or a named entity."""

    section: str
    name: str | None
    field: str
    index: int | None

    def __str__(self) -> str:
        owner = self.section if self.name is None else f"{self.section}.{self.name}"
        return f"{owner}.{self.field}" + ("" if self.index is None else f"[{self.index}]")

    def overlaps(self, other: Target) -> bool:
        """Whether both address the same number (a whole vector overlaps each component)."""
        if (self.section, self.name, self.field) != (other.section, other.name, other.field):
            return False
        return self.index is None or other.index is None or self.index == other.index


def parse_path(text: Any, where: str) -> Target:
    """Parse a path such as `objects.ball.center[1]` or `camera.fov` (syntax only)."""
    if not isinstance(text, str):
        raise FieldError(
            where, f"expected a property path such as 'objects.ball.center[1]', got {show(text)}"
        )
    match = _PATH.fullmatch(text)
    if match is None:
        raise FieldError(
            where,
            f"{show(text)} is not a property path (expected camera.FIELD, world.FIELD, "
            "lights.NAME.FIELD, materials.NAME.FIELD or objects.NAME.FIELD, "
            "with [0], [1] or [2] for one component of a vector)",
        )
    index = match["index"]
    return Target(
        section=match["single"] or match["section"],
        name=match["name"],
        field=match["field"],
        index=None if index is None else int(index),
    )


@dataclass(frozen=True)
class Key:
    """A value at a frame, and the curve that leads from it to the next key."""

    frame: int
    value: Value
    interpolation: str


@dataclass(frozen=True)
class Track:
    """The keys of one animated property, in frame order."""

    target: Target
    keys: tuple[Key, ...]

    def value_at(self, frame: float) -> Value:
        return interpolate(self.keys, frame)


def interpolate(keys: tuple[Key, ...], frame: float) -> Value:
    """The value of `keys` at `frame`, holding the first and last values outside their range."""
    if frame <= keys[0].frame:
        return keys[0].value
    for before, after in pairwise(keys):
        if frame < after.frame:
            t = (frame - before.frame) / (after.frame - before.frame)
            return _mix(before.value, after.value, ease(before.interpolation, t))
    return keys[-1].value


def _mix(a: Value, b: Value, amount: float) -> Value:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return (
            a[0] + (b[0] - a[0]) * amount,
            a[1] + (b[1] - a[1]) * amount,
            a[2] + (b[2] - a[2]) * amount,
        )
    return a + (b - a) * amount  # type: ignore[operator]


def parse_track(table: Any, where: str, resolve: Callable[[Target, str], Kind]) -> Track:
    """Check one `[[animate]]` table; `resolve` gives the kind of value the path addresses."""
    table = expect_table(table, where)
    reject_unknown(table, {"path", "keys", "interpolation"}, where)
    if "path" not in table:
        raise FieldError(f"{where}.path", "missing (required)")
    target = parse_path(table["path"], f"{where}.path")
    kind = resolve(target, f"{where}.path")
    default = _interpolation(table.get("interpolation", "linear"), f"{where}.interpolation")
    if "keys" not in table:
        raise FieldError(f"{where}.keys", "missing (required)")
    raw_keys = table["keys"]
    if not isinstance(raw_keys, list) or not raw_keys:
        raise FieldError(
            f"{where}.keys",
            f"expected a non-empty list of [frame, value] pairs, got {show(raw_keys)}",
        )
    keys = tuple(
        _parse_key(raw, f"{where}.keys[{i}]", kind, default) for i, raw in enumerate(raw_keys)
    )
    for i, (before, after) in enumerate(pairwise(keys), start=1):
        if after.frame <= before.frame:
            raise FieldError(
                f"{where}.keys[{i}]",
                f"frame {after.frame} does not come after the previous key's frame {before.frame}",
            )
    return Track(target=target, keys=keys)


def _parse_key(raw: Any, where: str, kind: Kind, default: str) -> Key:
    if not isinstance(raw, list) or len(raw) not in (2, 3):
        raise FieldError(
            where, f"expected [frame, value] or [frame, value, interpolation], got {show(raw)}"
        )
    frame = raw[0]
    if not isinstance(frame, int) or isinstance(frame, bool):
        raise FieldError(where, f"expected a whole frame number first, got {show(frame)}")
    value = kind.check(raw[1], where)
    interpolation = _interpolation(raw[2], where) if len(raw) == 3 else default
    return Key(frame=frame, value=value, interpolation=interpolation)


def _interpolation(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in EASINGS:
        known = ", ".join(EASINGS)
        raise FieldError(where, f"unknown interpolation {show(name)} (expected one of: {known})")
    return name
