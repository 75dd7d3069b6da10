"""The database on SQLite and PostgreSQL: migrations, the task state machine, status views,
SQLite's writer locking and WAL reads, and a 100,000-task job."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import inspect, select, text

from renderfarm import lifecycle
from renderfarm.db import current_revision, head_revision, make_engine, session_scope, upgrade
from renderfarm.errors import NotFoundError
from renderfarm.models import Attempt, Job, Task, Worker
from renderfarm.planning import plan_tasks
from renderfarm.status import SchemaMissing, job_status, list_tasks, resolve_job

TABLES = {"alembic_version", "attempts", "idle_power", "jobs", "nodes", "notifications", "outputs", "purges",
          "tasks", "workers"}
SHA = "ab" * 32


@pytest.fixture()
def engine(database_url):
    """The manager's writer engine on a migrated database."""
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    yield engine
    engine.dispose()


def new_job(job_id: str = "job00001", frames: str = "1-10", chunk: int = 4, *, owner: str = "alice",
            priority: int = 50, max_attempts: int = 3, submitted_at: float = 1000.0):
    plans = plan_tasks(frames, chunk, 100_000)
    job = Job(
        id=job_id, name="orbit", owner=owner, renderer="builtin", scene_name="orbit.toml",
        scene_key=f"scenes/{SHA}.toml", scene_sha256=SHA, frames=frames,
        frame_count=sum(len(p.frames) for p in plans), chunk=chunk, priority=priority,
        width=64, height=48, max_attempts=max_attempts, submitted_at=submitted_at,
    )
    return job, plans


def create(engine, *args, **kwargs) -> str:
    job, plans = new_job(*args, **kwargs)
    with session_scope(engine) as s:
        lifecycle.create_job(s, job, plans)
    return job.id


def task_at(s, job_id: str, index: int) -> Task:
    return s.scalars(select(Task).where(Task.job_id == job_id, Task.index == index)).one()


# Each step is one manager transaction, as the manager applies one event batch.

def queue(engine, job_id: str, index: int, worker: str, now: float) -> int:
    with session_scope(engine) as s:
        return lifecycle.queue_attempt(s, task_at(s, job_id, index), worker, now).id


def start(engine, attempt_id: int, now: float) -> bool:
    with session_scope(engine) as s:
        return lifecycle.start_attempt(s, s.get(Attempt, attempt_id), now)


def progress(engine, attempt_id: int, value: float) -> None:
    with session_scope(engine) as s:
        lifecycle.note_progress(s, s.get(Attempt, attempt_id), value)


def complete(engine, attempt_id: int, now: float, log_key: str | None = None) -> None:
    with session_scope(engine) as s:
        lifecycle.complete_attempt(s, s.get(Attempt, attempt_id), now, log_key)


def fail(engine, attempt_id: int, now: float, error: str = "renderer exited 1") -> None:
    with session_scope(engine) as s:
        attempt = s.get(Attempt, attempt_id)
        job = s.get(Job, attempt.job_id)
        lifecycle.fail_attempt(s, attempt, now, error, f"logs/{attempt_id}", job.max_attempts)


def lose(engine, attempt_id: int, now: float, why: str = "worker vanished") -> None:
    with session_scope(engine) as s:
        lifecycle.lose_attempt(s, s.get(Attempt, attempt_id), now, why)


def refresh(engine, job_id: str, now: float) -> None:
    with session_scope(engine) as s:
        lifecycle.refresh_job(s, s.get(Job, job_id), now)


def see(engine, name: str, now: float, *, started_at: float | None = None, **info) -> None:
    """The manager seeing a heartbeat of `name` at `now` (a worker says how long it has been up)."""
    from renderfarm.wire import Heartbeat

    beat = Heartbeat(name=name, pid=info.pop("pid", 1), uptime=now - started_at if started_at else 0.0, **info)
    with session_scope(engine) as s:
        lifecycle.see_worker(s, beat, now)


