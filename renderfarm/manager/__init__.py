"""The manager process: the only database writer and the farm's dispatcher."""

from renderfarm.manager.loop import Manager, run_manager

__all__ = ["Manager", "run_manager"]
