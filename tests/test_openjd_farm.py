"""The two-step OpenJD example (examples/openjd/contact-sheet) on a real local farm of 2 workers
(issue 18, acceptance 1 and 7): the dependent step starts only once every task of the first is
done, by the manager's own timestamps; it reads every frame of the first step, those rendered on
the other worker too; the job environment is entered once per worker session, not per task;
openjd_progress and openjd_status reach the manager; `farm download` fetches the outputs with
their relative paths, SHA-256 intact. And a FLUSHALL of the farm's Valkey mid-job: the job
completes, no committed task of the first step runs again, the second step still waits."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from conftest import farm_env, farm_processes, run_farm, wait_for, wait_job

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parent.parent / "examples" / "openjd" / "contact-sheet"


def colour(frame: int) -> tuple[int, int, int]:
    """The colour the example's render script paints frame `frame`."""
    return ((frame * 53) % 256, (frame * 97 + 40) % 256, (frame * 29 + 80) % 256)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("openjd-farm")
    state = root / "state"
    state.mkdir(mode=0o700)
    env = farm_env(state, FARM_ALLOW_OPENJD="1")
    run_farm("up", "-d", "-w", "2", env=env, timeout=180)
    yield root, env
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)


def submit(env, *params: str) -> str:
    args = [a for p in params for a in ("-p", p)]
    return json.loads(run_farm("submit", f"{BUNDLE}/", *args, "--json", env=env).stdout)["id"]


def tasks(env, job: str) -> list[dict]:
    return json.loads(run_farm("tasks", job, "--json", env=env).stdout)


def wait_done(env, job: str, timeout: float = 240) -> None:
    state = wait_job(env, job, ("done", "failed", "cancelled"), timeout)
    assert state == "done", f"job {job} {state}: {tasks(env, job)}"


def of_step(rows: list[dict], step: str) -> list[dict]:
    return [t for t in rows if t["step"] == step]


def test_two_step_job_runs_on_two_workers(farm):
    from PIL import Image

    root, env = farm
    enter_log = root / "enter-1.log"
    job = submit(env, "Frames=1-18", "FramesPerTask=3", "SecondsPerFrame=0.5", f"EnterLog={enter_log}")
    wait_done(env, job)
    rows = tasks(env, job)
    render, sheet = of_step(rows, "Render"), of_step(rows, "ContactSheet")
    assert len(render) == 6 and len(sheet) == 1
    attempts = [a for t in rows for a in t["attempts"]]
    assert all(a["state"] == "done" for a in attempts), attempts

    # The dependent step was handed out, and started, only after every Render task was done.
    render_finished = max(a["finished_at"] for t in render for a in t["attempts"])
    sheet_attempt = sheet[0]["attempts"][0]
    assert sheet_attempt["queued_at"] >= render_finished
    assert sheet_attempt["started_at"] >= render_finished

    # Both workers rendered frames: the sheet read those of the other worker from storage.
    render_workers = {t["worker"] for t in render}
    assert len(render_workers) == 2, render_workers
    assert any(t["worker"] != sheet[0]["worker"] for t in render)

    # The job environment was entered once per worker session (one per worker and step), not per task.
    entered = enter_log.read_text().splitlines()
    sessions = {(a["worker"], t["step"]) for t in rows for a in t["attempts"]}
    assert len(entered) == len(sessions) < len(rows), (entered, sessions)

    # openjd_progress and openjd_status reached the manager (each attempt keeps its last ones).
    reported = [a for t in render for a in t["attempts"] if "progress" in a]
    assert all(0 <= a["progress"] < 1 for a in reported), render
    assert any(0 < a["progress"] < 1 for a in reported), render
    assert any(a.get("status_text", "").startswith("rendering frame ") for a in reported), render

    # The outputs download with their relative paths, each as the farm recorded it.
    recorded = {o["path"]: o for t in rows for o in t["outputs"]}
    frames = {f"FramesDir/frames/frame.{f:04d}.png" for f in range(1, 19)}
    assert set(recorded) == frames | {"SheetDir/sheet/sheet.png", "SheetDir/sheet/manifest.json"}
    dest = root / "download"
    run_farm("download", job, str(dest), env=env)
    got = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if p.is_file()}
    assert set(got) == set(recorded)
    for path, file in got.items():
        assert hashlib.sha256(file.read_bytes()).hexdigest() == recorded[path]["sha256"], path

    # The sheet holds every frame, each the very file Render committed, at its place.
    manifest = json.loads((dest / "SheetDir/sheet/manifest.json").read_text())
    cells = {c["frame"]: c for c in manifest["cells"]}
    assert sorted(cells) == list(range(1, 19))
    with Image.open(dest / "SheetDir/sheet/sheet.png") as image:
        pixels = image.convert("RGB")
        for frame, cell in cells.items():
            assert cell["sha256"] == recorded[f"FramesDir/frames/frame.{frame:04d}.png"]["sha256"]
            assert pixels.getpixel((cell["x"] + 32, cell["y"] + 24)) == colour(frame), frame


def test_flushall_mid_job_completes_without_running_committed_tasks_again(farm):
    from renderfarm.config import load_settings
    from renderfarm.redisconn import connect

    root, env = farm
    job = submit(env, "Frames=1-24", "FramesPerTask=2", "SecondsPerFrame=0.6")

    def render_done() -> list[dict]:
        done = [t for t in of_step(tasks(env, job), "Render") if t["state"] == "done"]
        return done if len(done) >= 3 else []

    done_before = {t["index"]: t["attempts"] for t in wait_for(render_done, 180, "3 Render tasks done", 0.5)}
    r = connect(load_settings(env, cwd=root / "state"))
    r.flushall()  # the farm's own Valkey, started by this test's fixture
    r.close()
    flushed_at = time.time()
    assert len(done_before) < 12, "the job ran to its end before the flush: nothing was tested"
    wait_done(env, job, timeout=300)
    rows = tasks(env, job)
    for t in rows:
        if t["index"] in done_before:
            assert t["attempts"] == done_before[t["index"]], f"task {t['index']} ran again after its commit"
    render, sheet = of_step(rows, "Render"), of_step(rows, "ContactSheet")
    render_finished = max(a["finished_at"] for t in render for a in t["attempts"] if a["state"] == "done")
    assert all(a["queued_at"] >= render_finished for a in sheet[0]["attempts"])
    assert any(a["queued_at"] >= flushed_at - 1 for t in rows for a in t["attempts"])