def snapshot(engine, job_id: str):
    """(job state, [(task state, attempts)], [(task index, attempt number, worker, attempt state)]),
    read back in a fresh transaction."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        tasks = s.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.index)).all()
        attempts = s.execute(
            select(Task.index, Attempt.number, Attempt.worker, Attempt.state)
            .join(Task, Task.id == Attempt.task_id)
            .where(Attempt.job_id == job_id)
            .order_by(Task.index, Attempt.number)
        ).all()
        return job.state, [(t.state, t.attempts) for t in tasks], [tuple(a) for a in attempts]


def worker_row(engine, name: str) -> tuple:
    with session_scope(engine) as s:
        w = s.get(Worker, name)
        return w.state, w.current_task


# --- migrations -------------------------------------------------------------------------------

def test_upgrade_creates_schema_and_is_idempotent(database_url):
    engine = make_engine(database_url, writer=True)
    try:
        assert current_revision(engine) is None
        assert head_revision() == "0019"
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) == TABLES
        create(engine)
        upgrade(engine)  # the manager upgrades at every start: a second run changes nothing
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) == TABLES
        assert snapshot(engine, "job00001")[0] == "queued"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0019"]
    finally:
        engine.dispose()


def test_migrations_match_models(engine):
    """A model changed without a migration shows up here as a difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == []


# --- the state machine ------------------------------------------------------------------------

def test_job_runs_to_done(engine):
    see(engine, "w1", 999.0, host="node1", pid=11)
    job_id = create(engine, owner="alice")
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert (job.owner, job.state, job.task_count, job.frame_count) == ("alice", "queued", 3, 10)
        rows = s.execute(
            select(Task.index, Task.frames, Task.first_frame, Task.frame_count, Task.state, Task.attempts)
            .where(Task.job_id == job_id).order_by(Task.index)
        ).all()
    assert [tuple(r) for r in rows] == [
        (0, "1-4", 1, 4, "pending", 0),
        (1, "5-8", 5, 4, "pending", 0),
        (2, "9,10", 9, 2, "pending", 0),
    ]

    t = 1000.0
    for index in range(3):
        attempt_id = queue(engine, job_id, index, "w1", t)
        assert snapshot(engine, job_id)[1][index] == ("queued", 1)
        assert start(engine, attempt_id, t + 1)
        assert snapshot(engine, job_id)[0] == "running"
        assert snapshot(engine, job_id)[1][index] == ("running", 1)
        assert worker_row(engine, "w1") == ("busy", f"{job_id}:{index}")
        complete(engine, attempt_id, t + 2, log_key=f"logs/{index}")
        assert worker_row(engine, "w1") == ("idle", None)
        refresh(engine, job_id, t + 3)
        assert snapshot(engine, job_id)[0] == ("done" if index == 2 else "running")
        t += 10

    assert snapshot(engine, job_id) == (
        "done",
        [("done", 1)] * 3,
        [(0, 1, "w1", "done"), (1, 1, "w1", "done"), (2, 1, "w1", "done")],
    )
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert (job.started_at, job.finished_at, job.error) == (1001.0, 1023.0, None)
        task = task_at(s, job_id, 1)
        assert (task.worker, task.progress, task.started_at, task.finished_at) == ("w1", 1.0, 1011.0, 1012.0)
        attempt = s.scalars(select(Attempt).where(Attempt.task_id == task.id)).one()
        assert (attempt.queued_at, attempt.started_at, attempt.finished_at, attempt.log_key) == (
            1010.0, 1011.0, 1012.0, "logs/1")
    refresh(engine, job_id, 2000.0)  # a finished job stays as it finished
    with session_scope(engine) as s:
        assert (s.get(Job, job_id).state, s.get(Job, job_id).finished_at) == ("done", 1023.0)


