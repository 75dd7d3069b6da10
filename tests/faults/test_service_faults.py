"""Valkey wiped or killed, SeaweedFS stopped, the manager killed: the job still completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import wait_for
from livefarm import BOUNCING, LiveFarm, report

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


def test_manager_killed_and_back_20s_later_while_a_second_one_waits(farm, tmp_path):
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
    time.sleep(20)
    # Workers finished what was queued for them; their events wait in Redis for a manager.
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


def test_object_storage_stopped_for_20s(farm):
    job = farm.submit(BOUNCING, "--frames", "1-24", "--name", "shot")
    wait_for(lambda: farm.done_tasks(job) >= 4, 120, "4 tasks done")
    os.kill(farm.pids()["seaweedfs"], signal.SIGTERM)  # stopped: connections are refused
    stopped_at = time.time()
    time.sleep(20)
    farm.up()  # starts only what is missing: the same SeaweedFS, on the same ports and data
    assert farm.wait_job(job, timeout=240) == "done"
    farm.check_frames(job, "shot", FRAMES, (640, 360))
    failed = [a for a in farm.attempts(job) if a["state"] == "failed"]
    report("storage outage", outage_s=20.0, failed_attempts=len(failed), rendered_twice=farm.rendered_twice(job),
           total_s=time.time() - stopped_at)
