"""The manager and real farm-worker processes on a private Valkey and SeaweedFS: dispatch over
per-worker queues, attempt-scoped outputs, retries, warm shutdown, renderers dying with workers."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from conftest import EXAMPLES, s3_settings, wait_for
from nodekit import enrolled_worker_argv, worker_env

from renderfarm import keys, presence
from renderfarm.client import Submission, submit
from renderfarm.db import make_engine, session_scope
from renderfarm.manager import Manager
from renderfarm.models import Attempt
from renderfarm.redisconn import connect
from renderfarm.status import job_status, list_tasks, resolve_job
from renderfarm.storage import open_storage

pytestmark = pytest.mark.slow

SHOT = EXAMPLES / "orbit.toml"


class Farm:
    """A manager thread and worker subprocesses sharing one set of settings."""

    def __init__(self, settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.stop = threading.Event()
        self.manager = Manager(settings, poll_ms=50)
        self.thread = threading.Thread(target=self.manager.run, args=(self.stop,), daemon=True)
        self.workers: dict[str, subprocess.Popen] = {}
        self.engine = make_engine(settings.database_url)
        self.r = connect(settings)

    def start(self, *names: str) -> None:
        self.thread.start()
        wait_for(lambda: self.r.exists(keys.MANAGER_LEADER), 30, "the manager to lead")
        for name in names:
            self.add_worker(name)
        wait_for(lambda: set(names) <= set(presence.live_workers(self.r)), 30, "workers to beat")

    def add_worker(self, name: str) -> subprocess.Popen:
        argv = enrolled_worker_argv(self.settings, name, self.tmp)
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=worker_env(self.settings), stdout=log, stderr=subprocess.STDOUT)
        self.workers[name] = proc
        return proc

    def status(self, job_id: str):
        with session_scope(self.engine) as s:
            return job_status(s, resolve_job(s, job_id))

    def tasks(self, job_id: str):
        with session_scope(self.engine) as s:
            return list_tasks(s, resolve_job(s, job_id))

    def wait_job(self, job_id: str, timeout: float = 90):
        return wait_for(lambda: (st := self.status(job_id)).state in ("done", "failed") and st, timeout, f"job {job_id}")

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        self.stop.set()
        self.thread.join(30)
        self.engine.dispose()


@pytest.fixture()
def farm(tmp_path, redis_url, seaweed):
    bucket = "t" + secrets.token_hex(6)
    settings = s3_settings(
        seaweed, tmp_path / "state", bucket, FARM_REDIS_URL=redis_url,
        FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.db'}", FARM_HEARTBEAT_TTL="3",
    )
    f = Farm(settings, tmp_path)
    yield f
    f.close()


def test_two_workers_share_a_job_and_frames_are_promoted(farm):
    farm.start("wa", "wb")
    job_id = submit(farm.settings, Submission(scene=SHOT, frames="1-8", name="orbit"))
    status = farm.wait_job(job_id)
    assert status.state == "done" and status.frames_done == 8
    tasks = farm.tasks(job_id)
    assert {t.worker for t in tasks} == {"wa", "wb"}
    assert all(len(t.attempts) == 1 and t.attempts[0]["state"] == "done" for t in tasks)
    storage = open_storage(farm.settings)
    keys_ = sorted(o.key for o in storage.list(f"jobs/{job_id}/"))
    frames = [k for k in keys_ if "/frames/" in k]
    assert frames == [f"jobs/{job_id}/frames/orbit.{n:04d}.png" for n in range(1, 9)]
    # Each node wrote under its own prefix; attempts keep only their logs once their frames are
    # promoted (the manager deletes the attempts' copies in bulk, within a few seconds).
    logs = sorted(f"nodes/{t.worker}/jobs/{job_id}/{t.index}/1/log.txt" for t in tasks)

    def attempt_keys() -> list[str]:
        return sorted(o.key for node in ("wa", "wb") for o in storage.list(f"nodes/{node}/jobs/{job_id}/"))

    wait_for(lambda: attempt_keys() == logs, 15, "attempt copies deleted")
    # Each worker got its own queue and nothing is left in them.
    assert farm.r.llen(f"rq:queue:{keys.queue_name('wa')}") == 0


def test_a_failing_task_is_retried_then_fails_the_job(farm, tmp_path):
    # The floor's normal passes through (0, 0, 0) at frame 2: the renderer refuses that frame every time.
    scene = tmp_path / "breaks.json"
    scene.write_text(json.dumps({
        "render": {"width": 32, "height": 18, "frames": "1-3", "samples": 1},
        "camera": {"position": [0, 1, 5], "look_at": [0, 0, 0]},
        "objects": {"floor": {"type": "plane", "normal": [0, 1, 0]}},
        "animate": [{"path": "objects.floor.normal[1]", "keys": [[1, 1.0], [3, -1.0]]}],
    }))
    farm.start("wa", "wb")
    job_id = submit(farm.settings, Submission(scene=scene))
    status = farm.wait_job(job_id)
    assert status.state == "failed"
    assert status.error == f"1 task failed: {job_id}:1"
    tasks = {t.index: t for t in farm.tasks(job_id)}
    assert [tasks[i].state for i in range(3)] == ["done", "failed", "done"]
    assert [a["state"] for a in tasks[1].attempts] == ["failed", "failed", "failed"]
    assert "normal" in tasks[1].error, tasks[1].error


def test_sigterm_lets_a_worker_finish_its_task_then_exit(farm):
    farm.start("wa")
    # Three tasks: the worker holds at most two (one rendering, one prefetched), so one is left
    # whichever task it renders when the signal lands.
    job_id = submit(farm.settings, Submission(scene=EXAMPLES / "bouncing-balls.toml", frames="1-12", chunk=4))
    wait_for(lambda: any(t.state == "running" for t in farm.tasks(job_id)), 30, "a task to start")
    farm.workers["wa"].send_signal(signal.SIGTERM)
    assert farm.workers["wa"].wait(60) == 0
    tasks = farm.tasks(job_id)
    by_wa = [a for t in tasks for a in t.attempts if a["worker"] == "wa"]
    # It finished what it was rendering and cut no render short: each of its attempts is done,
    # or was handed back before it started.
    assert any(a["state"] == "done" for a in by_wa), by_wa
    assert all(a["state"] == "done" or a["started_at"] is None for a in by_wa), by_wa
    left = [t.index for t in tasks if t.state != "done"]
    assert left, tasks  # it took nothing new once told to stop
    # What it did not render goes back to pending and a new worker finishes the job.
    farm.add_worker("wb")
    status = farm.wait_job(job_id)
    assert status.state == "done"
    assert all(farm.tasks(job_id)[i].worker == "wb" for i in left)


def test_renderer_dies_with_its_worker_and_the_task_moves_on(farm):
    farm.start("wa")
    job_id = submit(farm.settings, Submission(scene=EXAMPLES / "bouncing-balls.toml", frames="1-8", chunk=8))
    wait_for(lambda: any(t.state == "running" for t in farm.tasks(job_id)), 30, "the task to start")
    worker = farm.workers["wa"]

    def renderer_pids() -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    renderers = wait_for(renderer_pids, 20, "the renderer subprocess")
    worker.kill()
    worker.wait(10)
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in renderers), 10, "the renderer to die")
    # After the heartbeat TTL (3 s) and two reaper sweeps the task goes to another worker.
    farm.add_worker("wb")
    status = farm.wait_job(job_id, timeout=120)
    assert status.state == "done"
    attempts = farm.tasks(job_id)[0].attempts
    assert [(a["worker"], a["state"]) for a in attempts] == [("wa", "lost"), ("wb", "done")]


def test_a_second_manager_waits_for_the_first(farm):
    farm.start()
    second_stop = threading.Event()
    second = Manager(farm.settings, poll_ms=50)
    thread = threading.Thread(target=second.run, args=(second_stop,), daemon=True)
    thread.start()
    time.sleep(2.0)
    first_token = farm.manager.lock.token
    assert farm.r.get(keys.MANAGER_LEADER).decode() == first_token
    farm.stop.set()
    farm.thread.join(30)
    wait_for(lambda: (v := farm.r.get(keys.MANAGER_LEADER)) and v.decode() == second.lock.token, 20, "the second manager to lead")
    second_stop.set()
    thread.join(30)
    with session_scope(farm.engine) as s:
        assert s.scalar(select(func.count()).select_from(Attempt)) == 0