def test_failing_task_is_retried_then_fails_the_job(engine):
    job_id = create(engine, "job00002", "1-2", 1, max_attempts=3)
    done = queue(engine, job_id, 0, "w1", 1.0)
    start(engine, done, 2.0)
    complete(engine, done, 3.0)

    for number in (1, 2, 3):
        attempt_id = queue(engine, job_id, 1, "w2", 10.0 * number)
        assert start(engine, attempt_id, 10.0 * number + 1)
        fail(engine, attempt_id, 10.0 * number + 2, error=f"boom {number}")
        refresh(engine, job_id, 10.0 * number + 3)
        if number < 3:
            assert snapshot(engine, job_id)[:2] == ("running", [("done", 1), ("pending", number)])
    state, tasks, attempts = snapshot(engine, job_id)
    assert (state, tasks) == ("failed", [("done", 1), ("failed", 3)])
    assert attempts == [(0, 1, "w1", "done"), (1, 1, "w2", "failed"), (1, 2, "w2", "failed"), (1, 3, "w2", "failed")]
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert job.error == "1 task failed: job00002:1"
        assert job.finished_at == 33.0
        task = task_at(s, job_id, 1)
        assert (task.error, task.finished_at, task.progress) == ("boom 3", 32.0, 0.0)
        errors = s.scalars(select(Attempt.error).where(Attempt.task_id == task.id).order_by(Attempt.number)).all()
        assert errors == ["boom 1", "boom 2", "boom 3"]


def test_job_error_names_every_failed_task(engine):
    job_id = create(engine, "job00003", "1-4", 1, max_attempts=1)
    for index in (0, 1, 2, 3):
        attempt_id = queue(engine, job_id, index, "w1", 1.0)
        start(engine, attempt_id, 2.0)
        (fail if index in (1, 3) else complete)(engine, attempt_id, 3.0)
    refresh(engine, job_id, 4.0)
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        assert (job.state, job.error) == ("failed", "2 tasks failed: job00003:1, job00003:3")


def test_lost_attempt_goes_back_to_pending_without_counting_as_a_failure(engine):
    see(engine, "w1", 1.0)
    job_id = create(engine, "job00004", "1", 1, max_attempts=2)
    first = queue(engine, job_id, 0, "w1", 1.0)
    start(engine, first, 2.0)
    progress(engine, first, 0.5)
    lose(engine, first, 3.0, why="worker w1 vanished")
    assert snapshot(engine, job_id) == ("running", [("pending", 1)], [(0, 1, "w1", "lost")])
    with session_scope(engine) as s:
        task = task_at(s, job_id, 0)
        assert task.progress == 0.0
        assert s.get(Attempt, first).error == "worker w1 vanished"

    # A queued attempt that never started is withdrawn (cancelled), not lost.
    second = queue(engine, job_id, 0, "w2", 4.0)
    lose(engine, second, 5.0)
    assert snapshot(engine, job_id)[1:] == ([("pending", 2)], [(0, 1, "w1", "lost"), (0, 2, "w2", "cancelled")])

    # With max_attempts 2, one real failure after two lost attempts still leaves a retry.
    third = queue(engine, job_id, 0, "w3", 6.0)
    start(engine, third, 7.0)
    fail(engine, third, 8.0)
    assert snapshot(engine, job_id)[1] == [("pending", 3)]
    fourth = queue(engine, job_id, 0, "w3", 9.0)
    start(engine, fourth, 10.0)
    fail(engine, fourth, 11.0)
    assert snapshot(engine, job_id)[1] == [("failed", 4)]


def test_stale_events_change_nothing(engine):
    job_id = create(engine, "job00005", "1", 1)
    old = queue(engine, job_id, 0, "w1", 1.0)
    assert start(engine, old, 2.0)
    assert not start(engine, old, 2.5)  # a replayed started event
    lose(engine, old, 3.0)
    new = queue(engine, job_id, 0, "w2", 4.0)
    assert not start(engine, old, 4.5)  # the old worker's late started event
    assert start(engine, new, 5.0)
    progress(engine, new, 0.25)
    expected = ("running", [("running", 2)], [(0, 1, "w1", "lost"), (0, 2, "w2", "running")])
    assert snapshot(engine, job_id) == expected

    # The old attempt's late events leave the newer attempt's task alone.
    progress(engine, old, 0.9)
    complete(engine, old, 6.0)
    assert snapshot(engine, job_id) == expected
    fail(engine, old, 7.0)
    assert snapshot(engine, job_id) == expected
    lose(engine, old, 7.5)
    assert snapshot(engine, job_id) == expected
    with session_scope(engine) as s:
        task = task_at(s, job_id, 0)
        assert (task.progress, task.worker, task.error, task.finished_at) == (0.25, "w2", None, None)

    complete(engine, new, 8.0)
    done = ("running", [("done", 2)], [(0, 1, "w1", "lost"), (0, 2, "w2", "done")])
    assert snapshot(engine, job_id) == done
    # Replays after the task is done change nothing either.
    complete(engine, new, 9.0)
    fail(engine, new, 9.0)
    lose(engine, new, 9.0)
    assert not start(engine, new, 9.0)
    assert snapshot(engine, job_id) == done
    with session_scope(engine) as s:
        task = task_at(s, job_id, 0)
        assert (task.finished_at, task.progress) == (8.0, 1.0)


