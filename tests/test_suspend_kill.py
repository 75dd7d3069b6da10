"""`farm suspend --kill`: the running attempt it kills is shown as cancelled by it, not as lost
(a worker that vanished) nor failed, whatever its worker reports after stopping; its task waits,
not counted as a failure (a real Valkey and SQLite; the manager stepped tick by tick)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodekit import SPEC, stepped_farm
from sqlalchemy import select

from renderfarm.db import session_scope
from renderfarm.models import Attempt, Task
from renderfarm.wire import Failed, Released, SuspendIntent


@pytest.mark.parametrize("report", ["released", "failed"])
def test_an_attempt_killed_by_suspend_kill_is_cancelled_not_lost(redis_url: str, tmp_path: Path, report):
    with stepped_farm(redis_url, tmp_path, ("a",)) as farm:
        job = farm.submit(SPEC.model_copy(update={"frames": "1"}))
        farm.beat()
        [(attempt_id, _, _)] = farm.attempts()
        farm.start(attempt_id)
        reply = farm.ask(SuspendIntent(request_id=farm.request_id(), job=job, kill=True))
        assert reply.ok and reply.changed
        # The worker sees its lease gone, stops the render, and says so.
        stopped = "the render is no longer this worker's"
        event = (Released(worker="a", attempt_id=attempt_id, reason=stopped) if report == "released"
                 else Failed(worker="a", attempt_id=attempt_id, error=stopped))
        farm.nodes["a"].post(farm.manager.r, event)
        farm.manager.tick()
        with session_scope(farm.manager.engine) as s:
            attempt = s.get(Attempt, attempt_id)
            task = s.scalars(select(Task)).one()
            assert (attempt.state, attempt.error) == ("cancelled", "killed by suspend --kill")
            assert (task.state, task.attempts) == ("pending", 1)
        assert farm.job_state() == "suspended"
