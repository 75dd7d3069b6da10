"""The manager's loop on a real Valkey and SQLite: which ticks run a dispatch round (its clock
stepped by the test, never slept on)."""

from __future__ import annotations

from pathlib import Path

from nodekit import ActingNode, enroll_in_process

from renderfarm import streams
from renderfarm.clock import SteppedClock
from renderfarm.config import load_settings
from renderfarm.db import upgrade
from renderfarm.keys import CONTROL_STREAM
from renderfarm.manager import Manager, loop
from renderfarm.redisconn import connect
from renderfarm.wire import CancelIntent, Done, Output, Progress, Started, Usage

SHA = "ab" * 32


def in_process_manager(redis_url: str, tmp_path: Path, clock=None, env: dict[str, str] | None = None) -> Manager:
    """A manager on a real Valkey, SQLite and file storage, driven tick by tick by the test (with
    `env`: more settings)."""
    settings = load_settings({
        "FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
        "FARM_DATABASE_URL": f"sqlite:///{tmp_path / 'farm.db'}", "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}",
        # The storage sweep waits ~30 years unless a test asks for it: storage's real file times
        # against a stepped clock would let it delete, mid-test, what the test planted.
        "FARM_SWEEP_GRACE": str(10**9),
        **(env or {}),
    }, cwd=tmp_path)
    manager = Manager(settings, clock=clock or SteppedClock())
    upgrade(manager.engine)
    manager.start(connect(settings))
    return manager


def test_dispatch_runs_when_a_slot_may_have_freed_and_now_and_then_otherwise(redis_url: str, tmp_path: Path) -> None:
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock)
    rounds = []
    dispatch = manager.dispatch
    manager.dispatch = lambda: rounds.append(clock.monotonic()) or dispatch()

    def tick_with(stream: str | None = None, message=None) -> int:
        if stream == CONTROL_STREAM:
            streams.post(manager.r, stream, message)
        elif stream:
            node.post(manager.r, message)
        before = len(rounds)
        manager.tick()
        return len(rounds) - before

    node = ActingNode(enroll_in_process(manager, "w"))  # an intent: the first tick fills the queues
    assert len(rounds) == 1
    # Started and progress events free no slot: no round for them...
    assert tick_with("events", Progress(worker="w", attempt_id=1, progress=0.5)) == 0
    assert tick_with("events", Started(worker="w", attempt_id=1, elapsed=1.0)) == 0
    # ...but a done event (even one the manager refuses) and any intent may free one or add work.
    done = Done(worker="w", attempt_id=1, outputs=(Output(frame=1, sha256=SHA, size=3),), usage=Usage(wall=1))
    assert tick_with("events", done) == 1
    assert tick_with(CONTROL_STREAM, CancelIntent(request_id="c" * 32, job="abcd1234")) == 1
    assert tick_with() == 0
    # A worker arriving (or changing state) is news too: it beats as a worker does.
    node.beat(manager.r, ttl=5.0)
    assert tick_with() == 1
    assert tick_with() == 0
    # And a round every DISPATCH_EVERY whatever happens.
    clock.advance(loop.DISPATCH_EVERY)
    assert tick_with() == 1
    manager.engine.dispose()
