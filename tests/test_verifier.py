"""Outputs checked in processes of the manager's own (renderfarm.manager.verifier): frames are
verified and promoted there as in threads, a forged one is still refused, and a checker killed
under the manager costs a retry, not the event. The manager runs in-process on a real Valkey,
SQLite and file storage, its clock stepped by the test; its checkers are real processes."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
from nodekit import SPEC, stepped_farm
from sqlalchemy import select

from renderfarm.db import session_scope
from renderfarm.frames import frame_name
from renderfarm.manager.loop import DEFER_RETRY
from renderfarm.models import Attempt, AttemptState, Job, Task
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import Done, Output, Started, Usage

ONE = SPEC.model_copy(update={"frames": "1-2"})


@pytest.fixture
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path, ("a",), env={"FARM_VERIFY_PROCESSES": "1"}) as farm:
        try:
            yield farm
        finally:
            farm.manager.verifier.close()


def checkers(farm) -> list[int]:
    pool = farm.manager.verifier._pool
    return [p.pid for p in pool._processes.values()] if pool is not None else []


def post_done(farm, attempt_id: int, data: bytes) -> None:
    """Act as the attempt's node: upload `data` as its frame and report it done."""
    with session_scope(farm.manager.engine) as s:
        attempt = s.get(Attempt, attempt_id)
        task, job = s.get(Task, attempt.task_id), s.get(Job, attempt.job_id)
        key = attempt_prefix(attempt.worker, job.id, task.index, attempt.number) + frame_name(job.name, int(task.frames), "png")
        frame = int(task.frames)
    node = farm.nodes[attempt.worker]
    node.post(farm.manager.r, Started(worker="a", attempt_id=attempt_id, elapsed=0.1))
    farm.manager.storage.put_bytes(key, data)
    node.post(farm.manager.r, Done(worker="a", attempt_id=attempt_id, usage=Usage(wall=1.0), outputs=(
        Output(frame=frame, sha256=hashlib.sha256(data).hexdigest(), size=len(data)),)))


def test_frames_are_checked_in_a_process_of_their_own_and_forgeries_refused(farm):
    from nodekit import PNG

    job_id = farm.submit(ONE)
    farm.beat()
    first, second = [a for a, _, _ in farm.attempts(AttemptState.QUEUED)]
    post_done(farm, first, PNG)
    farm.manager.tick()
    assert checkers(farm) and os.getpid() not in checkers(farm)
    forged = b"\x89PNG\r\n\x1a\n" + b"not a frame" * 10  # its own hash and size: only a decode tells
    post_done(farm, second, forged)
    farm.manager.tick()
    with session_scope(farm.manager.engine) as s:
        states = dict(s.execute(select(Attempt.id, Attempt.state)).all())
        error = s.get(Attempt, second).error
    assert states[first] == AttemptState.DONE.value, states
    assert states[second] == AttemptState.FAILED.value and "output rejected" in error, (states, error)
    final = f"jobs/{job_id}/frames/{frame_name('shot', 1, 'png')}"
    assert farm.manager.storage.get_bytes(final) == PNG
    assert farm.manager.storage.head(f"jobs/{job_id}/frames/{frame_name('shot', 2, 'png')}") is None


def test_a_checker_killed_costs_a_retry_not_the_event(farm):
    from nodekit import PNG

    farm.submit(ONE)
    farm.beat()
    first, second = [a for a, _, _ in farm.attempts(AttemptState.QUEUED)]
    post_done(farm, first, PNG)
    farm.manager.tick()
    (pid,) = checkers(farm)
    os.kill(pid, signal.SIGKILL)
    post_done(farm, second, PNG)
    farm.manager.tick()
    # Whether the pool saw its checker die before or after the work was handed to it, the
    # outcome is a transient storage error: the done event waits, unacknowledged.
    assert farm.manager.deferred, "the done event was not kept for later"
    with session_scope(farm.manager.engine) as s:
        assert s.get(Attempt, second).state == AttemptState.RUNNING.value
    farm.manager.clock.advance(DEFER_RETRY + 1)
    farm.manager.tick()
    with session_scope(farm.manager.engine) as s:
        assert s.get(Attempt, second).state == AttemptState.DONE.value
    assert checkers(farm) and pid not in checkers(farm)
