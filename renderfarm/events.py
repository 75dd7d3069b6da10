"""The sender of worker events (renderfarm.wire.events), which never drops one.

Events are queued in memory and posted to the event stream by a background thread, so a render
never waits on Redis and events survive a Redis outage until it comes back.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from renderfarm import streams

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.wire import Event

log = logging.getLogger(__name__)


class EventSender:
    """Posts events in order from a background thread, retrying while Redis is unreachable."""

    def __init__(self, r: Redis, stream: str, seal: Callable[[Event], str]) -> None:
        """Events go to `stream` (the node's own), each as `seal` makes it (sealed with the node's key)."""
        self._r = r
        self._stream = stream
        self._seal = seal
        self._pending: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
        self._thread.start()

    def send(self, event: Event) -> None:
        from renderfarm.wire import Progress

        with self._cond:
            # Progress is advisory: keep only the newest one for an attempt while Redis is slow.
            last = self._pending[-1] if self._pending else None
            if isinstance(event, Progress) and isinstance(last, Progress) and last.attempt_id == event.attempt_id:
                self._pending[-1] = event
            else:
                self._pending.append(event)
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event is posted; False if some are still unsent at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._pending

    def close(self, timeout: float = 10.0) -> bool:
        sent = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(1.0)
        return sent

    def _run(self) -> None:
        import redis

        backoff = 0.1
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                event = self._pending[0]
            try:
                streams.post(self._r, self._stream, self._seal(event))
            except redis.RedisError as e:
                log.warning("event stream unreachable (%s); %d event(s) kept, retrying", e, len(self._pending))
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            with self._cond:
                if self._pending and self._pending[0] is event:
                    self._pending.popleft()
                self._cond.notify_all()
