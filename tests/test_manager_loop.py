"""The manager's loop on a real Valkey and SQLite: which ticks run a dispatch round."""

from __future__ import annotations

import time
from pathlib import Path

from renderfarm import presence, streams
from renderfarm.config import load_settings
from renderfarm.db import upgrade
from renderfarm.keys import CONTROL_STREAM, EVENT_STREAM
from renderfarm.manager import Manager, loop
from renderfarm.redisconn import connect


def test_dispatch_runs_when_a_slot_may_have_freed_and_now_and_then_otherwise(
    redis_url: str, tmp_path: Path, monkeypatch
) -> None:
    # No round falls due by the clock while the first part runs, however slow the machine.
    monkeypatch.setattr(loop, "DISPATCH_EVERY", 600.0)
    settings = load_settings({
        "FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
        "FARM_DATABASE_URL": f"sqlite:///{tmp_path / 'farm.db'}", "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}",
    }, cwd=tmp_path)
    manager = Manager(settings)
    upgrade(manager.engine)
    manager.r = connect(settings)
    streams.ensure_groups(manager.r)
    rounds = []
    dispatch = manager.dispatch
    manager.dispatch = lambda: rounds.append(time.monotonic()) or dispatch()

    def tick_with(stream: str | None = None, **doc) -> int:
        if stream:
            streams.post(manager.r, stream, doc)
        before = len(rounds)
        manager.tick()
        return len(rounds) - before

    assert tick_with() == 1  # the first tick fills the queues
    # Started and progress events free no slot: no round for them...
    assert tick_with(EVENT_STREAM, type="progress", worker="w", attempt_id=1, progress=0.5) == 0
    assert tick_with(EVENT_STREAM, type="started", worker="w", attempt_id=1, ts=time.time()) == 0
    # ...but a done event (even one the manager ignores) and any intent may free one or add work.
    assert tick_with(EVENT_STREAM, type="done", worker="w", attempt_id=1, outputs=[]) == 1
    assert tick_with(CONTROL_STREAM, type="no-such-intent") == 1
    assert tick_with() == 0
    # A worker arriving (or changing state) is news too: it beats as a worker does.
    presence.beat(manager.r, "w1", {"name": "w1", "state": "idle", "ts": time.time()}, 5.0)
    assert tick_with() == 1
    assert tick_with() == 0
    # And a round every DISPATCH_EVERY whatever happens.
    monkeypatch.setattr(loop, "DISPATCH_EVERY", 0.3)
    assert tick_with(EVENT_STREAM, type="done", worker="w", attempt_id=2, outputs=[]) == 1
    time.sleep(0.3)
    assert tick_with() == 1
    manager.engine.dispose()
