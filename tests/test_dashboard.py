"""What `farm top` shows, read from a real database (SQLite and PostgreSQL) built through the
lifecycle, with the farm's Redis down and up: job rows in render order, workers, queue depths,
throughput by minute and recent failures with their first error lines."""

from __future__ import annotations

import pytest
import redis as redis_lib
from sqlalchemy import select

from renderfarm import keys, lifecycle, presence
from renderfarm.config import load_settings
from renderfarm.dashboard import (
    FARM_DOWN,
    MANAGER_DOWN,
    NO_DATABASE,
    Dashboard,
    Failure,
    WorkerLine,
    first_line,
    snapshot,
)
from renderfarm.db import DatabaseError, make_engine, session_scope, upgrade
from renderfarm.localfarm.services import free_ports
from renderfarm.models import Attempt, Job, Task
from renderfarm.planning import plan_tasks
from renderfarm.queues import enqueue_attempts
from renderfarm.wire import Heartbeat, Sealed, TaskOrder

NOW = 1_000_000.0
SHA = "cd" * 32


def add_job(engine, job_id: str, frames: str, chunk: int, *, priority: int = 50, submitted_at: float,
            name: str = "orbit", owner: str = "alice") -> None:
    plans = plan_tasks(frames, chunk, 100_000)
    job = Job(
        id=job_id, name=name, owner=owner, renderer="builtin", scene_name="orbit.toml",
        scene_key=f"scenes/{SHA}.toml", scene_sha256=SHA, frames=frames,
        frame_count=sum(len(p.frames) for p in plans), chunk=chunk, priority=priority,
        width=64, height=48, submitted_at=submitted_at,
    )
    with session_scope(engine) as s:
        lifecycle.create_job(s, job, plans)


def run(engine, job_id: str, index: int, worker: str, *, start: float, end: float | None = None,
        error: str | None = None, progress: float | None = None) -> int:
    """One attempt of a task through the manager's steps: queued, started, then done or failed."""
    with session_scope(engine) as s:
        task = s.scalars(select(Task).where(Task.job_id == job_id, Task.index == index)).one()
        attempt = lifecycle.queue_attempt(s, task, worker, start - 1)
        attempt_id = attempt.id
    with session_scope(engine) as s:
        lifecycle.start_attempt(s, s.get(Attempt, attempt_id), start)
    with session_scope(engine) as s:
        attempt = s.get(Attempt, attempt_id)
        if progress is not None:
            lifecycle.note_progress(s, attempt, progress)
        if end is not None and error is None:
            lifecycle.complete_attempt(s, attempt, end, f"logs/{attempt_id}")
        elif end is not None:
            lifecycle.fail_attempt(s, attempt, end, error, f"logs/{attempt_id}", 3)
        lifecycle.refresh_job(s, s.get(Job, job_id), end or start)
    return attempt_id


@pytest.fixture()
def farm_db(database_url):
    """A database with five jobs in every state and three workers, as the manager leaves it."""
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    with session_scope(engine) as s:
        lifecycle.see_worker(s, Heartbeat(name="w1", host="node1", pid=11), NOW - 5)
        lifecycle.see_worker(s, Heartbeat(name="w2", host="node2", pid=12), NOW - 40)
        lifecycle.see_worker(s, Heartbeat(name="w3", host="node3", pid=13), NOW - 900)
        lifecycle.worker_offline(s, "w3", NOW - 800, "heartbeat lost")

    add_job(engine, "c0000003", "1-2", 1, submitted_at=500.0, name="comp")  # done
    run(engine, "c0000003", 0, "w1", start=NOW - 650, end=NOW - 600)  # on the window's first edge
    run(engine, "c0000003", 1, "w1", start=NOW - 560, end=NOW - 540)  # the second minute's first instant

    add_job(engine, "a0000001", "1-10", 2, submitted_at=1000.0)  # running: 2 done, 1 half, 2 failed once
    run(engine, "a0000001", 0, "w1", start=NOW - 200, end=NOW - 90)
    run(engine, "a0000001", 1, "w1", start=NOW - 80, end=NOW - 30)
    run(engine, "a0000001", 3, "w2", start=NOW - 60, end=NOW - 50, error="")
    run(engine, "a0000001", 4, "w2", start=NOW - 45, end=NOW - 10,
        error="\n  command exited with status 3: boom  \nTraceback (most recent call last):\n  ...")
    run(engine, "a0000001", 2, "w1", start=NOW - 25, progress=0.5)

    add_job(engine, "b0000002", "1-4", 4, priority=80, submitted_at=2000.0, name="urgent", owner="bob")
    add_job(engine, "d0000004", "1-3", 1, submitted_at=3000.0, name="parked")
    add_job(engine, "e0000005", "1-3", 1, submitted_at=4000.0, name="dropped")
    with session_scope(engine) as s:
        lifecycle.suspend_job(s, s.get(Job, "d0000004"), kill=False)
        lifecycle.cancel_job(s, s.get(Job, "e0000005"), NOW - 300)
    yield engine
    engine.dispose()


