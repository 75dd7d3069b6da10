"""The manager's notifier: sends the outbox's due notifications from a few sender threads and
records how each try went, without ever waiting on a webhook.

Each tick of the manager calls `pump()`: it records the tries that finished since (one short
transaction, in the manager's own thread: the manager stays the database's only writer), and
every LOOK_EVERY seconds hands the due notifications to the senders. A sender POSTs with a
timeout and puts the outcome on a queue; nothing in the manager's loop waits for it. A
notification is marked sent as soon as a tick sees its 2xx, so only a manager that dies in that
instant (between the 2xx and the next tick) sends it again after restart; receivers that must
never see one twice keep the X-Farm-Event-Id they have seen.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from renderfarm import outbox
from renderfarm.db import session_scope
from renderfarm.models import DeliveryState
from renderfarm.urls import mask_url
from renderfarm.webhooks import Outcome, headers, post

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from renderfarm.clock import Clock
    from renderfarm.config import Settings

log = logging.getLogger("renderfarm.manager")

LOOK_EVERY = 1.0  # seconds between looks for due notifications
SENDERS = 4  # POSTs in flight at once
MAX_IN_FLIGHT = 16  # notifications handed to the senders and not yet recorded


class Send(NamedTuple):
    notification_id: int
    url: str
    body: str
    event_id: str
    kind: str


class Notifier:
    """Delivers the outbox for one manager (see the module's docstring)."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self._senders: ThreadPoolExecutor | None = None  # started with the first notification
        self._results: queue.SimpleQueue[tuple[Send, Outcome]] = queue.SimpleQueue()
        self._finished: list[tuple[Send, Outcome]] = []  # taken off the queue, not yet recorded
        self._in_flight: set[int] = set()
        self._next_look = 0.0

    def pump(self) -> int:
        """Record finished tries; hand due notifications to the senders when it is time to look.
        Returns how many were handed out."""
        while True:
            try:
                self._finished.append(self._results.get_nowait())
            except queue.Empty:
                break
        look = self.clock.monotonic() >= self._next_look and len(self._in_flight) < MAX_IN_FLIGHT
        if not self._finished and not look:
            return 0
        now = self.clock.now()
        sends: list[Send] = []
        with session_scope(self.engine) as session:
            for send, outcome in self._finished:
                state = outbox.settle(session, send.notification_id, send.url, outcome, now,
                                      self.settings.webhook_tries)
                self._log(send, outcome, state)
            if look:
                self._next_look = self.clock.monotonic() + LOOK_EVERY
                sends = self._due(session, now)
        for send, _ in self._finished:
            self._in_flight.discard(send.notification_id)
        self._finished = []
        for send in sends:
            self._in_flight.add(send.notification_id)
            self._start().submit(self._send, send)
        return len(sends)

    def _due(self, session, now: float) -> list[Send]:
        farm_url = self.settings.webhook_url
        sends = []
        for row in outbox.due(session, now, skip=self._in_flight, limit=MAX_IN_FLIGHT - len(self._in_flight)):
            url = farm_url if row.target == outbox.FARM else row.url
            if url is None:
                outbox.skip(row, "no FARM_WEBHOOK_URL configured when it was due")
            elif row.target == outbox.JOB and url == farm_url:
                outbox.skip(row, "the job's --notify URL is the farm's own: sent once, as the farm's")
            else:
                sends.append(Send(row.id, url, row.body, row.event_id, row.kind))
        return sends

    def _start(self) -> ThreadPoolExecutor:
        if self._senders is None:
            self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        return self._senders

    def _send(self, send: Send) -> None:
        """In a sender thread: one POST, its outcome queued for the manager to record."""
        body = send.body.encode()
        try:
            head = headers(body, send.event_id, send.kind, self.settings.webhook_secret, self.clock.now())
            outcome = post(send.url, body, head, self.settings.webhook_timeout)
        except Exception as e:  # a bug of ours must not lose the row: it is tried again
            log.exception("webhook %s to %s: unexpected error", send.event_id, mask_url(send.url))
            outcome = Outcome(None, f"{type(e).__name__}: {e}")
        self._results.put((send, outcome))

    def _log(self, send: Send, outcome: Outcome, state: str | None) -> None:
        where = mask_url(send.url)
        if state == DeliveryState.SENT.value:
            log.info("webhook %s delivered to %s (HTTP %s)", send.event_id, where, outcome.status)
        elif state == DeliveryState.FAILED.value:
            log.warning("webhook %s to %s given up after %d tries: %s", send.event_id, where,
                        self.settings.webhook_tries, outcome.error)
        elif state == DeliveryState.PENDING.value:
            log.info("webhook %s to %s failed (%s); will try again", send.event_id, where, outcome.error)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def close(self, wait: float = 0.0) -> None:
        """Stop the senders (a POST in flight is not waited for beyond `wait` seconds: it stays
        pending and is sent again by the next manager); record what finished."""
        if self._senders is not None:
            import time

            deadline = time.monotonic() + wait
            while self._results.qsize() < len(self._in_flight) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._senders.shutdown(wait=False, cancel_futures=True)
            self._senders = None
        self._next_look = float("inf")  # record only, hand out nothing more
        try:
            self.pump()
        except Exception:  # the database may be gone: those rows stay pending
            log.warning("could not record the last webhook tries", exc_info=True)
