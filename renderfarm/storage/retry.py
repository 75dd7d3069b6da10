"""Retrying storage calls through transient failures (a dropped link, a restarting server)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from renderfarm.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


def retrying(what: str, call: Callable[[], T], *, within: float, before_retry: Callable[[], None] = lambda: None) -> T:
    """Run `call`, retrying transient StorageErrors with backoff for up to `within` seconds.
    `before_retry` may raise to give up early (a render that must stop)."""
    deadline = time.monotonic() + within
    delay = 0.5
    while True:
        try:
            return call()
        except StorageError as e:
            if not e.transient or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, e, delay)
        before_retry()
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
