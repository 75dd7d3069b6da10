"""Acceptance: `farm demo` renders the 48-frame example on a fresh local farm and leaves nothing running."""

from __future__ import annotations

import json
import time

import pytest
from conftest import farm_env, farm_processes, run_farm
from PIL import Image

pytestmark = pytest.mark.slow

DEMO_LIMIT = 180.0  # seconds, from the issue; the test allows twice that on a shared machine


def test_demo_renders_48_frames_on_two_workers(tmp_path):
    state = tmp_path / "state"
    env = farm_env(state)
    start = time.monotonic()
    proc = run_farm("demo", env=env, cwd=tmp_path, timeout=2 * DEMO_LIMIT)
    took = time.monotonic() - start
    print(f"farm demo took {took:.1f} s (target {DEMO_LIMIT:.0f} s)")
    assert took < 2 * DEMO_LIMIT

    job_dirs = list((tmp_path / "renders").iterdir())
    assert len(job_dirs) == 1, proc.stdout
    job_id = job_dirs[0].name
    frames = sorted(job_dirs[0].glob("*.png"))
    assert [f.name for f in frames] == [f"demo.{n:04d}.png" for n in range(1, 49)]
    for path in frames:
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG" and img.size[0] >= 640 and img.size[1] >= 360
    assert str(job_dirs[0].relative_to(tmp_path)) in proc.stdout

    tasks = json.loads(run_farm("tasks", job_id, "--json", env=env).stdout)
    assert len(tasks) == 48 and all(t["state"] == "done" for t in tasks)
    assert len({t["worker"] for t in tasks}) >= 2
    assert not farm_processes(state), farm_processes(state)


def test_ctrl_c_during_the_demo_cancels_its_job_and_leaves_nothing_running(tmp_path):
    import signal
    import subprocess
    import threading

    from conftest import farm_command, wait_for

    state = tmp_path / "state"
    env = farm_env(state, PYTHONUNBUFFERED="1")
    # Ctrl-C as a terminal delivers it. A process started in the background by a non-interactive
    # shell (`uv run pytest ... &` in a script, as a run beside other work often is) inherits
    # SIGINT ignored, and Python then installs no handler for it: the demo never saw the signal and
    # rendered to the end with exit 0.
    # The demo keeps that convention (a background job is not for Ctrl-C); the test starts it
    # with SIGINT's default, as an interactive shell starts a foreground command.
    proc = subprocess.Popen(farm_command() + ["demo"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # Interrupt once the demo follows its job (it said it submitted it: the next statement is
        # the wait that cancels on Ctrl-C) and frames are rendering: the farm fully up, renders in flight.
        wait_for(lambda: any("submitted " in line for line in lines) and farm_processes(state)
                 and _rendering(state), 120, "the demo to follow its job with frames rendering")
        assert _job_states(state) == ["running"], "".join(lines)
        ignored = [line for line in open(f"/proc/{proc.pid}/status") if line.startswith("SigIgn:")]
        assert not int(ignored[0].split()[1], 16) & 1 << (signal.SIGINT - 1), "the demo ignores SIGINT"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(30)
        output = "".join(lines)
        assert proc.returncode != 0, output
        assert "Traceback" not in output, output
    finally:
        if proc.poll() is None:  # a failed check: SIGTERM stops the demo and its farm
            proc.terminate()
            proc.wait(120)
    wait_for(lambda: not farm_processes(state), 30, "every farm process to exit")
    # Not left `running` in the database until the next demo: cancelled before the farm stopped.
    assert _job_states(state) == ["cancelled"], output
    assert "cancelling job" in output, output


def _job_states(state) -> list[str]:
    import sqlite3

    with sqlite3.connect(state / "farm.db") as db:
        return [s for (s,) in db.execute("select state from jobs")]


def _rendering(state) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(state / "farm.db") as db:
            return db.execute("select count(*) from tasks where state = 'done'").fetchone()[0] > 0
    except sqlite3.Error:
        return False
