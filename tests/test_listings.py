"""The listings (`farm status`, `jobs`, `tasks`, `download --tiles`) on a real database built
through the lifecycle, SQLite and PostgreSQL: a job waiting on a failed --after job says it is
blocked and by what, and a tiled job's tasks say which tile of the frame each renders."""

from __future__ import annotations

import json

import pytest
from conftest import farm_env, run_farm
from renderfarm_cli.top_view import task_cells
from sqlalchemy import select

from renderfarm import lifecycle
from renderfarm.config import load_settings
from renderfarm.db import make_engine, session_scope, upgrade
from renderfarm.jobstatus import summarize
from renderfarm.models import Job, Task
from renderfarm.planning import plan_tasks
from renderfarm.quickread import QuickReader
from renderfarm.status import job_status, list_tasks

SHA = "ab" * 32
NOW = 1_000_000.0


def add_job(engine, job_id: str, frames: str = "1", *, after: str | None = None, tiles: str | None = None,
            tile_count: int = 0, keep_tiles: bool = False, submitted_at: float = NOW) -> None:
    plans = plan_tasks(frames, 1, 100_000, tile_count)
    job = Job(id=job_id, name=job_id[:4], owner="artist", renderer="builtin", scene_name="s.toml",
              scene_key=f"scenes/{SHA}.toml", scene_sha256=SHA, frames=frames, frame_count=len(frames.split(",")),
              chunk=1, width=64, height=48, submitted_at=submitted_at, after=after, tiles=tiles,
              tile_count=tile_count, keep_tiles=keep_tiles)
    with session_scope(engine) as s:
        lifecycle.create_job(s, job, plans)


def fail_job(engine, job_id: str) -> None:
    """Its only task fails once, with one attempt allowed: the job fails."""
    with session_scope(engine) as s:
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        attempt = lifecycle.queue_attempt(s, task, "w1", NOW + 1)
        lifecycle.start_attempt(s, attempt, NOW + 2)
        lifecycle.fail_attempt(s, attempt, NOW + 3, "exit 3", None, 1)
        lifecycle.refresh_job(s, s.get(Job, job_id), NOW + 3)


@pytest.fixture()
def engine(database_url):
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    yield engine
    engine.dispose()


def cli_env(tmp_path, database_url: str) -> dict[str, str]:
    return farm_env(tmp_path / "state", FARM_DATABASE_URL=database_url,
                    FARM_STORAGE_URL=f"file://{tmp_path / 'store'}")


def statuses(engine, database_url: str, tmp_path, job_id: str):
    """The job's status by the ORM and by the CLI's plain-SQL reader (they must agree)."""
    with session_scope(engine) as s:
        orm = job_status(s, s.get(Job, job_id), now=NOW + 10)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_DATABASE_URL": database_url}, cwd=tmp_path)
    reader = QuickReader.open(settings)
    try:
        assert reader.job_status(job_id, now=NOW + 10) == orm
    finally:
        reader.close()
    return orm