def test_done_event_of_a_superseded_live_attempt_is_discarded(engine):
    from renderfarm.models import TaskState

    see(engine, "w1", 1.0)
    job_id = create(engine, "job00012", "1", 1)
    old = queue(engine, job_id, 0, "w1", 1.0)
    start(engine, old, 2.0)
    with session_scope(engine) as s:  # the task handed out again while w1 still renders it
        lifecycle.mark_tasks(s, [task_at(s, job_id, 0).id], TaskState.PENDING)
    new = queue(engine, job_id, 0, "w2", 3.0)
    with session_scope(engine) as s:
        assert lifecycle.complete_attempt(s, s.get(Attempt, old), 4.0, "logs/old") is False
    assert snapshot(engine, job_id)[1:] == ([("queued", 2)], [(0, 1, "w1", "cancelled"), (0, 2, "w2", "queued")])
    assert worker_row(engine, "w1") == ("idle", None)
    start(engine, new, 5.0)
    with session_scope(engine) as s:
        assert lifecycle.complete_attempt(s, s.get(Attempt, new), 6.0, "logs/new") is True
    assert snapshot(engine, job_id)[1:] == ([("done", 2)], [(0, 1, "w1", "cancelled"), (0, 2, "w2", "done")])


def test_failed_event_for_an_old_attempt_does_not_fail_the_retry(engine):
    job_id = create(engine, "job00006", "1", 1, max_attempts=1)
    old = queue(engine, job_id, 0, "w1", 1.0)
    start(engine, old, 2.0)
    lose(engine, old, 3.0)
    new = queue(engine, job_id, 0, "w2", 4.0)
    start(engine, new, 5.0)
    fail(engine, old, 6.0)  # with max_attempts 1 a counted failure would fail the task
    assert snapshot(engine, job_id)[1:] == ([("running", 2)], [(0, 1, "w1", "lost"), (0, 2, "w2", "running")])


def test_worker_offline_loses_all_its_live_attempts(engine):
    see(engine, "w1", 1.0)
    see(engine, "w2", 1.0)
    job_id = create(engine, "job00007", "1-4", 1)
    finished = queue(engine, job_id, 0, "w1", 1.0)
    start(engine, finished, 2.0)
    complete(engine, finished, 3.0)
    running = queue(engine, job_id, 1, "w1", 4.0)
    start(engine, running, 5.0)
    prefetched = queue(engine, job_id, 2, "w1", 5.0)
    elsewhere = queue(engine, job_id, 3, "w2", 5.0)
    start(engine, elsewhere, 6.0)
    assert worker_row(engine, "w1") == ("busy", f"{job_id}:1")

    with session_scope(engine) as s:
        lost = lifecycle.worker_offline(s, "w1", 7.0, "worker stopped sending heartbeats")
        assert sorted(a.id for a in lost) == sorted([running, prefetched])
    assert snapshot(engine, job_id) == (
        "running",
        [("done", 1), ("pending", 1), ("pending", 1), ("running", 1)],
        [(0, 1, "w1", "done"), (1, 1, "w1", "lost"), (2, 1, "w1", "cancelled"), (3, 1, "w2", "running")],
    )
    assert worker_row(engine, "w1") == ("offline", None)
    assert worker_row(engine, "w2") == ("busy", f"{job_id}:3")
    with session_scope(engine) as s:
        assert s.get(Attempt, running).error == "worker stopped sending heartbeats"
        assert lifecycle.worker_offline(s, "w1", 8.0, "again") == []
        assert lifecycle.worker_offline(s, "never-seen", 8.0, "bye") == []


