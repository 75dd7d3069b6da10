"""`farm top` against a real manager (in a thread, on a private Valkey and SQLite) with no
workers: keys typed at once as a terminal delivers them reach the priority dialog, the selection
stays on its job when the list re-sorts or loses a row, and the job table at 80 columns shows
the cost and gives the name the room."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
import redis as redis_lib
from conftest import wait_for
from renderfarm_cli.top import farm_top
from rich.console import Console
from sqlalchemy import select
from textual import events

from renderfarm import keys, lifecycle
from renderfarm.config import load_settings
from renderfarm.dashboard import Snapshot
from renderfarm.db import make_engine, session_scope, upgrade
from renderfarm.manager import Manager
from renderfarm.models import Attempt, Job, Task
from renderfarm.planning import plan_tasks
from renderfarm.sites import Site, account

SIZE = (80, 24)
SHA = "ef" * 32
JOBS = [("a0000001", "lighting_sq010_sh0010_v003"), ("b0000002", "comp_sq010_sh0020"), ("c0000003", "fx_rain")]
WAIT = 30.0  # seconds for what the manager (a thread of this process) and the app must do, under load
CHARACTERS = {"enter": "\r", "backspace": "\x08", "escape": "\x1b"}


@pytest.fixture()
def managed(tmp_path, redis_url):
    """Three queued jobs (in render order a, b, c) and a real manager applying the app's verbs."""
    settings = load_settings({
        "FARM_STATE_DIR": str(tmp_path / "state"), "FARM_REDIS_URL": redis_url,
        "FARM_DATABASE_URL": f"sqlite:///{tmp_path / 'farm.db'}", "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}",
    }, cwd=tmp_path)
    engine = make_engine(settings.database_url, writer=True)
    upgrade(engine)
    for i, (job_id, name) in enumerate(JOBS):
        job = Job(id=job_id, name=name, owner="wrangler01", renderer="builtin", scene_name="s.toml",
                  scene_key=f"scenes/{SHA}.toml", scene_sha256=SHA, frames="1-4", frame_count=4, chunk=1,
                  width=64, height=48, submitted_at=1000.0 + i)
        with session_scope(engine) as s:
            lifecycle.create_job(s, job, plan_tasks("1-4", 1, 100))
    stop = threading.Event()
    thread = threading.Thread(target=Manager(settings).run, args=(stop,), daemon=True)
    thread.start()
    r = redis_lib.Redis.from_url(redis_url)
    wait_for(lambda: r.exists(keys.MANAGER_LEADER), 20, "the manager to lead")
    r.close()
    yield settings, engine
    stop.set()
    thread.join(20)
    engine.dispose()
    assert not thread.is_alive()


def priority(engine, job_id: str) -> int:
    with session_scope(engine) as s:
        return s.get(Job, job_id).priority


def burst(app, *keys_: str) -> None:
    """Keys as a terminal hands over a quick typist's keys: all queued before any is handled."""
    for key in keys_:
        app.post_message(events.Key(key, CHARACTERS.get(key, key)))


