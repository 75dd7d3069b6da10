"""Sleeping idle nodes (FARM_SLEEP_AFTER): the manager tells a node idle that long to sleep (a
sealed order on its own queue: the node runs its sleep command), keeps it out of dispatch, and
wakes it when runnable work that it could take is left over after every awake worker's queue is
filled: a Wake-on-LAN magic packet to the MAC it advertised, or the farm's wake command. A node not
back within FARM_WAKE_TIMEOUT is reported (a dead letter) and stays asleep; its work goes to the
awake workers meanwhile, as it always could.

A node's sleep, by the manager's clock:
    ordered -- its heartbeat says `asleep` (or stops) --> asleep -- work for it --> waking
    waking -- a new heartbeat --> awake (dispatched to again)
    waking -- FARM_WAKE_TIMEOUT passes --> asleep (reported; woken again when work asks)
    asleep -- a new heartbeat that is not `asleep` (it woke by itself, or its command failed) --> awake
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from renderfarm import lifecycle, queues, streams
from renderfarm.db import session_scope
from renderfarm.idlepower import IdleMeter
from renderfarm.models import ATTEMPT_ACTIVE, Attempt, Worker, WorkerState
from renderfarm.states import WORKER_SLEEPING
from renderfarm.wake import MAC, run_wake_command, send_magic_packet

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.manager.loop import Manager
    from renderfarm.scheduling import WorkerView

log = logging.getLogger("renderfarm.manager")

ORDERED, ASLEEP, WAKING = "ordered", "asleep", "waking"
ORDER_GRACE = float(queues.SLEEP_ORDER_TTL)  # seconds a node may beat `idle` after its order before it counts as refused


@dataclass
class Sleep:
    """What the manager knows of one node it told to sleep."""

    name: str
    view: WorkerView  # what it can render, as it last said (for choosing whom to wake)
    mac: str | None
    state: str = ORDERED
    since: float = 0.0  # when it entered `state` (the manager's clock)
    seq: int | None = None  # the heartbeat seen when it entered `state`: a new one is news
    wakes: int = 0  # wake tries since it slept


@dataclass
class Sleeper:
    """The manager's sleeping nodes and every awake node's idle time."""

    sleeping: dict[str, Sleep] = field(default_factory=dict)
    idle_since: dict[str, float] = field(default_factory=dict)
    wakers: list[threading.Thread] = field(default_factory=list)
    packets: int = 0  # magic packets sent (for tests and logs)
    meter: IdleMeter = field(default_factory=IdleMeter)

    def forget(self, name: str) -> None:
        """The node left the farm (it said goodbye, or was reaped or revoked): nothing to wake."""
        self.sleeping.pop(name, None)
        self.idle_since.pop(name, None)

    def holds(self, name: str) -> bool:
        """Whether dispatch must pass the node over: it is asleep, or told to be."""
        return name in self.sleeping

    def load(self, session: Session, manager: Manager) -> None:
        """At the manager's start: the nodes the database says are asleep stay asleep (one being
        woken too: it is woken again if work still wants it)."""
        from renderfarm.capabilities import worker_view

        for row in session.scalars(select(Worker).where(Worker.state.in_(WORKER_SLEEPING))):
            node = manager.book.get(row.name)
            if node is None:
                continue
            lifecycle.worker_asleep(session, row.name)
            view = worker_view(row.name, node.pool, node.site, _with_tags(row.capabilities, node.tags),
                               manager._price(node.site, manager.clock.now()))
            self.sleeping[row.name] = Sleep(row.name, view, _mac_of(row.capabilities), ASLEEP, manager.clock.now())

    def watch(self, manager: Manager) -> None:
        """Before a dispatch round: which of the nodes told to sleep are asleep, awake again, or
        overdue from a wake."""
        if not self.sleeping:
            return
        with session_scope(manager.engine) as session:
            self._watch(session, manager, manager.clock.now())

    def step(self, manager: Manager) -> None:
        """After a dispatch round: the idle and asleep nodes' power counted, who must sleep, and
        whom to wake for the work left over."""
        settings = manager.settings
        counting = any(site.idle_watts is not None for site in settings.sites.values())
        if not self.sleeping and not settings.sleep_after and not counting:
            return
        now = manager.clock.now()
        self.wakers = [t for t in self.wakers if t.is_alive()]
        with session_scope(manager.engine) as session:
            busy = set(session.scalars(select(Attempt.worker).where(
                Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE])).distinct()))
            if counting:
                self._count(session, manager, busy, now)
            if settings.sleep_after:
                self._put_to_sleep(session, manager, busy, now)
            if any(s.state == ASLEEP for s in self.sleeping.values()):
                self._wake_for_work(session, manager, now)

    # -- the nodes told to sleep ------------------------------------------------------------

    def _watch(self, session: Session, manager: Manager, now: float) -> None:
        letters = []
        for name, sleep in list(self.sleeping.items()):
            if manager.book.get(name) is None:  # revoked meanwhile
                del self.sleeping[name]
                continue
            beat = manager.live.get(name)
            fresh = beat is not None and manager._beat_seq.get(name) != sleep.seq
            if sleep.state == ORDERED:
                if beat is None or beat.state == WorkerState.ASLEEP.value:
                    self._enter(sleep, ASLEEP, manager, now)
                    log.info("worker %s is asleep", name)
                elif now - sleep.since > ORDER_GRACE:
                    self._awake(session, manager, name, "did not go to sleep (see its log: its sleep command?)")
            elif sleep.state == ASLEEP and fresh and beat.state != WorkerState.ASLEEP.value:
                self._awake(session, manager, name, "is awake (woken by something else, or its sleep failed)")
            elif sleep.state == WAKING and fresh:
                self._awake(session, manager, name, f"woke up in {now - sleep.since:.1f} s")
            elif sleep.state == WAKING and now - sleep.since >= manager.settings.wake_timeout:
                how = self._how(manager, sleep)
                reason = (f"worker {name} did not wake within {manager.settings.wake_timeout:g} s ({how}); "
                          "its work goes to the awake workers")
                log.warning("%s", reason)
                from renderfarm.wire import DeadLetter

                letters.append(DeadLetter(source="wake", entry=name, reason=reason, worker=name, at=now,
                                          deliveries=sleep.wakes))
                self._enter(sleep, ASLEEP, manager, now)
                lifecycle.worker_asleep(session, name)
        streams.post_dead_letters(manager.r, letters)

    def _enter(self, sleep: Sleep, state: str, manager: Manager, now: float) -> None:
        sleep.state, sleep.since, sleep.seq = state, now, manager._beat_seq.get(sleep.name)

    def _awake(self, session: Session, manager: Manager, name: str, how: str) -> None:
        del self.sleeping[name]
        lifecycle.worker_awake(session, name)
        self.idle_since[name] = manager.clock.now()
        manager._next_dispatch = 0.0
        log.info("worker %s %s", name, how)

    # -- idle nodes go to sleep -------------------------------------------------------------

    def _idle(self, manager: Manager, name: str, beat, busy: set[str]) -> bool:
        return beat.state in (WorkerState.IDLE.value, WorkerState.ASLEEP.value) and not beat.attempts \
            and name not in busy

    def _count(self, session: Session, manager: Manager, busy: set[str], now: float) -> None:
        """Idle power (renderfarm.idlepower): the awake idle and the asleep nodes of each site."""
        idle: Counter[str] = Counter()
        asleep: Counter[str] = Counter()
        for name, beat in manager.live.items():
            sleep = self.sleeping.get(name)
            if (sleep is None or sleep.state == ORDERED) and self._idle(manager, name, beat, busy):
                node = manager.book.get(name)
                idle[node.site if node else beat.site] += 1
        for sleep in self.sleeping.values():
            if sleep.state != ORDERED:
                asleep[sleep.view.site] += 1
        self.meter.look(manager.settings.sites, idle, asleep, now)
        if self.meter.due(now):
            self.meter.flush(session, manager.settings.sites, now)

    def _put_to_sleep(self, session: Session, manager: Manager, busy: set[str], now: float) -> None:
        for name in set(self.idle_since) - set(manager.live):
            del self.idle_since[name]
        for name, beat in manager.live.items():
            if name in self.sleeping:
                continue
            if not self._idle(manager, name, beat, busy) or manager._held(name) or name not in manager._written_at:
                self.idle_since[name] = now
                continue
            since = self.idle_since.setdefault(name, now)
            if now - since >= manager.settings.sleep_after:
                self._order_sleep(session, manager, name, beat, now - since, now)

    def _order_sleep(self, session: Session, manager: Manager, name: str, beat, idle: float, now: float) -> None:
        from renderfarm.wire import Sealed, SleepOrder

        node = manager.book.get(name)
        if node is None or not lifecycle.worker_asleep(session, name):
            return
        seq = max(1, int(now * 1000))
        order = SleepOrder(node=name, seq=seq, idle=round(idle, 3))
        sealed = Sealed.seal(order, node=name, seq=seq, key=node.key).to_json()
        queues.enqueue_sleep(manager.r, name, sealed, f"{node.node_id}-sleep{seq}")
        mac = beat.capabilities.mac if beat.capabilities is not None else None
        self.sleeping[name] = Sleep(name, manager._view(beat, now), mac, ORDERED, now, manager._beat_seq.get(name))
        self.idle_since.pop(name, None)
        log.info("worker %s idle %.0f s: told to sleep", name, idle)

    # -- work for sleeping nodes wakes them ---------------------------------------------------

    def _wake_for_work(self, session: Session, manager: Manager, now: float) -> None:
        """Wake each sleeping node the dispatcher's own policy (pick_task) would give a task that
        is still pending after this round filled every awake worker's queue."""
        from renderfarm.manager.dispatch import FairShare, Hands, runnable_candidates
        from renderfarm.scheduling import pick_task

        asleep = sorted((s for s in self.sleeping.values() if s.state == ASLEEP and not _on_hold(manager, s.name)),
                        key=lambda s: (s.view.price, s.name))
        if not asleep:
            return
        candidates = runnable_candidates(session, len(asleep), now)
        if not candidates:
            return
        hands = Hands.load(session)
        held = {job: frozenset(ws) for job, ws in hands.holders.items()}
        peers: dict[str, set[str]] = {}
        for view in [manager._view(b, now) for b in manager.live.values()] + [s.view for s in asleep]:
            peers.setdefault(view.pool, set()).add(view.name)
        shares = FairShare().view({c.job_id for c in candidates})
        for sleep in asleep:
            choice = pick_task(sleep.view, candidates, peers[sleep.view.pool], shares, held)
            if choice is None:
                continue
            candidates.remove(choice)
            self._wake(session, manager, sleep, now, choice.job_id)

    def _wake(self, session: Session, manager: Manager, sleep: Sleep, now: float, job_id: str) -> None:
        settings = manager.settings
        self._enter(sleep, WAKING, manager, now)
        lifecycle.worker_waking(session, sleep.name)
        sleep.wakes += 1
        how = self._how(manager, sleep)
        log.info("waking worker %s for job %s (%s)", sleep.name, job_id, how)
        if settings.wake_command:
            thread = threading.Thread(target=_run_wake_command, args=(settings.wake_command, sleep.name, sleep.mac),
                                      name=f"wake-{sleep.name}", daemon=True)
            thread.start()
            self.wakers.append(thread)
        elif sleep.mac:
            try:
                send_magic_packet(sleep.mac, settings.wake_address, settings.wake_port)
                self.packets += 1
            except OSError as e:
                log.warning("could not send the magic packet for %s to %s:%d: %s", sleep.name,
                            settings.wake_address, settings.wake_port, e)

    @staticmethod
    def _how(manager: Manager, sleep: Sleep) -> str:
        settings = manager.settings
        if settings.wake_command:
            return f"wake command {settings.wake_command!r}"
        if sleep.mac:
            return f"magic packet to {sleep.mac} via {settings.wake_address}:{settings.wake_port}"
        return "no MAC advertised and no FARM_WAKE_COMMAND: nothing can wake it"


def _run_wake_command(template: str, name: str, mac: str | None) -> None:
    import subprocess

    try:
        done = run_wake_command(template, name, mac)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("wake command for %s failed: %s", name, e)
        return
    if done.returncode != 0:
        log.warning("wake command for %s exited %d: %s", name, done.returncode,
                    (done.stderr or b"").decode("utf-8", "replace").strip()[-500:])


def _on_hold(manager: Manager, name: str) -> bool:
    """Drained or disabled (`farm worker drain|disable`): woken, it would be given nothing."""
    node = manager.book.get(name)
    return node is None or node.hold is not None


def _mac_of(capabilities: str | None) -> str | None:
    try:
        mac = json.loads(capabilities or "{}").get("mac")
    except (ValueError, AttributeError):
        return None
    return mac if isinstance(mac, str) and MAC.fullmatch(mac) else None


def _with_tags(capabilities: str | None, tags: tuple[str, ...]) -> dict:
    """A row's capabilities with the node's enrolled tags (as the manager's live view has them)."""
    from renderfarm.capabilities import parse_capabilities

    caps = parse_capabilities(capabilities) or {}
    caps["tags"] = sorted(set(tags) | {t for t in caps.get("tags", ()) if t == "gpu"})
    return caps