def test_see_worker_creates_and_updates(engine):
    see(engine, "node1-0", 105.0, host="node1", pid=4242, pool="gpu", cores=8, version="0.1.0", started_at=100.0)
    with session_scope(engine) as s:
        w = s.get(Worker, "node1-0")
        assert (w.host, w.pid, w.pool, w.cores, w.version, w.state, w.current_task, w.started_at, w.last_seen) == (
            "node1", 4242, "gpu", 8, "0.1.0", "idle", None, 100.0, 105.0)

    see(engine, "node1-0", 110.0, host="node1", pid=4343, pool="gpu", cores=8, version="0.1.1", started_at=108.0)
    with session_scope(engine) as s:
        rows = s.scalars(select(Worker)).all()
        assert [(w.name, w.pid, w.version, w.started_at, w.last_seen) for w in rows] == [
            ("node1-0", 4343, "0.1.1", 108.0, 110.0)]

    see(engine, "node1-0", 115.0, host="node1", pid=4343, state="stopping")
    assert worker_row(engine, "node1-0") == ("stopping", None)
    with session_scope(engine) as s:
        lifecycle.worker_offline(s, "node1-0", 120.0, "worker left")
    assert worker_row(engine, "node1-0") == ("offline", None)
    see(engine, "node1-0", 130.0, host="node1", pid=5000)  # back after a restart
    with session_scope(engine) as s:
        w = s.get(Worker, "node1-0")
        assert (w.state, w.pid, w.pool, w.cores, w.started_at, w.last_seen) == ("idle", 5000, "default", 1, 130.0, 130.0)


# --- status views -----------------------------------------------------------------------------

def test_job_status_counts_and_progress(engine):
    job_id = create(engine, "job00008", "1-10", 4)  # tasks of 4, 4 and 2 frames
    first = queue(engine, job_id, 0, "w1", 1000.0)
    start(engine, first, 1000.0)
    complete(engine, first, 1010.0)
    second = queue(engine, job_id, 1, "w1", 1010.0)
    start(engine, second, 1011.0)
    progress(engine, second, 0.5)
    queue(engine, job_id, 2, "w2", 1012.0)  # queued: counts nothing yet

    with session_scope(engine) as s:
        status = job_status(s, s.get(Job, job_id), now=1030.0)
    assert status.counts == {"waiting": 0, "pending": 0, "queued": 1, "running": 1, "done": 1, "failed": 0,
                             "cancelled": 0, "skipped": 0}
    assert (status.state, status.frames, status.tasks, status.frames_done) == ("running", 10, 3, 4)
    assert status.progress == 0.6  # 4 done frames + half of a 4-frame task, of 10
    assert (status.started_at, status.finished_at, status.elapsed) == (1000.0, None, 30.0)
    assert status.eta == pytest.approx(20.0)
    assert (status.owner, status.frames_spec, status.chunk, status.error) == ("alice", "1-10", 4, None)

    progress(engine, second, 1.7)  # clamped to 1
    with session_scope(engine) as s:
        assert job_status(s, s.get(Job, job_id), now=1030.0).progress == 0.8


def test_job_status_of_finished_and_untouched_jobs(engine):
    job_id = create(engine, "job00009", "1-3", 1)
    with session_scope(engine) as s:
        status = job_status(s, s.get(Job, job_id), now=5000.0)
    assert (status.state, status.progress, status.frames_done, status.elapsed, status.eta) == (
        "queued", 0.0, 0, None, None)
    assert status.counts["pending"] == 3
    for index in range(3):
        attempt_id = queue(engine, job_id, index, "w1", 1000.0 + index)
        start(engine, attempt_id, 1000.0 + index)
        complete(engine, attempt_id, 1001.0 + index)
    refresh(engine, job_id, 1004.0)
    with session_scope(engine) as s:
        status = job_status(s, s.get(Job, job_id), now=5000.0)
    assert (status.state, status.progress, status.frames_done, status.elapsed, status.eta) == (
        "done", 1.0, 3, 4.0, None)
    assert status.to_json()["counts"] == {"waiting": 0, "pending": 0, "queued": 0, "running": 0, "done": 3,
                                           "failed": 0, "cancelled": 0, "skipped": 0}


