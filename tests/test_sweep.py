"""The attempt sweep (renderfarm.manager.sweep): what it deletes from `nodes/`, decided on exact
inputs, and a whole job's worth of leftovers (a manager killed five times with promoted copies
still to delete, a worker declared lost that uploads after all, strays of attempts nobody knows)
swept away by one pass while everything an attempt needs stays. The manager runs in-process on a
real Valkey, SQLite and file storage, its clock stepped by the test."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from nodekit import PNG, SPEC, SteppedFarm
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm import keys
from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.frames import frame_name
from renderfarm.manager.sweep import Known, attempt_of, unneeded
from renderfarm.models import ATTEMPT_ACTIVE, Attempt, AttemptState, Job, Task
from renderfarm.storage import ObjectInfo
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import Done, Failed, Output, Started, Usage

GRACE = 3600.0


def test_what_no_attempt_needs_on_exact_inputs() -> None:
    old, young = 1000.0, 1000.0 + 5000 - 10  # at now=5000 + 1000: 5000 s old, 10 s old
    known = {
        ("j1", 0, 1): Known("a", live=False, log_key="nodes/a/jobs/j1/0/1/log.txt"),  # done
        ("j1", 1, 1): Known("b", live=True, log_key=None),  # still rendering
        ("j1", 1, 2): Known("a", live=False, log_key=None),  # lost: its worker went silent
    }
    objects = [
        ObjectInfo("nodes/a/jobs/j1/0/1/shot.0001.png", 9, modified=old),  # a promoted copy
        ObjectInfo("nodes/a/jobs/j1/0/1/log.txt", 9, modified=old),  # its log: `farm log` reads it
        ObjectInfo("nodes/b/jobs/j1/1/1/shot.0002.png", 9, modified=old),  # a live attempt's upload
        ObjectInfo("nodes/a/jobs/j1/1/2/shot.0002.png", 9, modified=old),  # a lost attempt's late upload
        ObjectInfo("nodes/a/jobs/j1/1/2/log.txt", 9, modified=old),  # and its log, recorded nowhere
        ObjectInfo("nodes/b/jobs/j1/0/1/shot.0001.png", 9, modified=old),  # another node's, at a's attempt
        ObjectInfo("nodes/a/jobs/gone/0/1/shot.0001.png", 9, modified=old),  # a job the farm forgot
        ObjectInfo("nodes/a/jobs/j1/7/1/shot.0008.png", 9, modified=young),  # unknown, but too young
        ObjectInfo("nodes/a/jobs/j1/9/1/shot.0010.png", 9),  # unknown, of unknown age
        ObjectInfo("nodes/a/.identity-probe", 9, modified=old),  # no attempt's key at all
        ObjectInfo("nodes/a/jobs/j1/x/1/shot.png", 9, modified=old),
    ]
    assert unneeded(objects, known, now=6000.0, grace=GRACE) == [
        "nodes/a/jobs/j1/0/1/shot.0001.png",
        "nodes/a/jobs/j1/1/2/shot.0002.png",
        "nodes/a/jobs/j1/1/2/log.txt",
        "nodes/b/jobs/j1/0/1/shot.0001.png",
        "nodes/a/jobs/gone/0/1/shot.0001.png",
    ]
    assert attempt_of("nodes/a/jobs/j1/12/3/deep/er.exr").number == 3
    assert attempt_of("jobs/j1/frames/shot.0001.png") is None


def test_listing_goes_on_after_a_key(tmp_path: Path) -> None:
    from renderfarm.storage.files import FileStorage

    storage = FileStorage(tmp_path / "store", f"file://{tmp_path / 'store'}")
    for key in ("nodes/a/1", "nodes/a/2", "nodes/b/1", "jobs/x"):
        storage.put_bytes(key, b"x")
    assert [o.key for o in storage.list("nodes/", after="nodes/a/2")] == ["nodes/b/1"]
    assert all(abs(o.modified - time.time()) < 60 for o in storage.list("nodes/"))


def test_one_sweep_after_five_manager_kills_and_a_lost_worker_leaves_only_what_attempts_need(
        redis_url: str, tmp_path: Path) -> None:
    clock = SteppedClock(start=time.time())  # objects' times are storage's real ones
    farm = SteppedFarm(in_process_manager(redis_url, tmp_path, clock, env={"FARM_SWEEP_GRACE": "3600"}), ("a", "b"))
    job_id = farm.submit(SPEC.model_copy(update={"frames": "1-48"}))
    farm.beat()
    storage = farm.manager.storage

    # Five times: frames are promoted, then the manager is killed before its bulk delete of the
    # attempts' copies (kept in memory only), and another one starts in its place.
    for _kill in range(5):
        for _ in range(2):
            for attempt_id, _worker, _state in farm.attempts(AttemptState.QUEUED):
                farm.render(attempt_id)
            farm.beat()
        assert farm.manager._doomed, "nothing was left to delete when the manager died"
        farm.manager.engine.dispose()
        farm.manager = in_process_manager(redis_url, tmp_path, clock, env={"FARM_SWEEP_GRACE": "3600"})
        farm.beat()

    # A failed render leaves its log (recorded: needed) and a half-written frame (not needed).
    failing, worker = next((a, w) for a, w, _ in farm.attempts(AttemptState.QUEUED))
    prefix = farm_prefix(farm, failing)
    storage.put_bytes(prefix + "log.txt", b"it broke")
    storage.put_bytes(prefix + "half.png", PNG[:40])
    farm.nodes[worker].post(farm.manager.r, Failed(worker=worker, attempt_id=failing, error="it broke",
                                                   log_key=prefix + "log.txt"))
    farm.manager.tick()

    # Worker b is stopped past its TTL while it renders: its attempt is declared lost and goes
    # elsewhere. Then it resumes, uploads the frame and reports it: refused, its upload stays.
    farm.beat()
    frozen = next(a for a, w, _ in farm.attempts(AttemptState.QUEUED) if w == "b")
    farm.nodes["b"].post(farm.manager.r, Started(worker="b", attempt_id=frozen, elapsed=0.1))
    farm.manager.tick()
    farm.manager.r.delete(keys.heartbeat_key("b"))
    for _ in range(4):
        clock.advance(12.0)
        farm.beat("a")
    assert {a: s for a, _, s in farm.attempts()}[frozen] == "lost"
    late = farm_prefix(farm, frozen) + frame_name("shot", first_frame(farm, frozen), "png")
    storage.put_bytes(late, PNG)
    farm.nodes["b"].post(farm.manager.r, Done(worker="b", attempt_id=frozen, usage=Usage(wall=1.0), outputs=(
        Output(frame=first_frame(farm, frozen), sha256=hashlib.sha256(PNG).hexdigest(), size=len(PNG)),)))
    farm.manager.tick()
    assert {a: s for a, _, s in farm.attempts()}[frozen] == "lost"

    # Strays of attempts the farm never knew, and things the sweep must never touch.
    strays = [attempt_prefix("a", job_id, 999, 1) + "x.png", attempt_prefix("b", "nosuchjob", 0, 1) + "y.png"]
    for key in strays:
        storage.put_bytes(key, b"stray")
    untouchable = [f"scenes/{'cd' * 32}.toml", "nodes/a/.identity-probe", f"jobs/{job_id}/logs/note.txt"]
    for key in untouchable:
        storage.put_bytes(key, b"keep")
    # One attempt is still live, its frame uploaded: needed, however old.
    farm.beat("a")
    live = farm.attempts(AttemptState.QUEUED)[0][0]
    live_key = farm_prefix(farm, live) + "frame.png"
    storage.put_bytes(live_key, PNG)
    frames_before = sorted(o.key for o in storage.list(f"jobs/{job_id}/frames/"))

    sweep = farm.manager.attempt_sweep
    sweep.wait()
    before = {o.key for o in storage.list("nodes/")}
    orphans = {key for key in before - needed(farm) if attempt_of(key) is not None}
    assert late in orphans and set(strays) <= orphans and prefix + "half.png" in orphans
    assert len(orphans) >= 5 + 3, sorted(orphans)  # at least a copy per kill, besides those above
    # Younger than the grace period: nothing goes yet (an upload racing its own done event).
    sweep.full_pass(clock.now())
    assert {o.key for o in storage.list("nodes/")} == before

    clock.advance(GRACE)
    sweep.full_pass(clock.now())
    after = {o.key for o in storage.list("nodes/")}
    assert after == before - orphans
    assert {key for key in after - needed(farm) if attempt_of(key) is not None} == set()
    assert live_key in after and prefix + "log.txt" in after
    assert all(storage.head(key) is not None for key in untouchable)
    assert sorted(o.key for o in storage.list(f"jobs/{job_id}/frames/")) == frames_before
    assert sweep.deleted == len(orphans)
    print(f"\nswept {len(orphans)} object(s) no attempt needed; {len(after)} kept")
    farm.manager.engine.dispose()


def farm_prefix(farm: SteppedFarm, attempt_id: int) -> str:
    with session_scope(farm.manager.engine) as s:
        attempt = s.get(Attempt, attempt_id)
        return attempt_prefix(attempt.worker, attempt.job_id, s.get(Task, attempt.task_id).index, attempt.number)


def first_frame(farm: SteppedFarm, attempt_id: int) -> int:
    with session_scope(farm.manager.engine) as s:
        return s.get(Task, s.get(Attempt, attempt_id).task_id).first_frame


def needed(farm: SteppedFarm) -> set[str]:
    """What attempts need in `nodes/`, by the database: all of a live attempt's objects, and the
    recorded log of every other."""
    storage = farm.manager.storage
    out = set()
    with session_scope(farm.manager.engine) as s:
        rows = s.execute(select(Attempt, Task.index).join(Task, Task.id == Attempt.task_id)).all()
        for attempt, index in rows:
            assert s.get(Job, attempt.job_id) is not None
            if attempt.state in {st.value for st in ATTEMPT_ACTIVE}:
                prefix = attempt_prefix(attempt.worker, attempt.job_id, index, attempt.number)
                out |= {o.key for o in storage.list(prefix)}
            elif attempt.log_key:
                out.add(attempt.log_key)
    return out
