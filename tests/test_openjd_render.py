"""An OpenJD attempt on a real worker runtime (a real Valkey, file storage): refused unless the
worker opts in; the files a task writes land under the attempt's prefix with their relative
paths; its output is the attempt's log; an openjd_fail line is the failure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import redis
from nodekit import unenrolled
from renderfarm_worker import openjd_render, runtime
from renderfarm_worker.attemptlog import AttemptLog

from renderfarm.config import load_settings
from renderfarm.errors import RenderError
from renderfarm.wire import TaskOrder

SCRIPT = ("echo openjd_progress: 50; mkdir -p {{Param.OutputDir}}; "
          "if [ {{Task.Param.Frame}} = 9 ]; then echo 'openjd_fail: no licence'; exit 1; fi; "
          "printf 'frame %s' {{Task.Param.Frame}} > {{Param.OutputDir}}/f.{{Task.Param.Frame}}.txt")
TEMPLATE = {
    "specificationVersion": "jobtemplate-2023-09", "name": "shot",
    "parameterDefinitions": [
        {"name": "OutputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"}],
    "steps": [{"name": "render",
               "parameterSpace": {"taskParameterDefinitions": [
                   {"name": "Frame", "type": "INT", "range": "1-10"}]},
               "script": {"actions": {"onRun": {"command": "bash", "args": ["-c", SCRIPT]}}}}],
}


def openjd(frame: int) -> dict:
    return {"template": TEMPLATE, "job_parameters": {"OutputDir": "/home/artist/renders"},
            "step": "render", "task_parameters": {"Frame": {"type": "INT", "value": str(frame)}}}


def an_order(frame: int) -> TaskOrder:
    return TaskOrder(attempt_id=10 + frame, attempt=1, task_id=frame, task_index=frame, node="w",
                     job_id="a0000001", name="shot", renderer="null",
                     scene_key=f"scenes/{'0' * 64}.toml", scene_sha256="0" * 64, frames=(1,),
                     width=64, height=36, timeout=60.0)


@pytest.fixture
def worker(redis_url: str, tmp_path: Path):
    def make(**env: str) -> runtime.WorkerRuntime:
        settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
                                  "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}", **env},
                                 cwd=tmp_path)
        rt = runtime.WorkerRuntime(settings=settings, credentials=unenrolled("w", settings),
                                   pool="default", scratch=tmp_path / "scratch",
                                   r=redis.Redis.from_url(redis_url))
        made.append(rt)
        return rt

    made: list[runtime.WorkerRuntime] = []
    yield make
    for rt in made:
        openjd_render.close(rt)


def attempt(rt: runtime.WorkerRuntime, tmp_path: Path, frame: int):
    workdir = tmp_path / f"attempt-{frame}"
    (workdir / "out").mkdir(parents=True)
    log = AttemptLog(workdir / "render.log")
    try:
        return openjd_render.render_openjd(rt, an_order(frame), openjd(frame), workdir, log), \
            (workdir / "render.log").read_text()
    finally:
        log.close()


def test_a_worker_that_did_not_opt_in_refuses_openjd_tasks(worker, tmp_path):
    with pytest.raises(RenderError, match="FARM_ALLOW_OPENJD=1"):
        attempt(worker(), tmp_path, 1)


def test_a_worker_whose_render_user_cannot_run_openjd_actions_neither_offers_nor_runs_them(worker, tmp_path):
    """openjd-sessions runs an action as another user with `sudo -u USER -i`: with a render user
    whose login shell is nologin (nobody's), or without sudo, a worker told to isolate its renders
    runs none, rather than run them as itself (the node's own user). The render user's side is
    tests/security/test_openjd_render_user.py."""
    from renderfarm_worker.capabilities import detect

    rt = worker(FARM_ALLOW_OPENJD="1", FARM_RENDER_USER="nobody")
    assert "openjd" not in detect(rt.settings, ())["renderers"]
    assert "openjd" in detect(worker(FARM_ALLOW_OPENJD="1").settings, ())["renderers"]
    with pytest.raises(RenderError, match=r"^FARM_ALLOW_OPENJD with FARM_RENDER_USER=nobody.*: this worker takes no "
                                          r"OpenJD tasks$"):
        attempt(rt, tmp_path, 1)


def test_outputs_are_uploaded_under_the_attempt_with_their_relative_paths(worker, tmp_path):
    rt = worker(FARM_ALLOW_OPENJD="1")
    for frame in (1, 2):
        outputs, log = attempt(rt, tmp_path, frame)
        assert [o.path for o in outputs] == [f"OutputDir/renders/f.{frame}.txt"]
        stored = rt.storage.get_bytes(f"{an_order(frame).prefix}outputs/{outputs[0].path}")
        assert stored == f"frame {frame}".encode()
        assert outputs[0].sha256 == hashlib.sha256(stored).hexdigest()
        assert "openjd_progress: 50" in log


def test_an_openjd_fail_line_is_the_attempts_failure(worker, tmp_path):
    rt = worker(FARM_ALLOW_OPENJD="1")
    with pytest.raises(RenderError, match="step render: no licence"):
        attempt(rt, tmp_path, 9)