def test_resolve_job(engine):
    # On the manager's writer engine too: several look-ups in one transaction must not lock
    # SQLite against itself.
    for job_id in ("abc12345", "abc19999", "def00000"):
        create(engine, job_id, "1", 1)
    with session_scope(engine) as s:
        assert resolve_job(s, "abc12345").id == "abc12345"
        assert resolve_job(s, "abc123").id == "abc12345"
        assert resolve_job(s, " DEF0 ").id == "def00000"
        for prefix, message in [
            ("abc1", "job 'abc1': ambiguous prefix (matches abc12345, abc19999)"),
            ("abc", "job 'abc': ambiguous prefix (matches abc12345, abc19999)"),
            ("ffff", "job 'ffff': no such job"),
            ("abc123456", "job 'abc123456': no such job"),
            ("", "job '': not a job id"),
            ("ab%", "job 'ab%': not a job id"),
            ("a_c", "job 'a_c': not a job id"),
        ]:
            with pytest.raises(NotFoundError) as e:
                resolve_job(s, prefix)
            assert str(e.value) == message


def test_resolve_job_names_at_most_five_matches(engine):
    for n in range(7):
        create(engine, f"fee0000{n}", "1", 1)
    with session_scope(engine) as s:
        with pytest.raises(NotFoundError) as e:
            resolve_job(s, "fee")
    assert str(e.value) == (
        "job 'fee': ambiguous prefix (matches fee00000, fee00001, fee00002, fee00003, fee00004...)")


def test_resolve_job_on_an_empty_database(database_url):
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as s, pytest.raises(SchemaMissing, match="no renderfarm tables yet"):
            resolve_job(s, "abc")
    finally:
        engine.dispose()


def test_list_tasks_shows_every_attempt_and_its_worker(engine):
    job_id = create(engine, "job00010", "1-3", 2)  # tasks 1-2 and 3
    first = queue(engine, job_id, 0, "w1", 10.0)
    start(engine, first, 11.0)
    lose(engine, first, 12.0, why="worker w1 vanished")
    second = queue(engine, job_id, 0, "w2", 13.0)
    start(engine, second, 14.0)
    complete(engine, second, 15.0, log_key="logs/job00010/0/2.txt")

    with session_scope(engine) as s:
        rows = list_tasks(s, s.get(Job, job_id))
        pending = list_tasks(s, s.get(Job, job_id), state="pending")
        with pytest.raises(NotFoundError) as e:
            list_tasks(s, s.get(Job, job_id), state="bogus")
    assert str(e.value) == "state: 'bogus' is not one of cancelled, done, failed, pending, queued, running, skipped, waiting"
    assert [r.to_json() for r in rows] == [
        {
            "id": "job00010:0", "index": 0, "frames": "1,2", "state": "done", "worker": "w2", "progress": 1.0,
            "attempts": [
                {"number": 1, "worker": "w1", "state": "lost", "queued_at": 10.0, "started_at": 11.0, "finished_at": 12.0,
                 "error": "worker w1 vanished", "log_key": None},
                {"number": 2, "worker": "w2", "state": "done", "queued_at": 13.0, "started_at": 14.0, "finished_at": 15.0,
                 "error": None, "log_key": "logs/job00010/0/2.txt"},
            ],
            "started_at": 11.0, "finished_at": 15.0, "error": None, "kind": "render", "tile": None,
        },
        {
            "id": "job00010:1", "index": 1, "frames": "3", "state": "pending", "worker": None, "progress": 0.0,
            "attempts": [], "started_at": None, "finished_at": None, "error": None, "kind": "render", "tile": None,
        },
    ]
    assert [r.id for r in pending] == ["job00010:1"]
    # A page of tasks (`farm top`) or a state filter carries the same attempts for its tasks.
    with session_scope(engine) as s:
        first_page = list_tasks(s, s.get(Job, job_id), limit=1)
        done = list_tasks(s, s.get(Job, job_id), state="done")
    assert [r.to_json() for r in first_page] == [r.to_json() for r in done] == [rows[0].to_json()]


# --- SQLite: one writer at a time, readers never wait -----------------------------------------

def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'farm.db'}"


