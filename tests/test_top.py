"""`farm top` driven headless with Textual's pilot at 80x24: against a real local farm (the job
and worker rows appear, suspend, priority and cancel reach the manager and the farm honours
them, the tasks and log screens open, an SVG screenshot is saved), with the farm down, and its
text formatters on exact inputs."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import farm_env, farm_processes, run_farm
from renderfarm_cli.top import farm_top
from renderfarm_cli.top_view import (
    cost_story,
    cost_text,
    job_cells,
    job_columns,
    money,
    progress_bar,
    short_count,
    short_duration,
    sparkline,
    summary_text,
    task_columns,
)

from renderfarm.client import Submission, submit
from renderfarm.config import load_settings
from renderfarm.dashboard import Snapshot, WorkerLine
from renderfarm.db import session_scope
from renderfarm.jobstatus import JobStatus, StepStatus
from renderfarm.status import job_status, list_tasks, reader_engine, resolve_job

SIZE = (80, 24)
SLEEPER = """
import sys, time
from PIL import Image
frame, out, w, h, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
print(f"sleeper: frame {frame} for {seconds} s", flush=True)
time.sleep(seconds)
Image.new("RGB", (w, h), (0, 90, 200)).save(out)
"""


def sleeper_scene(root: Path, frames: str, seconds: float) -> Path:
    script = root / "sleeper.py"
    script.write_text(SLEEPER)
    argv = [sys.executable, str(script), "{frame}", "{output}", "{width}", "{height}", str(seconds)]
    scene = root / "sleepy.toml"
    scene.write_text(f'[render]\nwidth = 32\nheight = 18\nframes = "{frames}"\n\n[command]\nargv = {json.dumps(argv)}\n')
    return scene


async def until(pilot, check, timeout: float, what: str):
    """Let the app run until `check()` is true; meanwhile no refresh may blank the screen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert not pilot.app.screen.query("LoadingIndicator"), "a refresh covered the screen"
        value = check()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Reader:
    """The database as the test sees it, apart from the app."""

    def __init__(self, settings) -> None:
        self.engine = reader_engine(settings)

    def job(self, job_id: str):
        with session_scope(self.engine) as s:
            return job_status(s, resolve_job(s, job_id))

    def attempt_starts(self, job_id: str) -> list[float]:
        with session_scope(self.engine) as s:
            tasks = list_tasks(s, resolve_job(s, job_id))
        return [a["started_at"] for t in tasks for a in t.attempts if a["started_at"]]


def cell(table, row: str, col: str) -> str:
    return table.cell(row, col).strip()


def status_line(screen) -> str:
    return str(screen.query_one("#status").render())


@pytest.mark.slow
def test_top_steers_a_local_farm(tmp_path):
    state = tmp_path / "state"
    env = farm_env(state, FARM_ALLOW_COMMANDS="1", FARM_HEARTBEAT_TTL="3")
    started = time.monotonic()
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    up = time.monotonic() - started
    try:
        settings = load_settings(env, cwd=tmp_path)
        job = submit(settings, Submission(scene=sleeper_scene(tmp_path, "1-40", 1.0), renderer="command",
                                          name="sleepy", owner="wrangler"))
        asyncio.run(drive(settings, job, tmp_path))
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    left = farm_processes(state)
    assert not left, f"processes left after farm down: {left}"
    print(f"farm up {up:.1f} s, whole test {time.monotonic() - started:.1f} s")


