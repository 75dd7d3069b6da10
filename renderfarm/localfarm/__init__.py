"""The embedded local farm: Valkey, SeaweedFS, SQLite, the manager and workers on one machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from renderfarm.localfarm.farm import AlreadyRunning, FarmProcess, LocalFarm

__all__ = ["AlreadyRunning", "FarmProcess", "LocalFarm"]


def __getattr__(name: str):
    # Imported on first use: every command reads the run file (runfile, health) at start-up, and
    # the code that starts a farm is not needed for that.
    if name in __all__:
        from renderfarm.localfarm import farm

        return getattr(farm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
