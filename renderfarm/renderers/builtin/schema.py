"""The kinds of value a scene field may hold, and how a table of fields is checked."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VECTOR_SIZE = 3
_SHOWN = 60  # characters of a bad value quoted in an error message

_FRAME_RANGE = re.compile(r"(-?\d+)(?:-(-?\d+)(?:x(\d+))?)?")


class FieldError(Exception):
    """A value does not fit its field; the loader prefixes the scene file's name."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def _is_number(value: Any) -> bool:
    # bool is an int to Python, but `radius = true` is a typo, not a radius.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Number:
    """A finite number, optionally bounded; lower and upper bounds may be exclusive."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    animatable = True

    def describe(self) -> str:
        if self.low == 0 and self.low_open and self.high is None:
            return "a positive number"
        if self.low is not None and self.high is not None:
            if self.low_open or self.high_open:
                return f"a number greater than {self.low:g} and less than {self.high:g}"
            return f"a number between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        return "a number"

    def accepts(self, value: Any) -> bool:
        if not _is_number(value):
            return False
        try:
            if not math.isfinite(value):
                return False
        except OverflowError:  # an integer too large for a float, as JSON allows
            return False
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        return not (too_low or too_high)

    def check(self, value: Any, where: str) -> float:
        if not self.accepts(value):
            raise FieldError(where, f"expected {self.describe()}, got {show(value)}")
        return float(value)


@dataclass(frozen=True)
class Vector:
    """Three numbers (a point, direction, size or RGB colour), each of one Number kind."""

    component: Number = Number()
    nonzero: bool = False
    animatable = True

    def describe(self) -> str:
        each = self.component.describe()
        if each == "a number":
            plain = f"a list of {VECTOR_SIZE} numbers"
        else:
            plain = f"a list of {VECTOR_SIZE} numbers, each {each}"
        return f"a non-zero {plain[2:]}" if self.nonzero else plain

    def check(self, value: Any, where: str) -> tuple[float, float, float]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != VECTOR_SIZE
            or not all(self.component.accepts(v) for v in value)
            or (self.nonzero and all(v == 0 for v in value))
        ):
            raise FieldError(where, f"expected {self.describe()}, got {show(value)}")
        return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class Integer:
    """A whole number between two inclusive bounds."""

    low: int
    high: int
    animatable = False

    def describe(self) -> str:
        return f"an integer between {self.low} and {self.high}"

    def check(self, value: Any, where: str) -> int:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not self.low <= value <= self.high
        ):
            raise FieldError(where, f"expected {self.describe()}, got {show(value)}")
        return value


@dataclass(frozen=True)
class Text:
    """A non-empty string: a name that refers to another table, checked by the loader."""

    animatable = False

    def describe(self) -> str:
        return "a name"

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise FieldError(where, f"expected a name, got {show(value)}")
        return value


@dataclass(frozen=True)
class FrameSpec:
    """A frame-range string such as ``1-48``, ``1-100x2`` or ``-5--1,10``, kept as written."""

    animatable = False

    def describe(self) -> str:
        return "a frame spec such as '1-48'"

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise FieldError(where, f"expected {self.describe()}, got {show(value)}")
        for item in value.split(","):
            match = _FRAME_RANGE.fullmatch(item.strip())
            if match is None:
                raise FieldError(where, f"expected {self.describe()}, got {show(value)}")
            start, end, step = match.groups()
            if end is not None and int(end) < int(start):
                raise FieldError(where, f"{show(value)} runs backwards")
            if step is not None and int(step) == 0:
                raise FieldError(where, f"{show(value)} has a step of 0")
        return value


Kind = Number | Vector | Integer | Text | FrameSpec
_KINDS = (Number, Vector, Integer, Text, FrameSpec)

NAME = Text()
POSITIVE = Number(low=0, low_open=True)
NON_NEGATIVE = Number(low=0)
FRACTION = Number(low=0, high=1)
VECTOR = Vector()
DIRECTION = Vector(nonzero=True)
COLOUR = Vector(NON_NEGATIVE)
SIZE = Vector(POSITIVE)


@dataclass(frozen=True)
class Setting:
    """One field a scene file may set: its kind, and whether the file must set it."""

    kind: Kind
    required: bool


@functools.cache
def settings_of(cls: type) -> dict[str, Setting]:
    """The fields of dataclass `cls` that a scene file may set: those annotated with a kind.

    A setting is declared as ``radius: Annotated[float, POSITIVE]``; no default means required.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    found = {}
    for field in dataclasses.fields(cls):
        kinds = [m for m in getattr(hints[field.name], "__metadata__", ()) if isinstance(m, _KINDS)]
        if kinds:
            required = field.default is dataclasses.MISSING
            found[field.name] = Setting(kind=kinds[0], required=required)
    return found


def kind_of(cls: type, name: str) -> Kind | None:
    """The kind of setting `name` of `cls`, or None when `cls` has no such setting."""
    found = settings_of(cls).get(name)
    return None if found is None else found.kind


def expect_table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(where, f"expected a table, got {show(value)}")
    return value


def reject_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    """Refuse keys a reader does not know, so a typo like `radus` is not silently ignored."""
    for key in table:
        if key not in known:
            raise FieldError(where, f"unknown key {key!r}{suggestion(key, known)}")


def suggestion(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build(
    cls: type, table: Any, where: str, *, extra_keys: frozenset[str] = frozenset(), **given: Any
) -> Any:
    """Check `table` against the settings of dataclass `cls` and construct one."""
    table = expect_table(table, where)
    fields = settings_of(cls)
    reject_unknown(table, set(fields) | set(extra_keys), where)
    values = {}
    for name, field in fields.items():
        if name in table:
            values[name] = field.kind.check(table[name], f"{where}.{name}")
        elif field.required:
            raise FieldError(f"{where}.{name}", "missing (required)")
    return cls(**given, **values)


def show(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short if long."""
    if isinstance(value, Mapping):
        return "a table"
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