def settings_for(tmp_path, database_url: str, redis_url: str | None = None):
    env = {"FARM_STATE_DIR": str(tmp_path / "state"), "FARM_DATABASE_URL": database_url}
    if redis_url:
        env["FARM_REDIS_URL"] = redis_url
    return load_settings(env, cwd=tmp_path)


def job_rows(snap) -> list[tuple]:
    return [(j.id, j.name, j.owner, j.state, j.priority, j.frames_done, j.frames, j.progress, j.eta)
            for j in snap.jobs]


EXPECTED_JOBS = [
    # Active jobs in the order they render: priority first, then the oldest.
    ("b0000002", "urgent", "bob", "queued", 80, 0, 4, 0.0, None),
    # 4 frames done and a 2-frame task half done: 50% after 200 s, so 200 s to go.
    ("a0000001", "orbit", "alice", "running", 50, 4, 10, 0.5, 200.0),
    ("d0000004", "parked", "alice", "suspended", 50, 0, 3, 0.0, None),
    # Then finished jobs, the most recently submitted first.
    ("e0000005", "dropped", "alice", "cancelled", 50, 0, 3, 0.0, None),
    ("c0000003", "comp", "alice", "done", 50, 2, 2, 1.0, None),
]

EXPECTED_FAILURES = [
    Failure("a0000001:4/1", "orbit", "w2", NOW - 10, "command exited with status 3: boom"),
    Failure("a0000001:3/1", "orbit", "w2", NOW - 50, "(no error message)"),
]

# Done attempts per minute from NOW-600 to NOW: NOW-600 and NOW-540 open the first two
# minutes, NOW-90 and NOW-30 fall in the last two; the failed attempts do not count.
EXPECTED_THROUGHPUT = [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]


def test_snapshot_with_the_farm_down(farm_db, database_url, tmp_path):
    """No Redis: the database's view, workers as the database last saw them, no queues."""
    snap = snapshot(settings_for(tmp_path, database_url), now=NOW)
    assert (snap.farm_running, snap.manager_running, snap.notes) == (False, False, [FARM_DOWN])
    assert job_rows(snap) == EXPECTED_JOBS
    assert snap.throughput.per_minute == EXPECTED_THROUGHPUT
    assert (snap.throughput.last, snap.throughput.average) == (1, 0.4)
    assert snap.failures == EXPECTED_FAILURES
    assert snap.queues is None
    assert snap.workers == [
        WorkerLine("w1", "busy", "a0000001:2", 5.0, "default", None),
        WorkerLine("w2", "idle", None, 40.0, "default", None),
        WorkerLine("w3", "offline", None, 900.0, "default", None),
    ]


def test_snapshot_with_redis_refusing_connections(farm_db, database_url, tmp_path):
    closed = f"redis://127.0.0.1:{free_ports(1)[0]}/0"
    snap = snapshot(settings_for(tmp_path, database_url, closed), now=NOW)
    assert (snap.farm_running, snap.notes) == (False, [FARM_DOWN])
    assert job_rows(snap) == EXPECTED_JOBS


def beat(r, name: str, *, age: float, **fields) -> None:
    """A worker's heartbeat as if written `age` seconds before the test's NOW (its TTL runs down)."""
    sealed = Sealed.seal(Heartbeat(name=name, pid=1, ttl=30.0, **fields), node=name, seq=1, key="k")
    presence.beat(r, name, sealed.to_json(), ttl=30)
    r.pexpire(f"farm:hb:{name}", int((30 - age) * 1000))