def test_writer_engine_begins_immediate(tmp_path):
    url = sqlite_url(tmp_path)
    writer, reader = make_engine(url, writer=True), make_engine(url)
    upgrade(writer)
    try:
        with writer.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        # A writer's transaction holds the write lock from its first statement, even a read:
        # nobody else may start writing until it ends.
        with session_scope(writer) as s:
            s.scalar(select(Job.id))
            other = sqlite3.connect(tmp_path / "farm.db", timeout=0, isolation_level=None)
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again once the writer committed
        other.execute("ROLLBACK")
        # A reader's transaction is deferred and takes no write lock.
        with session_scope(reader) as s:
            s.scalar(select(Job.id))
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        other.close()
    finally:
        writer.dispose()
        reader.dispose()


def _bump(engine, name: str, pause: float) -> None:
    """One read-modify-write transaction on a worker row's counter."""
    with session_scope(engine) as s:
        worker = s.get(Worker, name)
        count = worker.cores
        time.sleep(pause)  # widen the window between the read and the write
        worker.cores = count + 1


def test_two_writers_in_two_threads_never_see_database_is_locked(tmp_path):
    url = sqlite_url(tmp_path)
    setup = make_engine(url, writer=True)
    upgrade(setup)
    with session_scope(setup) as s:
        s.add(Worker(name="counter", host="", pid=0, cores=0, started_at=0.0, last_seen=0.0))
    setup.dispose()

    errors: list[BaseException] = []
    engines = [make_engine(url, writer=True) for _ in range(2)]
    barrier = threading.Barrier(2)

    def run(engine) -> None:
        try:
            barrier.wait()
            for _ in range(50):
                _bump(engine, "counter", 0.001)
        except BaseException as e:  # reported below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print(f"100 read-modify-write transactions from 2 threads: {time.monotonic() - started:.2f} s")
    assert not errors, errors
    with session_scope(engines[0]) as s:
        assert s.get(Worker, "counter").cores == 100  # no lost update
    for e in engines:
        e.dispose()


def test_deferred_read_then_write_is_what_begin_immediate_prevents(tmp_path):
    """Why the writer engine exists: two deferred transactions that read then write collide at
    once (busy_timeout cannot help), where the writer engine's transactions wait their turn."""
    url = sqlite_url(tmp_path)
    setup = make_engine(url, writer=True)
    upgrade(setup)
    with session_scope(setup) as s:
        s.add(Worker(name="counter", host="", pid=0, cores=0, started_at=0.0, last_seen=0.0))
    setup.dispose()
    reader = make_engine(url)
    try:
        from sqlalchemy.exc import OperationalError

        first, second = reader.connect(), reader.connect()
        first.begin()
        assert first.execute(text("SELECT cores FROM workers")).scalar() == 0
        with second.begin():
            second.execute(text("UPDATE workers SET cores = cores + 1"))
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            first.execute(text("UPDATE workers SET cores = cores + 1"))
        assert time.monotonic() - started < 5
        first.rollback()
        first.close()
        second.close()
    finally:
        reader.dispose()


def test_reader_reads_while_a_writer_transaction_is_open(tmp_path):
    url = sqlite_url(tmp_path)
    writer, reader = make_engine(url, writer=True), make_engine(url)
    upgrade(writer)
    create(writer, "job00011", "1-4", 1)
    try:
        with session_scope(writer) as w:
            job = w.get(Job, "job00011")
            job.priority = 99
            w.flush()  # written inside the open transaction, not committed
            started = time.monotonic()
            with session_scope(reader) as r:
                assert r.get(Job, "job00011").priority == 50
                assert job_status(r, r.get(Job, "job00011"), now=0.0).counts["pending"] == 4
            assert time.monotonic() - started < 1  # it did not wait for the writer
        with session_scope(reader) as r:
            assert r.get(Job, "job00011").priority == 99
    finally:
        writer.dispose()
        reader.dispose()


