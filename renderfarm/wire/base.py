"""The base of every wire message: strict parsing from JSON text, one error naming the field and
the bad value, and the field types messages share (ids, names, hashes, bounded numbers)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from renderfarm.errors import InputError, shown
from renderfarm.frames import FRAME_LIMIT
from renderfarm.renderers.limits import Limits as RenderLimits

if TYPE_CHECKING:
    from typing import Self

    from renderfarm.config import Settings

INT64 = 2**63 - 1

DB_ID_MAX = 2**31 - 1
# Database ids (tasks, attempts): positive, and within the INTEGER PostgreSQL keeps them in (a
# larger one made every query naming it fail there, not merely find nothing).
Id = Annotated[int, Field(ge=1, le=DB_ID_MAX)]
# A job id: lowercase hex (the farm makes 8 digits; 4-16 are accepted).
JobId = Annotated[str, Field(pattern=r"^[0-9a-f]{4,16}$")]
# A worker's (node's) name: safe as a file name, a Redis key part and a queue name.
WorkerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# An enrolled node's name: no '.', so that its keys, RQ ids and ACL patterns stay unambiguous.
NodeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")]
# A URL a node is handed to fetch one object (presigned): http(s), printable, bounded.
Url = Annotated[str, Field(pattern=r"^https?://[\x21-\x7e]{1,4000}$")]
# A job name, owner, pool or site: letters, digits, '.', '_' and '-', never '.' or '..'.
SLUG = r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9_])?$"
Slug = Annotated[str, Field(pattern=SLUG)]
ShortSlug = Annotated[str, Field(pattern=SLUG, max_length=64)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RequestId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Tag = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")]
Frame = Annotated[int, Field(ge=-FRAME_LIMIT, le=FRAME_LIMIT)]


def _safe_key(key: str) -> str:
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"{shown(key, 60)} is not a storage key (an empty, '.' or '..' part)")
    return key


# Storage keys a message names: letters, digits, '.', '_', '-' and '/', no '.' or '..' part.
StorageKey = Annotated[str, Field(max_length=512, pattern=r"^[A-Za-z0-9._/-]+$"), AfterValidator(_safe_key)]
OUTPUT_PATH_MAX = 400  # characters of a file's path relative to its session's params/ folder
OUTPUT_PATH_DEPTH = 16  # folders deep, the file itself included
_PATH_PART = re.compile(r"^[A-Za-z0-9._+@=,-]{1,200}$")


def check_relative_path(path: str) -> str:
    """`path` if it is a plain relative path (see RelativePath); ValueError saying why not."""
    if len(path) > OUTPUT_PATH_MAX:
        raise ValueError(f"{shown(path, 60)} is {len(path)} characters long, over {OUTPUT_PATH_MAX}")
    if path.startswith("/") or "\\" in path:
        raise ValueError(f"{shown(path, 60)} is not a relative path ('/' first, or a backslash)")
    parts = path.split("/")
    if len(parts) > OUTPUT_PATH_DEPTH:
        raise ValueError(f"{shown(path, 60)} is {len(parts)} parts deep, over {OUTPUT_PATH_DEPTH}")
    bad = next((p for p in parts if not _PATH_PART.match(p) or p in (".", "..")), None)
    if bad is not None:
        raise ValueError(f"{shown(path, 60)} is not a relative path ({shown(bad, 40)}: an empty, '.' "
                         "or '..' part, or a character other than letters, digits and ._+@=,-)")
    return path


# A file's path relative to an OpenJD session's params/ folder (`OutputDir/renders/f.0001.png`):
# it becomes part of storage keys and of paths below a download's destination, so it is plain:
# no absolute path, no '.' or '..' part, no backslash, no space, bounded.
RelativePath = Annotated[str, Field(min_length=1, max_length=OUTPUT_PATH_MAX), AfterValidator(check_relative_path)]

# Free text (an error, a reason): bounded.
Text = Annotated[str, Field(max_length=4000)]

TASK_FRAMES_CAP = 10_000
"""The most frames one task may ever hold on the wire (FARM_MAX_TASK_FRAMES may lower it)."""
MAX_WORKERS_CAP = 10_000
"""The most workers a job may ask for at once (`--max-workers`)."""


class WireError(InputError):
    """A message (from Redis, or a user's submission) breaks its contract: names the field and the value."""


@dataclass(frozen=True)
class Limits(RenderLimits):
    """The farm's own caps a message is checked against, from its settings (or the defaults):
    the renderers' caps (pixels, samples, scenes) and the job's (tasks, frames per task, sites)."""

    max_tasks: int = 100_000
    max_task_frames: int = 1_000
    sites: frozenset[str] | None = None  # the configured sites; None: not checked here

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        render = {f.name: getattr(settings, f.name) for f in fields(RenderLimits)}
        return cls(**render, max_tasks=settings.max_tasks, max_task_frames=settings.max_task_frames,
                   sites=frozenset(settings.sites) if settings.sites else None)


DEFAULT_LIMITS = Limits()


def limits_of(info: Any) -> Limits:
    """The limits a parse was given (pydantic's validation context), or the defaults."""
    context = getattr(info, "context", None) or {}
    return context.get("limits") or DEFAULT_LIMITS


class Message(BaseModel):
    """One message crossing Redis: strict types (no '5' for 5, no 1.0 for 1), no unknown fields,
    no NaN, every field bounded."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", allow_inf_nan=False,
                              hide_input_in_errors=False)
    what: ClassVar[str] = "message"  # how errors name the message
    MAX_BYTES: ClassVar[int] = 64 * 1024  # refused before it is decoded

    @classmethod
    def parse(cls, raw: str | bytes, *, limits: Limits | None = None) -> Self:
        """The message in `raw` (JSON text), checked; WireError names the first bad field."""
        return _validate(cls, cls.what, cls.MAX_BYTES, raw, limits)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def _validate(model: Any, what: str, max_bytes: int, raw: str | bytes, limits: Limits | None,
              tagged: bool = False) -> Any:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise WireError(f"{what}: {type(raw).__name__} is not JSON text")
    if len(raw) > max_bytes:
        raise WireError(f"{what}: {len(raw):,} bytes, over the limit of {max_bytes:,}")
    validate = model.validate_json if isinstance(model, TypeAdapter) else model.model_validate_json
    try:
        return validate(raw, context={"limits": limits or DEFAULT_LIMITS})
    except ValidationError as e:
        raise WireError(describe(what, e, tagged=tagged)) from None
    except (ValueError, RecursionError) as e:  # a check of ours that is not a field's
        raise WireError(f"{what}: {e}") from None


def union_parser(what: str, members: tuple[type[Message], ...], max_bytes: int):
    """One parse for a stream that carries several kinds of message, told apart by `type`."""
    from typing import Union

    adapter = TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007

    def parse(raw: str | bytes, *, limits: Limits | None = None) -> Message:
        return _validate(adapter, what, max_bytes, raw, limits, tagged=True)

    return parse


_TAGGED = re.compile(r"^[a-z_]+$")
_PREFIX = re.compile(r"^(?:Input|String|Tuple|List|Dictionary|Value) (?=should)")


def describe(what: str, e: ValidationError, *, tagged: bool = False) -> str:
    """The first error of a validation as one line: `event progress: attempt_id: 1e+30 should be
    a valid integer`."""
    err = e.errors(include_url=False)[0]
    kind, loc, value = err["type"], list(err["loc"]), err.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = value.get("type") if isinstance(value, dict) else None
        return f"{what}: type: {shown(tag)} is not a known type" if tag is not None else f"{what}: type: missing"
    if tagged and loc and isinstance(loc[0], str) and _TAGGED.match(loc[0]):
        what = f"{what} {loc.pop(0)}"  # the member's type: `event progress`
    field = ".".join(str(p) for p in loc) or "(the message)"
    message = str(err["msg"])
    if kind == "missing":
        return f"{what}: {field}: missing"
    if kind == "extra_forbidden":
        return f"{what}: {field}: not a field of this message"
    if kind == "json_invalid":
        return f"{what}: not valid JSON ({(err.get('ctx') or {}).get('error', message)})"
    if kind == "value_error":
        return f"{what}: {field}: {message.removeprefix('Value error, ')}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return f"{what}: {_value(value)} is not a JSON object"
    return f"{what}: {field}: {_value(value)} {_PREFIX.sub('', message)}"


def _value(value: Any) -> str:
    """A bad value for an error line: a string quoted, anything else as JSON would write it."""
    if isinstance(value, str):
        return shown(value, 60)
    import json

    try:
        text = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:56] + "..."