async def until(pilot, check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def screen_lines(app) -> list[str]:
    """The screen as text, as a terminal of the app's size shows it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()


def test_keys_typed_at_once_after_p_all_reach_the_priority_dialog(managed):
    settings, engine = managed

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            jobs = app.farm.query_one("#jobs")
            await until(pilot, lambda: jobs.ids == [j for j, _ in JOBS], 10, "the three job rows")
            await pilot.press("down")
            assert jobs.selected_id() == "b0000002"

            # p, then 7 5 Enter before the dialog is even drawn: the digits replace 50.
            burst(app, "p", "7", "5", "enter")
            await until(pilot, lambda: priority(engine, "b0000002") == 75, 10, "priority 75")
            # The list re-sorts (75 renders first); the cursor goes with the job.
            await until(pilot, lambda: jobs.ids[0] == "b0000002", 5, "b at the top")
            assert jobs.selected_id() == "b0000002"

            # Backspaces at once too: the field is emptied, then 8 typed.
            burst(app, "p", "backspace", "backspace", "backspace", "8", "enter")
            await until(pilot, lambda: priority(engine, "b0000002") == 8, 10, "priority 8")
            await until(pilot, lambda: jobs.ids[-1] == "b0000002", 5, "b at the bottom")
            assert jobs.selected_id() == "b0000002"

            # Right after that re-sort, p asks about the job under the cursor.
            burst(app, "p")
            await until(pilot, lambda: app.screen.query("#priority"), 5, "the dialog")
            assert "Priority of job b0000002" in "\n".join(screen_lines(app))
            # An emptied field says what is wrong and keeps the dialog open.
            burst(app, "backspace", "enter")
            await pilot.pause(0.3)
            assert "priority: '' is not a whole number" in "\n".join(screen_lines(app))
            burst(app, "escape")
            await until(pilot, lambda: app.screen is app.farm, 5, "the dialog to close")
            assert [priority(engine, j) for j, _ in JOBS] == [50, 8, 50]
            await pilot.press("q")

    asyncio.run(drive())


def test_the_job_table_at_80_columns_shows_cost_and_gives_the_name_room(managed):
    settings, engine = managed
    with session_scope(engine) as s:  # one task of a done on a site with a price: it cost something
        task = s.scalars(select(Task).where(Task.job_id == "a0000001", Task.index == 0)).one()
        attempt = lifecycle.queue_attempt(s, task, "w1", 1100.0)
        lifecycle.start_attempt(s, attempt, 1101.0)
        lifecycle.complete_attempt(s, attempt, 1108.2, None)
        site = Site("karamay", price_micros=400_000, currency="CNY", carbon_mg_per_kwh=560_000)
        lifecycle.record_usage(s, s.get(Attempt, attempt.id), "karamay",
                               account(site, wall_seconds=7.2, cpu_seconds=7.0), wall=7.2, cpu=7.0)
        lifecycle.refresh_job(s, s.get(Job, "a0000001"), 1108.2)

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            jobs = app.farm.query_one("#jobs")
            await until(pilot, lambda: len(jobs.ids) == 3, 10, "the job rows")
            lines = screen_lines(app)
            assert all(len(line) <= 80 for line in lines)
            header = next(line for line in lines if line.startswith(" JOB "))
            assert header.split() == ["JOB", "NAME", "OWNER", "STATE", "PRI", "PROGRESS", "FRAMES", "ETA", "COST"]
            row = next(line for line in lines if line.startswith(" a0000001 "))
            # The name gets 11 characters, the owner 6.
            assert row.startswith(" a0000001 lighting_s… wrang… running   50 ")
            # 100 W for 7.2 s is 200 micro-kWh: 0.00008 CNY at 0.4 CNY per kWh, shown in the
            # currency's units with farm status's 4 decimals (it used to read 8e-05), and with
            # the currency as `farm report` shows it.
            assert row.split()[-2:] == ["0.0001", "CNY"]
            assert jobs.cell("a0000001", "cost").strip() == "0.0001 CNY"
            assert jobs.cell("c0000003", "cost") == "-"  # no price, no cost
            # A wider terminal gives the room to the name (and a little to the owner).
            await pilot.resize_terminal(120, 24)
            await until(pilot, lambda: any(line.startswith(" a0000001 lighting_sq010_sh0010_v003 ")
                                           for line in screen_lines(app)), 5, "the whole name")
            assert jobs.cell("a0000001", "owner").strip() == "wrangler01"
            await pilot.press("q")

    asyncio.run(drive())


def test_the_selection_keeps_its_place_when_its_job_leaves_the_list(tmp_path):
    """Rows come and go between refreshes: the cursor follows its job, and when that job is no
    longer listed it stays where it was rather than jumping to the first row."""
    from renderfarm.jobstatus import JobStatus

    def job(i: int) -> JobStatus:
        return JobStatus(id=f"j000000{i}", name=f"shot{i}", owner="o", state="queued", priority=50,
                         pool="default", renderer="builtin", frames_spec="1", frames=1, tasks=1, chunk=1,
                         width=8, height=8, frames_done=0, progress=0.0)

    settings = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            farm = app.farm
            await until(pilot, lambda: "farm is not running" in str(farm.query_one("#status").render()), 5,
                        "the first reading")
            farm.timer.pause()  # the rows below are the only ones shown
            jobs = farm.query_one("#jobs")

            def show(*ids: int) -> None:
                farm.snap = Snapshot(taken_at=time.time(), jobs=[job(i) for i in ids])
                farm.show(farm.snap)

            show(1, 2, 3, 4, 5)
            await pilot.press("down", "down", "down")
            assert jobs.selected_id() == "j0000004"
            show(4, 5, 1, 2, 3)
            assert jobs.selected_id() == "j0000004" and jobs.cursor_row == 0
            show(1, 2, 3, 4, 5)
            show(1, 2, 3, 5)  # 4 finished and fell off the list: the cursor stays on the 4th row
            assert jobs.selected_id() == "j0000005" and jobs.cursor_row == 3
            await pilot.press("q")

    asyncio.run(drive())


def test_a_blocked_job_says_so_and_why_on_its_row_and_the_status_line(managed):
    settings, engine = managed
    with session_scope(engine) as s:  # c fails (each task fails once, one attempt allowed); d waits on it
        for task in s.scalars(select(Task).where(Task.job_id == "c0000003")).all():
            attempt = lifecycle.queue_attempt(s, task, "w1", 1100.0)
            lifecycle.start_attempt(s, attempt, 1101.0)
            lifecycle.fail_attempt(s, attempt, 1102.0, "exit 3", None, 1)
        lifecycle.refresh_job(s, s.get(Job, "c0000003"), 1102.0)
        job = Job(id="d0000004", name="comp_after_fx", owner="wrangler01", renderer="builtin", scene_name="s.toml",
                  scene_key=f"scenes/{SHA}.toml", scene_sha256=SHA, frames="1", frame_count=1, chunk=1,
                  width=64, height=48, submitted_at=2000.0, after="c0000003")
        lifecycle.create_job(s, job, plan_tasks("1", 1, 100))

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            farm, jobs = app.farm, app.farm.query_one("#jobs")
            await until(pilot, lambda: "d0000004" in jobs.ids, 10, "the blocked job's row")
            assert jobs.cell("d0000004", "state").strip() == "blocked"
            while jobs.selected_id() != "d0000004":
                await pilot.press("down")
            await until(pilot, lambda: "blocked: c0000003 failed" in str(farm.query_one("#status").render()), 3,
                        "the status line")
            assert str(farm.query_one("#status").render()).strip() == (
                "blocked: c0000003 failed; it starts once that job is retried (f) and done")
            await pilot.press("q")

    asyncio.run(drive())


def test_tab_then_d_D_e_drain_disable_and_enable_the_worker_under_the_cursor(managed):
    """Two enrolled nodes beating as workers: Tab moves to the workers, each key holds the worker
    under the cursor (the manager applies it), and its row shows what it is now."""
    from nodekit import ActingNode

    from renderfarm.enrollment import enroll
    from renderfarm.models import Node
    from renderfarm.redisconn import connect

    settings, engine = managed
    r = connect(settings)
    nodes = {name: ActingNode(enroll(settings, name)) for name in ("wa", "wb")}
    for node in nodes.values():
        node.beat(r, ttl=60.0)

    def hold(name: str) -> str | None:
        with session_scope(engine) as s:
            return s.get(Node, name).hold

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            workers = app.farm.query_one("#workers")
            await until(pilot, lambda: workers.ids == ["wa", "wb"], 20, "the two worker rows")
            await pilot.press("d")  # the jobs table has the keys: no worker is selected there
            await until(pilot, lambda: any("no worker selected" in line for line in screen_lines(app)), 5, "a hint")
            assert hold("wa") is None
            await pilot.press("tab", "down")
            assert workers.selected_id() == "wb"
            await pilot.press("d")
            await until(pilot, lambda: hold("wb") == "drain", 10, "wb drained")
            await until(pilot, lambda: any("wb" in line and "drained" in line for line in screen_lines(app)), 10,
                        "wb shown drained")
            await pilot.press("D")
            await until(pilot, lambda: hold("wb") == "disable", 10, "wb disabled")
            await pilot.press("up", "D")
            await until(pilot, lambda: hold("wa") == "disable", 10, "wa disabled")
            await pilot.press("e")
            await until(pilot, lambda: hold("wa") is None, 10, "wa enabled")
            assert hold("wb") == "disable"
            await pilot.press("q")

    asyncio.run(drive())
    r.close()


def test_in_a_jobs_tasks_k_r_s_kill_retry_and_skip_the_task_under_the_cursor(managed):
    settings, engine = managed

    def state(index: int) -> str:
        with session_scope(engine) as s:
            return s.scalars(select(Task.state).where(Task.job_id == "a0000001", Task.index == index)).one()

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            jobs = app.farm.query_one("#jobs")
            await until(pilot, lambda: jobs.ids == [j for j, _ in JOBS], 10, "the three job rows")
            await pilot.press("enter")
            tasks = await until(pilot, lambda: app.screen.query("#tasks") and app.screen.query_one("#tasks"), 5,
                                "the tasks screen")
            await until(pilot, lambda: len(tasks.ids) == 4, WAIT, "its four tasks")
            await pilot.press("down")
            key = tasks.selected_id()
            index = int(key.rsplit(":", 1)[1])
            await pilot.press("s")
            await until(pilot, lambda: state(index) == "skipped", WAIT, "the task skipped")
            await until(pilot, lambda: any("skipped" in line for line in screen_lines(app)), WAIT, "its row skipped")
            await pilot.press("r")
            await until(pilot, lambda: state(index) == "pending", WAIT, "the task pending again")
            await pilot.press("k")  # nothing renders it: said so, nothing changes
            refused = lambda: any("nothing to do" in line for line in screen_lines(app))  # noqa: E731
            await until(pilot, refused, WAIT, "the refusal")
            # The refusal outlives the next read of the list (the list's periodic read used to
            # write over it at once: under load it could be gone before anyone saw it).
            await app.screen.reload()
            assert refused(), screen_lines(app)
            assert state(index) == "pending"
            await pilot.press("escape", "q")

    asyncio.run(drive())


def test_o_opens_the_settings_form_and_enter_sets_what_was_typed(managed):
    settings, engine = managed

    def job(job_id: str) -> Job:
        with session_scope(engine) as s:
            return s.get(Job, job_id)

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=(100, 30)) as pilot:
            jobs = app.farm.query_one("#jobs")
            await until(pilot, lambda: jobs.ids == [j for j, _ in JOBS], 10, "the three job rows")
            await pilot.press("o")
            await until(pilot, lambda: app.screen.query("#set-timeout"), 5, "the form")
            await pilot.press("s", "o", "o", "n", "enter")  # refused in farm set's own words; the form stays
            await until(pilot, lambda: any("timeout: 'soon'" in line for line in screen_lines(app)), 5, "the refusal")
            await pilot.press("backspace", "backspace", "backspace", "backspace", "5", "tab", "2", "tab", "tab", "tab",
                              "g", "p", "u", "enter")
            await until(pilot, lambda: job("a0000001").timeout == 5, 10, "the new timeout")
            found = job("a0000001")
            assert (found.max_workers, found.requires, found.max_attempts) == (2, "gpu", 3)
            assert job("b0000002").timeout == 3600  # only the selected job
            await pilot.press("o", "escape")
            await until(pilot, lambda: app.screen is app.farm, 5, "the form to close")
def test_x_deletes_the_selected_job_after_its_dialog_and_a_archives_a_finished_one(managed):
    settings, engine = managed

    def job(job_id: str):
        with session_scope(engine) as s:
            row = s.get(Job, job_id)
            return None if row is None else (row.state, row.archived_at is not None)

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            jobs = app.farm.query_one("#jobs")
            await until(pilot, lambda: jobs.ids == [j for j, _ in JOBS], 10, "the three job rows")
            assert jobs.selected_id() == "a0000001"
            # a on a queued job: refused in one line, nothing changes.
            await pilot.press("a")
            await until(pilot, lambda: any("only a done, failed or cancelled job is archived" in line
                                           for line in screen_lines(app)), 10, "the refusal")
            # x asks first; n keeps the job.
            await pilot.press("x")
            await until(pilot, lambda: app.screen.query("#question"), 5, "the dialog")
            assert "Cancel and delete job a0000001" in "\n".join(screen_lines(app))
            await pilot.press("n")
            await until(pilot, lambda: app.screen is app.farm, 5, "the dialog to close")
            assert job("a0000001") == ("queued", False)
            # y deletes it (cancelled first: it was not finished).
            await pilot.press("x")
            await until(pilot, lambda: app.screen.query("#question"), 5, "the dialog")
            await pilot.press("y")
            await until(pilot, lambda: job("a0000001") is None, 10, "the job deleted")
            await until(pilot, lambda: "a0000001" not in jobs.ids, 10, "its row gone")
            # c then a: a cancelled job is archived, and leaves the list.
            await until(pilot, lambda: jobs.selected_id() is not None, 5, "a selection")
            chosen = jobs.selected_id()
            await pilot.press("c")
            await until(pilot, lambda: app.screen.query("#question"), 5, "the dialog")
            await pilot.press("y")
            await until(pilot, lambda: job(chosen) == ("cancelled", False), 10, "the job cancelled")
            await pilot.press("a")
            await until(pilot, lambda: job(chosen) == ("cancelled", True), 10, "the job archived")
            await until(pilot, lambda: chosen not in jobs.ids, 10, "its row gone")
            await pilot.press("q")

    asyncio.run(drive())
