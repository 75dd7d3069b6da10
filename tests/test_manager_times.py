"""What the manager records about an attempt is its own: every time from its own clock (a worker
says how long, never when, so a worker's clock 10 minutes off changes nothing), each state change
logged old -> new by the state machine, and the task's lease gone from Valkey once the attempt
ends, done or failed (a real Valkey and SQLite; the manager stepped tick by tick)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nodekit import PNG, SPEC, stepped_farm

from renderfarm import keys
from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.models import Attempt, Job, Task
from renderfarm.wire import Done, Failed, Output, Started, Usage

# The manager's clock, an hour behind this machine's: were any time a worker's (or this
# machine's), it would show as an hour off.
AN_HOUR = 3600.0


def row(farm, attempt_id: int) -> tuple[Attempt, Task, Job]:
    with session_scope(farm.manager.engine) as s:
        attempt = s.get(Attempt, attempt_id)
        task, job = s.get(Task, attempt.task_id), s.get(Job, attempt.job_id)
        s.expunge_all()
        return attempt, task, job


def test_times_are_the_managers_and_leases_go_when_attempts_end(redis_url: str, tmp_path: Path, caplog):
    import hashlib

    clock = SteppedClock(start=time.time() - AN_HOUR)
    caplog.set_level(logging.DEBUG, logger="renderfarm.lifecycle")
    spec = SPEC.model_copy(update={"frames": "1-2"})
    with stepped_farm(redis_url, tmp_path, ("a",), clock=clock) as farm:
        r, node = farm.manager.r, farm.nodes["a"]
        submitted = clock.now()
        job_id = farm.submit(spec)
        farm.beat()
        first, second = [a for a, _, _ in farm.attempts()]
        queued = clock.now()
        task_id = row(farm, first)[0].task_id
        assert int(r.get(keys.lease_key(task_id))) == first  # the live attempt holds its task

        # The first attempt renders: started 2.5 s before the manager hears of it, done 10 s later.
        clock.advance(30)
        node.post(r, Started(worker="a", attempt_id=first, elapsed=2.5))
        farm.manager.tick()
        heard = clock.now()
        clock.advance(10)
        frame = Path(farm.manager.settings.state_dir) / "frame.png"
        frame.write_bytes(PNG)
        from renderfarm.frames import frame_name
        from renderfarm.storage.keys import attempt_prefix

        sha = hashlib.sha256(PNG).hexdigest()
        farm.manager.storage.put_file(attempt_prefix("a", job_id, 0, 1) + frame_name("shot", 1, "png"), frame,
                                      sha256=sha)
        node.post(r, Done(worker="a", attempt_id=first, usage=Usage(wall=12.5),
                          outputs=(Output(frame=1, sha256=sha, size=len(PNG)),)))
        farm.manager.tick()
        attempt, task, job = row(farm, first)
        assert attempt.state == "done"
        assert (attempt.queued_at, attempt.started_at, attempt.finished_at) == (queued, heard - 2.5, clock.now())
        assert (task.started_at, task.finished_at) == (heard - 2.5, clock.now())
        assert (job.submitted_at, job.started_at) == (submitted, heard - 2.5)
        assert r.get(keys.lease_key(task_id)) is None  # done: its lease is gone

        # The second fails, never having said it started: it ran for its usage's wall time.
        clock.advance(5)
        second_task = row(farm, second)[0].task_id
        assert int(r.get(keys.lease_key(second_task))) == second
        node.post(r, Failed(worker="a", attempt_id=second, error="it broke", usage=Usage(wall=4.0)))
        farm.manager.tick()
        attempt = row(farm, second)[0]
        assert (attempt.state, attempt.started_at, attempt.finished_at) == ("failed", clock.now() - 4.0, clock.now())
        # Its task goes again to a new attempt, which holds the lease now, or to none yet.
        again = [a for a, _, state in farm.attempts() if a > second and row(farm, a)[0].task_id == second_task]
        assert r.get(keys.lease_key(second_task)) == (str(again[0]).encode() if again else None)

    # Each change of state, logged by the state machine as old -> new.
    changes = [rec.getMessage() for rec in caplog.records if rec.name == "renderfarm.lifecycle"]
    for change in (f"attempt {first}: queued -> running", f"attempt {first}: running -> done",
                   f"job {job_id}: queued -> running", f"attempt {second}: queued -> running",
                   f"attempt {second}: running -> failed"):
        assert change in changes, changes


def test_a_beat_older_than_an_attempts_end_does_not_mark_its_task_taken_back(redis_url: str, tmp_path: Path):
    """A worker's beat names the attempts it holds until its next beat (a third of its TTL
    later). Read after the attempt's done event, that beat is old news, not a worker still
    holding an ended attempt: its task's lease was marked taken back for a minute all the same
    (a done job kept a lease key; seen in `test_finished_job`). A beat first seen after the end
    still gets the stale worker told to stop."""
    clock = SteppedClock(start=time.time() - AN_HOUR)
    spec = SPEC.model_copy(update={"frames": "1"})
    with stepped_farm(redis_url, tmp_path, ("a",), clock=clock) as farm:
        r, node = farm.manager.r, farm.nodes["a"]
        farm.submit(spec)
        farm.beat()
        (attempt,) = [a for a, _, _ in farm.attempts()]
        task_id = row(farm, attempt)[0].task_id
        node.beat(r, attempts=(attempt,), seq=1)  # rendering it: the beat the manager has read last
        farm.manager.tick()
        clock.advance(1)
        farm.render(attempt)
        assert row(farm, attempt)[0].state == "done" and r.get(keys.lease_key(task_id)) is None

        clock.advance(5)  # a reconciliation sweep, before the worker's next beat
        farm.manager.reconcile()
        assert r.get(keys.lease_key(task_id)) is None

        clock.advance(5)  # a new beat, first seen well after the end, still names it: stale
        node.beat(r, attempts=(attempt,), seq=2)
        farm.manager.tick()
        farm.manager.reconcile()
        assert r.get(keys.lease_key(task_id)) == b"0"  # taken back: its next lease check stops it
