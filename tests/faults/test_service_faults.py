"""Valkey wiped or killed, SeaweedFS stopped, the manager killed: the job still completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import running, wait_for
from livefarm import BOUNCING, LiveFarm, command_scene, report

from renderfarm import keys

pytestmark = pytest.mark.slow

FRAMES = list(range(1, 25))


@pytest.fixture()
def farm(tmp_path):
    f = LiveFarm(tmp_path)
    f.up()
    yield f
    f.down()


def test_flushall_mid_job(farm):
    job = farm.submit(BOUNCING, "--frames", "1-24", "--name", "shot")
    wait_for(lambda: farm.done_tasks(job) >= 10, 120, "10 tasks done")
    done_before = {a["task"] for a in farm.attempts(job) if a["state"] == "done"}
    r = farm.redis()
    r.flushall()
    flushed_at = time.time()
    assert 10 <= len(done_before) <= 14, len(done_before)
    assert farm.wait_job(job) == "done"
    farm.check_frames(job, "shot", FRAMES, (640, 360))
    attempts = farm.attempts(job)
    for task in done_before:
        assert [a["number"] for a in attempts if a["task"] == task] == [1], f"task {task} ran again"
    redone = [a for a in attempts if a["number"] > 1]
    delay = max((a["queued_at"] - flushed_at for a in redone), default=0.0)
    report("FLUSHALL", tasks_done_before=len(done_before), hand_out_delay_s=delay,
           rendered_twice=farm.rendered_twice(job))


def test_valkey_killed_and_restarted_with_its_aof(farm):
    job = farm.submit(BOUNCING, "--frames", "1-24", "--name", "shot")
    wait_for(lambda: farm.done_tasks(job) >= 6, 120, "6 tasks done")
    before = farm.pids()
    os.kill(before["valkey"], signal.SIGKILL)
    time.sleep(3)
    farm.up()  # starts only what is missing: the same Valkey, port, password and AOF
    after = farm.pids()
    assert after["valkey"] != before["valkey"]
    assert {n: p for n, p in after.items() if n != "valkey"} == {n: p for n, p in before.items() if n != "valkey"}
    assert farm.wait_job(job) == "done"
    farm.check_frames(job, "shot", FRAMES, (640, 360))
    assert {n: p for n, p in farm.pids().items() if n != "valkey"} == {n: p for n, p in before.items() if n != "valkey"}
    report("Valkey restart", rendered_twice=farm.rendered_twice(job))


def _idle(r, workers: list[str]) -> bool:
    """No task order left on the workers' queues, and none running (read only: a registry's own
    count would clean it up, as a worker does)."""
    from rq import Queue
    from rq.registry import StartedJobRegistry

    queues = [Queue(keys.queue_name(w), connection=r) for w in workers]
    return all(q.count == 0 and r.zcard(StartedJobRegistry(queue=q).key) == 0 for q in queues)


def test_manager_killed_and_back_after_its_lock_ran_out_while_a_second_one_waits(farm, tmp_path):
    job = farm.submit(BOUNCING, "--frames", "1-24", "--name", "shot")
    wait_for(lambda: farm.done_tasks(job) >= 4, 120, "4 tasks done")
    # A second manager started meanwhile waits on the leader lock and does nothing.
    log = (tmp_path / "second-manager.log").open("w")
    second = subprocess.Popen([sys.executable, "-m", "renderfarm.manager"], env=farm.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "is leading; waiting" in (tmp_path / "second-manager.log").read_text(), 30, "the second manager to wait")
        assert "leading; database" not in (tmp_path / "second-manager.log").read_text()
    finally:
        second.terminate()
        second.wait(30)
    os.kill(farm.pids()["manager"], signal.SIGKILL)
    killed_at = time.time()
    done_at_kill = farm.done_tasks(job)
    # Away until its leader lock has run out (LEADER_TTL, 10 s) and the workers have finished what
    # was queued for them; their events wait in Redis for a manager.
    r = farm.redis()
    wait_for(lambda: r.get(keys.MANAGER_LEADER) is None, 30, "the dead manager's leader lock to run out")
    wait_for(lambda: _idle(r, farm.worker_names()), 60, "the workers to finish what was queued for them")
    assert farm.done_tasks(job) == done_at_kill
    farm.up()
    assert farm.wait_job(job) == "done"
    farm.check_frames(job, "shot", FRAMES, (640, 360))
    attempts = farm.attempts(job)
    assert all(a["state"] in ("done", "cancelled", "lost") for a in attempts)
    by_task: dict[int, list] = {}
    for a in attempts:
        by_task.setdefault(a["task"], []).append(a["state"])
    assert all(states.count("done") == 1 for states in by_task.values())
    report("manager kill", down_s=time.time() - killed_at, rendered_twice=farm.rendered_twice(job))


OUTAGE = 10.0  # seconds Redis or storage is away in the outage tests

# Renders that wait for the test's go-ahead, so that they finish while a service is away; each
# run leaves a line in started-N, so a frame rendered twice shows even where no attempt says so.
GATED = """
import sys, time, pathlib
from PIL import Image
frame, out, w, h, marks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), pathlib.Path(sys.argv[5])
with open(marks / f"started-{frame}", "a") as f:
    f.write("run\\n")