def test_a_job_after_a_failed_or_cancelled_one_says_it_is_blocked(engine, database_url, tmp_path):
    add_job(engine, "aaaa0001")
    add_job(engine, "bbbb0002", after="aaaa0001", submitted_at=NOW + 1)
    waiting = statuses(engine, database_url, tmp_path, "bbbb0002")
    assert (waiting.state, waiting.after, waiting.after_state, waiting.waiting_on, waiting.blocked) == (
        "queued", "aaaa0001", "queued", "aaaa0001", None)

    fail_job(engine, "aaaa0001")
    blocked = statuses(engine, database_url, tmp_path, "bbbb0002")
    assert (blocked.state, blocked.after_state, blocked.waiting_on, blocked.blocked) == (
        "queued", "failed", "aaaa0001", "aaaa0001 failed")
    assert blocked.counts["pending"] == 1

    env = cli_env(tmp_path, database_url)
    doc = json.loads(run_farm("status", "bbbb", "--json", env=env).stdout)
    assert (doc["after"], doc["waiting_on"], doc["blocked"]) == ("aaaa0001", "aaaa0001", "aaaa0001 failed")
    listed = {j["id"]: j for j in json.loads(run_farm("jobs", "--json", env=env).stdout)}
    assert listed["bbbb0002"]["blocked"] == "aaaa0001 failed" and listed["aaaa0001"]["blocked"] is None
    farm = json.loads(run_farm("status", "--json", env=env).stdout)
    assert [(j["id"], j["blocked"]) for j in farm["active"]] == [("bbbb0002", "aaaa0001 failed")]

    shown = run_farm("status", "bbbb0002", env=env).stdout
    assert "blocked: aaaa0001 failed; this job starts once aaaa0001 is retried (`farm retry aaaa0001`)" in shown
    table = run_farm("jobs", env=env).stdout
    assert [line.split()[3] for line in table.splitlines()[1:3]] == ["blocked", "failed"]
    assert "job bbbb0002 blocked: aaaa0001 failed" in table
    assert "bbbb0002 bbbb: 0% of 1 frame, blocked, ETA - (blocked: aaaa0001 failed" in run_farm(
        "status", env=env).stdout

    # Cancelled blocks it the same way; a job waiting on a running one is only waiting.
    add_job(engine, "cccc0003", submitted_at=NOW + 2)
    add_job(engine, "dddd0004", after="cccc0003", submitted_at=NOW + 3)
    assert "waiting on job cccc0003 (queued)" in run_farm("status", "dddd", env=env).stdout
    assert run_farm("jobs", env=env).stdout.splitlines()[1].split()[3] == "waiting"
    with session_scope(engine) as s:
        lifecycle.cancel_job(s, s.get(Job, "cccc0003"), NOW + 4)
    assert statuses(engine, database_url, tmp_path, "dddd0004").blocked == "cccc0003 cancelled"


def test_what_an_after_job_means_on_exact_inputs():
    row = {"id": "bbbb0002", "name": "b", "owner": "o", "state": "queued", "priority": 50, "pool": "default",
           "renderer": "builtin", "frames": "1", "frame_count": 1, "task_count": 1, "chunk": 1, "width": 8,
           "height": 8, "submitted_at": 0.0, "started_at": None, "finished_at": None, "error": None,
           "after": "aaaa0001"}
    tasks = [("pending", 1, 0, 1.0, 0.0)]

    def after(state: str, parent: str | None) -> tuple:
        s = summarize(dict(row, state=state), tasks, {}, now=10.0, after_state=parent)
        return s.after_state, s.waiting_on, s.blocked

    assert after("queued", "running") == ("running", "aaaa0001", None)
    assert after("queued", "suspended") == ("suspended", "aaaa0001", None)  # a wrangler's pause, not a dead end
    assert after("queued", "done") == ("done", None, None)
    assert after("queued", "failed") == ("failed", "aaaa0001", "aaaa0001 failed")
    assert after("queued", None) == ("missing", "aaaa0001", "aaaa0001 no longer exists")
    # A parent retried after this job started keeps it from starting more tasks; a finished job waits for nothing.
    assert after("running", "running") == ("running", "aaaa0001", None)
    assert after("cancelled", "failed") == ("failed", None, None)
    assert summarize(dict(row, after=None), tasks, {}, now=10.0).after is None


