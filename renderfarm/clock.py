"""The manager's clock: the time it stamps on what it records, and a monotonic count for its own
intervals. Tests step a SteppedClock instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """The real time."""

    def now(self) -> float:
        """Seconds since the epoch: what the manager records (workers' clocks are never used)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: what the manager's intervals are measured on."""
        return time.monotonic()


class SteppedClock(Clock):
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._monotonic = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._monotonic += seconds