async def drive(settings, job: str, tmp_path: Path) -> None:
    db = Reader(settings)
    app = farm_top(settings)
    async with app.run_test(size=SIZE) as pilot:
        farm = app.farm
        jobs, workers = farm.query_one("#jobs"), farm.query_one("#workers")

        # The job row and both workers' rows appear, refreshed in place as they render.
        seen = time.monotonic()
        await until(pilot, lambda: job in jobs.ids, 10, "the job row")
        # Each row is seen busy (with its task) at some refresh: between two 1-second renders a
        # worker is idle for a moment, so both at the same refresh is luck under load.
        busy: dict[str, str] = {}

        def both_seen_busy() -> bool:
            busy.update((n, cell(workers, n, "task")) for n in workers.ids if cell(workers, n, "state") == "busy")
            return len(workers.ids) == 2 and len(busy) == 2

        await until(pilot, both_seen_busy, 20, "both worker rows to say busy")
        print(f"rows on screen {time.monotonic() - seen:.1f} s after the app started")
        # The job turns running once the manager has heard of a start: a worker says so a second
        # into a render, or with the render's end (its row can say busy before either).
        await until(pilot, lambda: cell(jobs, job, "state") == "running", 10, "the job row to say running")
        # At 80 columns the owner gets 6 characters (the name takes the room).
        assert [cell(jobs, job, c) for c in ("id", "name", "owner", "state", "priority")] == [
            job, "sleepy", "wrang…", "running", "50"]
        assert cell(jobs, job, "frames").endswith("/40")
        assert {task.split(":")[0] for task in busy.values()} == {job}

        # s suspends the selected job: the manager applies it and starts no new task of it.
        await until(pilot, lambda: db.job(job).counts["done"] >= 1, 20, "a task to finish")
        await pilot.press("s")
        await until(pilot, lambda: db.job(job).state == "suspended", 10, "the job to be suspended")
        suspended_at = time.time()
        await until(pilot, lambda: "suspend applied; now suspended" in status_line(farm), 5, "the answer")
        await until(pilot, lambda: cell(jobs, job, "state") == "suspended", 3, "the row to say suspended")
        await pilot.pause(2.5)  # running renders (1 s each) finish; nothing new may start
        late = [t for t in db.attempt_starts(job) if t > suspended_at + 0.5]
        assert late == [], f"tasks of the suspended job started after it was suspended: {late}"
        done = db.job(job).counts["done"]
        assert 0 < done < 40 and db.job(job).state == "suspended"

        shot = Path(app.save_screenshot("farm-top.svg", str(tmp_path)))
        svg = shot.read_text()
        assert svg.lstrip().startswith("<svg") and job in svg and "suspended" in svg

        # p asks for a new priority; the value typed replaces the old one.
        await pilot.press("p")
        await until(pilot, lambda: app.screen.query("#priority"), 3, "the priority input")
        await pilot.press("1", "0", "0", "0")  # only 3 digits fit
        await pilot.press("enter")
        await until(pilot, lambda: db.job(job).priority == 100, 10, "priority 100")
        await until(pilot, lambda: cell(jobs, job, "priority") == "100", 3, "the new priority on screen")

        # Enter opens the job's tasks; l opens the selected (first, done) task's log.
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.query("#tasks") and len(app.screen.query_one("#tasks").ids) == 40,
                    10, "the job's 40 tasks")
        tasks = app.screen.query_one("#tasks")
        assert cell(tasks, f"{job}:0", "state") == "done"
        await pilot.press("l")
        await until(pilot, lambda: app.screen.query("#log") and "sleeper: frame 1 for 1.0 s"
                    in "\n".join(app.screen.query_one("#log").lines), 10, "the first task's log")
        await pilot.press("escape", "escape")
        assert app.screen is farm

        # c asks first: n leaves the job alone, y cancels it.
        await pilot.press("c")
        await until(pilot, lambda: app.screen.query("#question")
                    and "Cancel job" in str(app.screen.query_one("#question").render()), 3, "the question")
        await pilot.press("n")
        await pilot.pause(1.5)
        assert db.job(job).state == "suspended"
        await pilot.press("c")
        await until(pilot, lambda: app.screen is not farm, 3, "the question again")
        await pilot.press("y")
        await until(pilot, lambda: db.job(job).state == "cancelled", 10, "the job to be cancelled")
        await until(pilot, lambda: cell(jobs, job, "state") == "cancelled", 3, "the row to say cancelled")
        await pilot.press("q")
    assert not app.is_running


def test_top_with_the_farm_down(tmp_path):
    """Nothing running and no database: the app says so, refuses verbs politely, and quits."""
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            farm = app.farm
            await until(pilot, lambda: "farm is not running" in status_line(farm), 5, "the note")
            assert "farm not running" in str(farm.query_one("#summary").render())
            await pilot.press("s")
            assert "no job selected" in status_line(farm)
            await pilot.press("q")
        assert not app.is_running

    asyncio.run(drive())