def test_snapshot_with_the_farm_up(farm_db, database_url, redis_url, tmp_path):
    """Live heartbeats override the database; a known worker without one is missing; queue
    depths come from the workers' RQ queues."""
    r = redis_lib.Redis.from_url(redis_url)
    beat(r, "w1", state="busy", task="a0000001:2", pool="gpu", age=1)
    order = TaskOrder(attempt_id=99, attempt=2, task_id=4, task_index=3, node="w1", job_id="a0000001",
                      name="shot", renderer="null", scene_key=f"scenes/{'0' * 64}.toml", scene_sha256="0" * 64,
                      frames=(7,), width=64, height=36, timeout=60.0)
    enqueue_attempts(r, [(order, order.to_json(), "n00000001-99", 60)])
    with Dashboard(settings_for(tmp_path, database_url, redis_url)) as dashboard:
        snap = dashboard.snapshot(now=NOW)
        assert (snap.farm_running, snap.manager_running, snap.notes) == (True, False, [MANAGER_DOWN])
        r.set(keys.MANAGER_LEADER, "test-manager", ex=30)
        snap = dashboard.snapshot(now=NOW)
    assert (snap.farm_running, snap.manager_running, snap.notes) == (True, True, [])
    assert snap.queues == {"w1": 1, "w2": 0}
    assert snap.workers == [
        WorkerLine("w1", "busy", "a0000001:2", pytest.approx(1.0, abs=0.5), "gpu", 1),  # as Redis counts it
        WorkerLine("w2", "missing", None, 40.0, "default", 0),
        WorkerLine("w3", "offline", None, 900.0, "default", None),
    ]
    assert job_rows(snap) == EXPECTED_JOBS
    assert snap.failures == EXPECTED_FAILURES
    r.close()


def test_tasks_of_a_job(farm_db, database_url, tmp_path):
    with Dashboard(settings_for(tmp_path, database_url)) as dashboard:
        rows = dashboard.tasks("a00")
        failed = dashboard.tasks("a0000001", state="pending")
    assert [(t.id, t.frames, t.state, t.worker, len(t.attempts)) for t in rows] == [
        ("a0000001:0", "1,2", "done", "w1", 1),
        ("a0000001:1", "3,4", "done", "w1", 1),
        ("a0000001:2", "5,6", "running", "w1", 1),
        ("a0000001:3", "7,8", "pending", "w2", 1),
        ("a0000001:4", "9,10", "pending", "w2", 1),
    ]
    assert [t.index for t in failed] == [3, 4]
    assert first_line(failed[1].error) == "command exited with status 3: boom"


def test_no_database_yet_and_an_empty_one(tmp_path):
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    snap = snapshot(settings, now=NOW)
    assert (snap.jobs, snap.workers, snap.notes) == ([], [], [FARM_DOWN, NO_DATABASE])

    make_engine(settings.database_url).dispose()  # the file exists, with no tables
    (tmp_path / "state" / "farm.db").touch()
    snap = snapshot(settings, now=NOW)
    assert snap.jobs == [] and "no renderfarm tables" in snap.notes[-1]


def test_unreachable_database_is_one_error(tmp_path):
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_ports(1)[0]}/farm"
    with pytest.raises(DatabaseError, match=r"database postgresql\+psycopg://nobody@127.0.0.1:\d+/farm: cannot be read"):
        snapshot(settings_for(tmp_path, url), now=NOW)


def test_first_line():
    assert first_line("\n\n  exited 3  \nmore") == "exited 3"
    assert first_line(None) == first_line("  \n") == "(no error message)"


def test_worker_rows_follow_the_running_attempts_not_a_stale_heartbeat(farm_db, database_url, redis_url, tmp_path):
    """A heartbeat is up to a third of its TTL old: w1's still says idle though the database has it
    running a0000001:2, and w2's still says busy on a task that has ended. The rows, and the
    header's busy count, follow the running attempts read with the job rows."""
    r = redis_lib.Redis.from_url(redis_url)
    beat(r, "w1", state="idle", age=8)
    beat(r, "w2", state="busy", task="a0000001:4", age=8)
    beat(r, "w4", state="stopping", age=1)
    snap = snapshot(settings_for(tmp_path, database_url, redis_url), now=NOW)
    r.close()
    assert [(w.name, w.state, w.current_task) for w in snap.workers] == [
        ("w1", "busy", "a0000001:2"),
        ("w2", "idle", None),
        ("w4", "stopping", None),  # a worker on its way out says so, whatever it runs
        ("w3", "offline", None),
    ]
    running = {j.id for j in snap.jobs if j.state == "running"}
    assert {w.current_task.split(":")[0] for w in snap.workers if w.state == "busy"} == running
