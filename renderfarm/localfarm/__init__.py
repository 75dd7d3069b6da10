"""The embedded local farm: Valkey, SeaweedFS, SQLite, the manager and workers on one machine."""

from renderfarm.localfarm.farm import AlreadyRunning, FarmProcess, LocalFarm

__all__ = ["AlreadyRunning", "FarmProcess", "LocalFarm"]