def test_formatters():
    assert progress_bar(0.0) == "         0%"
    assert progress_bar(0.5) == "███     50%"
    assert progress_bar(0.999) == "█████▉ 100%"
    assert progress_bar(1.0) == "██████ 100%"
    assert progress_bar(0.08) == "▍        8%"
    assert progress_bar(0.5, width=10) == "█████       50%"
    assert sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert [short_count(n) for n in (0, 9999, 10_000, 123_456)] == ["0", "9999", "10k", "123k"]
    assert [short_duration(s) for s in (None, 0.4, 59, 60, 599, 600, 3599, 3600, 35_999, 36_000, 359_999, 400_000, 9e6)] == [
        "-", "0s", "59s", "1m00s", "9m59s", "10m", "59m", "1h00m", "9h59m", "10h", "99h", "4d", "99d+"]
    # Money's decimals, never a float's exponent: 4 below 1 (as `farm status`), cents from 1 up.
    assert [money(v) for v in (0, 0.0123456, 0.5, 0.99999, 12.345678, 1234.56, 12345.6, 999_999.4, 1_234_567,
                               8e-05, 0.00001234)] == [
        "0", "0.0123", "0.5000", "1.00", "12.35", "1235", "12346", "999999", "1235k", "0.0001", "<.0001"]
    # No price anywhere (the local farm's default) is no cost at all; an amount carries its currency,
    # as in `farm report`; a longer code takes room from the amount; several currencies do not add up.
    assert [cost_text(c) for c in ({}, {"": 0.0}, {"EUR": 0.0}, {"EUR": 0.0123}, {"CNY": 12.4}, {"CNY": 8e-05},
                                   {"USDT": 0.0123}, {"": 0.0, "CNY": 1234.567}, {"EUR": 1.0, "CNY": 7.0})] == [
        "-", "-", "0 EUR", "0.0123 EUR", "12.40 CNY", "0.0001 CNY", "0.012 USDT", "1235 CNY", "mixed"]
    assert all(len(cost_text({"CNY": v})) <= 10 for v in (0.00001, 0.5, 99.99, 12345.6, 1e9))
    # A job whose cell says `mixed` lists each currency on the status line; one currency needs no list.
    assert cost_story(job_row("j1", cost={"EUR": 1.0, "CNY": 7.0, "": 0.0})) == "cost so far: 7.0000 CNY, 1.0000 EUR"
    assert cost_story(job_row("j1", cost={"EUR": 1.0})) is None


def job_row(job_id: str, **fields) -> JobStatus:
    return JobStatus(id=job_id, name=f"shot_{job_id}", owner="o", state="running", priority=50, pool="default",
                     renderer="builtin", frames_spec="1-4", frames=4, tasks=4, chunk=1, width=8, height=8,
                     frames_done=1, progress=0.25, **fields)


def test_an_openjd_job_counts_its_tasks_not_frames():
    """An OpenJD job has steps and tasks, not frames: its FRAMES cell counts tasks and says so
    (as `farm jobs` does), where it showed done frames against a frame count it does not have."""
    frames = job_row("f0000001")
    assert job_cells(frames)["frames"] == "1/4"
    steps = [StepStatus("render", tasks=3, done=1, progress=0.5), StepStatus("encode", tasks=2, done=0, progress=0.0)]
    openjd = replace(job_row("o0000002", counts={"done": 1, "running": 1, "pending": 3}, steps=steps),
                     frames=1, tasks=5, frames_done=0)
    assert job_cells(openjd)["frames"] == "1/5 tasks"


def worker_row(name: str, state: str) -> WorkerLine:
    return WorkerLine(name, state, None, 1.0, "default", 0)


# Two asleep (FARM_SLEEP_AFTER), one busy, one idle; the offline one is not counted at all.
WORKERS = [worker_row("w1", "busy"), worker_row("w2", "idle"), worker_row("w3", "asleep"),
           worker_row("w4", "asleep"), worker_row("w5", "offline")]


