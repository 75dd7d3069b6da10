"""The renderfarm exception tree: every error the library raises on purpose.

    RenderFarmError                 the root; the CLI turns it into one red line and exit 1
    ├── ConfigError                 a setting (environment or farm.toml) is invalid
    ├── InputError                  a user's input is invalid (a submission, an id, an argument)
    │   ├── FrameSpecError          a frame spec is malformed, backwards or too large
    │   └── SceneError              a scene file is missing, unreadable or malformed
    ├── NotFoundError               no job or task matches an id or prefix (or several do)
    ├── SchemaMissing               the database has no renderfarm tables yet
    ├── FarmNotRunningError         the farm's Redis or manager cannot be reached
    ├── StorageError                object storage refused or failed a request
    ├── RenderError                 a renderer failed or produced no usable output
    └── VerificationError           an attempt's output failed verification

Messages name the thing and the bad value: ``frames: '10-1' runs backwards``.
"""

from __future__ import annotations


class RenderFarmError(Exception):
    """Base of every error renderfarm raises on purpose."""


class ConfigError(RenderFarmError):
    """A setting from the environment or farm.toml is invalid."""


class InputError(RenderFarmError):
    """A user's input (submission, id, command argument) is invalid."""


class FrameSpecError(InputError):
    """A frame spec is malformed, runs backwards, or expands to too many frames."""


class SceneError(InputError):
    """A scene file is missing, unreadable, or has a malformed field."""


class NotFoundError(RenderFarmError):
    """No job or task matches the given id or prefix, or a prefix is ambiguous."""


class SchemaMissing(RenderFarmError):
    """The database has no renderfarm tables yet (the manager creates them)."""


class FarmNotRunningError(RenderFarmError):
    """The farm's Redis or manager cannot be reached."""


class StorageError(RenderFarmError):
    """Object storage refused or failed a request. `transient` when retrying may succeed
    (the server is unreachable, overloaded or failing), not when it said no."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RenderError(RenderFarmError):
    """A renderer failed, timed out, or produced no usable output."""


class VerificationError(RenderFarmError):
    """An attempt's output is missing, truncated, undecodable or the wrong size."""


def shown(value: object, limit: int = 80) -> str:
    """A user's value for an error message: quoted, control characters escaped, shortened."""
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"
