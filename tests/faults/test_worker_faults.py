"""Workers that die, freeze or are told to stop, on a real local farm (heartbeat TTL 3 s)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import running, wait_for
from livefarm import BOUNCING, HEARTBEAT_TTL, LiveFarm, command_scene, report

pytestmark = pytest.mark.slow

REAP_SWEEP = 1.0  # the manager's reaper sweeps once a second


@pytest.fixture()
def farm(tmp_path):
    f = LiveFarm(tmp_path)
    f.up()
    yield f
    f.down()


def test_kill_9_mid_frame_hands_the_task_to_the_other_worker(farm):
    job = farm.submit(BOUNCING, "--frames", "1-24", "--name", "shot")
    victim = farm.worker_names()[0]
    pid = farm.pids()[victim]
    wait_for(lambda: farm.done_tasks(job) >= 2 and farm.live_on(job, victim) and farm.children(pid), 60,
             f"{victim} to be rendering")
    renderers = farm.children(pid)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: not any(map(running, renderers)), 10, "the dead worker's renderer to die")

    assert farm.wait_job(job) == "done"
    farm.check_frames(job, "shot", list(range(1, 25)), (640, 360))
    # What the victim held when it died (read after the fact: the database may not yet have shown
    # a task it had just finished as done when it was killed, nor the next one as running).
    attempts = farm.attempts(job)
    lost = [a for a in attempts if a["worker"] == victim and a["state"] in ("lost", "cancelled")]
    assert lost, [a for a in attempts if a["worker"] == victim]
    for held in lost:
        again = next(a for a in attempts if a["task"] == held["task"] and a["number"] == held["number"] + 1)
        assert again["worker"] != victim
    # The manager gave them up within two reaper sweeps after the TTL ran out (plus a second of
    # slack for a busy machine); each went out again as soon as the other worker had a free slot.
    given_up = max(a["finished_at"] for a in lost) - killed_at
    report("kill -9", given_up_after_s=given_up, rendered_twice=farm.rendered_twice(job))
    assert given_up <= HEARTBEAT_TTL + 2 * REAP_SWEEP + 1.0


SLOW_FIRST_TRY = """
import sys, time, pathlib
from PIL import Image
frame, out, w, h, marks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), pathlib.Path(sys.argv[5])
mark = marks / f"tried-{frame}"
first = not mark.exists()
mark.write_text(str(time.time()))
if first:
    (marks / f"pid-{frame}").write_text(str(__import__("os").getpid()))
    time.sleep(float(open(marks / "sleep").read()) if (marks / "sleep").exists() else 30)
Image.new("RGB", (w, h), (10, 20, 200 if first else 100)).save(out)
"""


def test_sigstop_past_the_ttl_then_sigcont_commits_one_attempt(farm, tmp_path):
    scene = command_scene(tmp_path, SLOW_FIRST_TRY, frames="1")
    job = farm.submit(scene, "--renderer", "command", "--name", "frozen")
    # Running as the manager sees it: the worker sends its started event a moment into the render.
    wait_for(lambda: (tmp_path / "marks" / "pid-1").exists() and farm.attempts(job)[0]["state"] == "running", 60,
             "the first render to start")
    stale = farm.attempts(job)[0]["worker"]
    pid = farm.pids()[stale]
    render_pid = int((tmp_path / "marks" / "pid-1").read_text())
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_for(lambda: farm.job_state(job) == "done", 60, "another worker to finish the frame")
    finally:
        os.kill(pid, signal.SIGCONT)
    attempts = farm.attempts(job)
    winner = [a for a in attempts if a["state"] == "done"]
    assert len(winner) == 1 and winner[0]["worker"] != stale and winner[0]["number"] == 2
    # The frozen worker wakes, sees another attempt holds the task and kills its render.
    wait_for(lambda: not os.path.exists(f"/proc/{render_pid}"), 3 * HEARTBEAT_TTL, "the stale render to be killed")
    time.sleep(HEARTBEAT_TTL)
    attempts = farm.attempts(job)
    assert [a["state"] for a in attempts] == ["lost", "done"]
    farm.check_frames(job, "frozen", [1], (64, 36))
    storage = farm.storage()
    first_attempt = [o.key for o in storage.list(f"jobs/{job}/attempts/0/1/") if not o.key.endswith("log.txt")]
    assert first_attempt == [], "the stale attempt uploaded a frame"
    data = storage.get_bytes(f"jobs/{job}/frames/frozen.0001.png")
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(data)).getpixel((0, 0)) == (10, 20, 100)  # the second attempt's pixels
    report("SIGSTOP/SIGCONT", hand_out_delay_s=winner[0]["queued_at"] - stopped_at, rendered_twice=farm.rendered_twice(job))


def test_sigterm_hands_back_after_the_grace_period_and_second_sigterm_at_once(tmp_path):
    farm = LiveFarm(tmp_path, FARM_SHUTDOWN_GRACE="2")
    farm.up()
    try:
        (tmp_path / "marks").mkdir()
        (tmp_path / "marks" / "sleep").write_text("60")
        scene = command_scene(tmp_path, SLOW_FIRST_TRY, frames="1-2")
        job = farm.submit(scene, "--renderer", "command", "--name", "handback")
        wait_for(lambda: len(list((tmp_path / "marks").glob("pid-*"))) == 2, 60, "both first renders to start")
        first, second = farm.worker_names()
        # The first worker gets one SIGTERM: after the 2 s grace it hands its task back.
        os.kill(farm.pids()[first], signal.SIGTERM)
        # The second gets two: it hands its task back at once.
        os.kill(farm.pids()[second], signal.SIGTERM)
        time.sleep(1.5)
        os.kill(farm.pids()[second], signal.SIGTERM)
        for name in (first, second):
            pid = farm.pids()[name]
            wait_for(lambda: not running(pid), 30, f"{name} to exit")
        released = {a["task"]: a for a in farm.attempts(job) if a["number"] == 1}
        assert {a["state"] for a in released.values()} == {"lost"}, [dict(a) for a in released.values()]
        took = {a["worker"]: a["finished_at"] - a["started_at"] for a in released.values()}
        assert took[second] < took[first] < 15, took
        # Nothing was lost: new workers finish both frames.
        farm.up()
        assert farm.wait_job(job) == "done"
        farm.check_frames(job, "handback", [1, 2], (64, 36))
        report("SIGTERM", grace_hand_back_s=took[first], second_sigterm_hand_back_s=took[second],
               rendered_twice=farm.rendered_twice(job))
    finally:
        farm.down()