# --- bulk -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_create_job_of_100k_tasks(database_url, engine):
    started = time.monotonic()
    job, plans = new_job("bulk0001", "1-100000", 1)
    planned = time.monotonic()
    with session_scope(engine) as s:
        lifecycle.create_job(s, job, plans)
    committed = time.monotonic()
    print(f"{database_url.split(':')[0]}: planned 100,000 tasks in {planned - started:.2f} s, "
          f"inserted and committed in {committed - planned:.2f} s")
    assert committed - planned < 20
    with session_scope(engine) as s:
        assert s.get(Job, "bulk0001").task_count == 100_000
        count, low, high = s.execute(
            select(text("count(*)"), text("min(first_frame)"), text("max(first_frame)"))
            .select_from(Task).where(Task.job_id == "bulk0001")
        ).one()
        assert (count, low, high) == (100_000, 1, 100_000)
        assert task_at(s, "bulk0001", 99_999).frames == "100000"


def test_a_batchs_done_events_are_promoted_together_and_a_cancelled_tasks_frames_removed(engine, tmp_path):
    import hashlib
    import io

    from PIL import Image

    from renderfarm.config import Settings
    from renderfarm.manager.intake import Batch, apply_event, promote_ahead
    from renderfarm.manager.verifier import Verifier
    from renderfarm.storage.files import FileStorage
    from renderfarm.storage.keys import attempt_prefix
    from renderfarm.wire import Done, Output, Usage

    settings = Settings(state_dir=tmp_path)
    storage = FileStorage(tmp_path / "store", "file://" + str(tmp_path / "store"))
    job_id = create(engine, "job00030", frames="1-3", chunk=1)
    attempts = [queue(engine, job_id, i, f"w{i}", 10.0) for i in range(3)]
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(buf, format="PNG")
    data = buf.getvalue()

    def done(i: int) -> Done:
        key = attempt_prefix(f"w{i}", job_id, i, 1) + f"orbit.{i + 1:04d}.png"
        etag = storage.put_bytes(key, data) or None
        output = Output(frame=i + 1, sha256=hashlib.sha256(data).hexdigest(), size=len(data), etag=etag)
        return Done(worker=f"w{i}", attempt_id=attempts[i], outputs=(output,), usage=Usage(wall=1.0))

    entries = [done(i) for i in range(3)] + [done(0)]  # the last: a duplicate of the first
    finals = [f"jobs/{job_id}/frames/orbit.{f:04d}.png" for f in (1, 2, 3)]
    with session_scope(engine) as s:
        batch = Batch()
        promote_ahead(s, Verifier(storage), entries, batch)
        # Every frame's copy starts before any event is applied; they finish side by side.
        assert sorted(batch.promoted) == sorted(attempts)
        assert all(batch.promotion(a).error is None for a in attempts)
        assert all(storage.head(key) is not None for key in finals)
        for event in entries[:2]:
            apply_event(s, settings, storage, event, batch, 20.0)
        # A cancel earlier in the same batch than the third event takes its task away.
        lifecycle.cancel_job(s, s.get(Job, job_id), 20.0)
        for event in entries[2:]:
            apply_event(s, settings, storage, event, batch, 20.0)
        assert batch.promoted == {}
    assert batch.delete_keys.count(finals[2]) == 1 and finals[0] not in batch.delete_keys
    assert finals[1] not in batch.delete_keys
    states = snapshot(engine, job_id)[1]
    assert states == [("done", 1), ("done", 1), ("cancelled", 1)]


def test_ids_of_deleted_tasks_and_attempts_are_never_used_again(engine):
    """`farm delete` removes a job's rows: a new task or attempt must not get a deleted one's id,
    or a late event, lease or RQ job of the old one would name the new one (SQLite reuses the
    highest rowid without AUTOINCREMENT; migration 0014)."""
    from sqlalchemy import delete, func, select

    old = create(engine, "job0000a", "1-3", 1)
    attempt = queue(engine, old, 2, "w1", 10.0)
    with session_scope(engine) as s:
        top_task = s.scalar(select(func.max(Task.id)))
        s.execute(delete(Attempt).where(Attempt.job_id == old))
        s.execute(delete(Task).where(Task.job_id == old))
        s.execute(delete(Job).where(Job.id == old))
    new = create(engine, "job0000b", "1-3", 1)
    assert queue(engine, new, 0, "w1", 20.0) > attempt
    with session_scope(engine) as s:
        assert s.scalar(select(func.min(Task.id)).where(Task.job_id == new)) > top_task