while not (marks / "go").exists():
    time.sleep(0.05)
Image.new("RGB", (w, h), (0, 0, 200)).save(out)
(marks / f"rendered-{frame}").write_text("")
"""


def _away_as_renders_finish(farm, tmp_path, service: str) -> tuple[str, float]:
    """Stop `service` while two renders run, let them finish, and start it again OUTAGE seconds
    after it stopped; returns the job (frames 1-4) and when the service stopped."""
    scene = command_scene(tmp_path, GATED, frames="1-4")
    job = farm.submit(scene, "--renderer", "command", "--name", "gated")
    marks = tmp_path / "marks"
    wait_for(lambda: len(list(marks.glob("started-*"))) == 2, 60, "two renders to start")
    pid = farm.pids()[service]
    os.kill(pid, signal.SIGTERM)  # stopped: connections are refused
    stopped_at = time.time()
    wait_for(lambda: not running(pid), OUTAGE / 2, f"{service} to stop")
    (marks / "go").write_text("")
    wait_for(lambda: len(list(marks.glob("rendered-*"))) >= 2, OUTAGE / 2, "the renders to finish")
    time.sleep(max(0.0, stopped_at + OUTAGE - time.time()))  # the outage lasts OUTAGE seconds
    farm.up()  # starts only what is missing: the same service, on the same ports and data
    return job, stopped_at


def _committed_once(farm, job: str, marks) -> None:
    """Every frame committed once, by the first attempt of its task: none failed, lost or rendered twice."""
    farm.check_frames(job, "gated", [1, 2, 3, 4], (64, 36))
    attempts = [(a["task"], a["number"], a["state"]) for a in farm.attempts(job)]
    assert attempts == [(t, 1, "done") for t in range(4)], attempts
    runs = {p.name: p.read_text().count("run") for p in marks.glob("started-*")}
    assert runs == {f"started-{f}": 1 for f in range(1, 5)}, runs
    assert farm.rendered_twice(job) == 0


def test_redis_away_10s_as_renders_finish_commits_every_frame_once(farm, tmp_path):
    job, stopped_at = _away_as_renders_finish(farm, tmp_path, "valkey")
    assert farm.wait_job(job, timeout=120) == "done"
    _committed_once(farm, job, tmp_path / "marks")
    report("Redis outage", outage_s=OUTAGE, total_s=time.time() - stopped_at)


def test_storage_away_10s_during_uploads_commits_every_frame_once(farm, tmp_path):
    job, stopped_at = _away_as_renders_finish(farm, tmp_path, "seaweedfs")
    assert farm.wait_job(job, timeout=120) == "done"
    _committed_once(farm, job, tmp_path / "marks")
    report("storage outage", outage_s=OUTAGE, total_s=time.time() - stopped_at)