def test_the_summary_counts_asleep_workers_apart():
    """An asleep node takes no work until woken: the header says how many of the workers sleep."""
    at = 1_800_000_000.0
    clock = time.strftime("%H:%M:%S", time.localtime(at))
    snap = Snapshot(taken_at=at, workers=WORKERS, farm_running=True, manager_running=True, queues={"w1": 1})
    assert summary_text(snap).plain == f" farm running · 4 workers (2 asleep), 1 busy · 0 active jobs · 1 queued · {clock}"
    awake = Snapshot(taken_at=at, workers=WORKERS[:2], farm_running=True, manager_running=True)
    assert summary_text(awake).plain == f" farm running · 2 workers, 1 busy · 0 active jobs · {clock}"


def test_top_shows_costs_with_their_currency_and_asleep_workers_apart(tmp_path):
    """At 80 columns, with no farm: a job's cost cell carries its currency, a job spent in two
    currencies says `mixed` and lists them on the status line when highlighted, and the summary
    counts the asleep workers apart."""
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    jobs_shown = [job_row("a0000001", cost={"CNY": 12.4}), job_row("b0000002", cost={"CNY": 7.0, "EUR": 1.0}),
                  job_row("c0000003")]

    async def drive() -> None:
        app = farm_top(settings)
        async with app.run_test(size=SIZE) as pilot:
            farm = app.farm
            await until(pilot, lambda: "farm is not running" in status_line(farm), 5, "the first reading")
            farm.timer.pause()  # the rows below are the only ones shown
            farm.snap = Snapshot(taken_at=time.time(), jobs=jobs_shown, workers=WORKERS, farm_running=True,
                                 manager_running=True)
            farm.show(farm.snap)
            jobs = farm.query_one("#jobs")
            await until(pilot, lambda: jobs.ids == ["a0000001", "b0000002", "c0000003"], 5, "the job rows")
            assert [cell(jobs, j, "cost") for j in jobs.ids] == ["12.40 CNY", "mixed", "-"]
            assert "· 4 workers (2 asleep), 1 busy ·" in str(farm.query_one("#summary").render())
            await pilot.press("down")
            assert jobs.selected_id() == "b0000002"
            await until(pilot, lambda: "cost so far" in status_line(farm), 3, "the costs on the status line")
            assert status_line(farm).strip() == "cost so far: 7.0000 CNY, 1.0000 EUR"
            await pilot.press("q")
        assert not app.is_running

    asyncio.run(drive())


def test_columns_fit_80_columns_and_names_take_what_is_left():
    """Each column's text plus one space, plus a scrollbar: exactly the screen's width. At 80 the
    name gets 11 characters (the owner 6, the cost with its currency 10); on a wider screen the
    name takes most of the rest."""
    for width in (80, 100, 160):
        for columns in (job_columns(width), task_columns(width)):
            assert sum(w + 1 for _key, _label, w in columns) + 1 == width
    widths = {key: w for key, _label, w in job_columns(80)}
    assert widths == {"id": 8, "name": 11, "owner": 6, "state": 9, "priority": 3, "progress": 9, "frames": 9,
                      "eta": 5, "cost": 10}
    assert {key: w for key, _label, w in job_columns(120) if key in ("name", "owner")} == {"name": 41, "owner": 16}
    assert {key: w for key, _label, w in task_columns(80)}["error"] == 25


def test_top_refuses_to_run_without_a_terminal(tmp_path):
    """Piped or redirected, `farm top` says so in one line and exits 1 at once, drawing nothing:
    input from /dev/null, or input and error output on a terminal but output into a pipe."""
    import os
    import pty
    import re
    import subprocess

    from conftest import farm_command

    env = farm_env(tmp_path / "state")
    hint = "(`farm top` is interactive; `farm jobs --json` and `farm status --json` serve scripts)"
    started = time.monotonic()
    proc = subprocess.run([*farm_command(), "top"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.splitlines() == [f"farm: top: its input is not a terminal {hint}"]

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*farm_command(), "top"], stdin=follower, stdout=subprocess.PIPE, stderr=follower,
                              env=env, timeout=30, check=False)
        os.close(follower)
        follower = -1
        said = b""
        while True:  # what the command wrote to the terminal
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            said += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert (proc.returncode, proc.stdout) == (1, b"")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", said.decode()).strip()  # in red, on a terminal
    assert shown == f"farm: top: its output is not a terminal {hint}"
    assert time.monotonic() - started < 20