def test_a_tiled_jobs_tasks_say_which_tile_they_render(engine, database_url, tmp_path):
    # 64x48 in 2x2 tiles of 32x24, two frames: four tiles and an assembly each.
    add_job(engine, "eeee0005", "24,25", tiles="2x2", tile_count=4)
    with session_scope(engine) as s:
        rows = list_tasks(s, s.get(Job, "eeee0005"))
    assert [(t.index, t.frames, t.kind, t.what(), t.region_text()) for t in rows[:5]] == [
        (0, "24", "tile", "tile 0,0", "x=0 y=0 32x24"),
        (1, "24", "tile", "tile 1,0", "x=32 y=0 32x24"),
        (2, "24", "tile", "tile 0,1", "x=0 y=24 32x24"),
        (3, "24", "tile", "tile 1,1", "x=32 y=24 32x24"),
        (4, "24", "assemble", "assembly", "x=0 y=0 64x48"),
    ]
    # `farm top`'s task screen says it too.
    assert [task_cells(t, NOW)["frames"] for t in rows[3:6]] == ["24 tile 1,1", "24 assembly", "25 tile 0,0"]
    env = cli_env(tmp_path, database_url)
    doc = json.loads(run_farm("tasks", "eeee", "--json", env=env).stdout)
    assert {k: doc[3][k] for k in ("kind", "tile", "column", "row", "region")} == {
        "kind": "tile", "tile": 3, "column": 1, "row": 1, "region": {"x": 32, "y": 24, "width": 32, "height": 24}}
    assert {k: doc[9].get(k) for k in ("kind", "tile", "column", "region")} == {
        "kind": "assemble", "tile": None, "column": None, "region": {"x": 0, "y": 0, "width": 64, "height": 48}}
    table = run_farm("tasks", "eeee", env=env).stdout.splitlines()
    assert table[0].split()[:5] == ["TASK", "KIND", "FRAMES", "REGION", "STATE"]
    assert " ".join(table[2].split()[:8]) == "eeee0005:1 tile 1,0 24 x=32 y=0 32x24 pending"
    assert " ".join(table[5].split()[:7]) == "eeee0005:4 assembly 24 x=0 y=0 64x48 waiting"

    # A job rendered whole keeps its listing as it was.
    add_job(engine, "ffff0006", "1,2")
    plain = run_farm("tasks", "ffff", env=env).stdout.splitlines()
    assert plain[0].split() == ["TASK", "FRAMES", "STATE", "WORKER", "ATTEMPTS", "TIME", "ERROR"]
    assert "column" not in json.loads(run_farm("tasks", "ffff", "--json", env=env).stdout)[0]


def test_download_tiles_of_a_job_without_them_is_one_line(engine, database_url, tmp_path):
    add_job(engine, "ffff0006", "1,2")
    add_job(engine, "eeee0005", "24", tiles="2x2", tile_count=4)
    env = cli_env(tmp_path, database_url)
    for job, message in (
        ("ffff0006", "farm: tiles: job ffff0006 is not tiled (it was submitted without --tiles or --tile-size)"),
        ("eeee0005", ("farm: tiles: job eeee0005 has no tiles in storage: its tiles are deleted once each frame "
                      "is assembled (submit with --keep-tiles to keep them)")),
    ):
        proc = run_farm("download", job, str(tmp_path / "out"), "--tiles", env=env, check=False)
        assert (proc.returncode, proc.stderr.strip().splitlines()[-1]) == (1, message)
        assert "Traceback" not in proc.stderr


def test_a_job_rendered_where_power_has_no_price_shows_no_cost_at_all():
    row = {"id": "bbbb0002", "name": "b", "owner": "o", "state": "done", "priority": 50, "pool": "default",
           "renderer": "builtin", "frames": "1", "frame_count": 1, "task_count": 1, "chunk": 1, "width": 8,
           "height": 8, "submitted_at": 0.0, "started_at": 1.0, "finished_at": 2.0, "error": None, "after": None}
    done = summarize(row, [("done", 1, 1, 1.0, 1.0)], {"": 0}, now=10.0)
    assert (done.cost, done.projected_cost) == ({}, {})  # not {"": 0.0}
    priced = summarize(row, [("done", 1, 1, 1.0, 1.0)], {"": 0, "CNY": 4 * 10**11}, now=10.0)
    assert priced.cost == {"CNY": 0.4}
