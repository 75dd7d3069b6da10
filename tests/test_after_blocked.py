"""A job submitted --after a job that then fails, on a real local farm: the listings say it is
blocked and by what, and once the failed job is retried and done, it renders."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_job

from renderfarm.client import Submission, submit
from renderfarm.config import load_settings

pytestmark = pytest.mark.slow

# Fails until the file named by its last argument exists.
FLAKY = """
import pathlib, sys
from PIL import Image
out, w, h, fixed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])
if not fixed.exists():
    print("the texture server is down", flush=True)
    sys.exit(3)
Image.new("RGB", (w, h), (200, 90, 0)).save(out)
"""


def test_a_job_after_a_failed_one_is_blocked_until_that_one_is_retried_and_done(tmp_path):
    env = farm_env(tmp_path / "state", FARM_ALLOW_COMMANDS="1")
    run_farm("up", "-d", "-w", "1", env=env, timeout=120)
    try:
        settings = load_settings(env, cwd=tmp_path)
        script, fixed = tmp_path / "flaky.py", tmp_path / "fixed"
        script.write_text(FLAKY)
        argv = [sys.executable, str(script), "{output}", "{width}", "{height}", str(fixed)]
        scene = tmp_path / "flaky.toml"
        scene.write_text(f'[render]\nwidth = 32\nheight = 18\nframes = "1"\n\n[command]\nargv = {json.dumps(argv)}\n')
        parent = submit(settings, Submission(scene=scene, renderer="command", name="plate"))
        child = submit(settings, Submission(scene=EXAMPLES / "orbit.toml", renderer="null", frames="1-2",
                                            name="comp", after=parent))

        def status(job: str) -> dict:
            return json.loads(run_farm("status", job, "--json", env=env).stdout)

        wait_job(env, parent, ("failed",), 60)
        blocked = status(child)
        assert (blocked["state"], blocked["waiting_on"], blocked["blocked"]) == ("queued", parent, f"{parent} failed")
        assert blocked["counts"]["pending"] == 2
        assert f"blocked: {parent} failed" in run_farm("status", child, env=env).stdout
        assert f"job {child} blocked: {parent} failed" in run_farm("jobs", env=env).stdout

        # Submitted after the job failed: the submit warns that it waits (and still makes the job).
        late = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--renderer", "null", "--frames", "1",
                        "--after", parent, "--json", env=env)
        assert late.stderr.strip().endswith(
            f"job {parent} is failed: this job waits until it is retried and done (`farm retry {parent}`)"), late.stderr
        late_job = json.loads(late.stdout)["id"]
        # ...and after a cancelled one.
        held = submit(settings, Submission(scene=EXAMPLES / "orbit.toml", renderer="null", frames="1", name="held",
                                           after=parent))
        run_farm("cancel", held, env=env)
        warned = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--renderer", "null", "--after", held, env=env)
        assert f"job {held} is cancelled: this job waits until it is retried and done" in warned.stderr, warned.stderr

        fixed.touch()
        run_farm("retry", parent, env=env)
        wait_job(env, child, ("done",), 60)  # the job after it renders...
        wait_job(env, late_job, ("done",), 60)  # ...and so does the one submitted after the failure
        first, second = status(parent), status(child)
        assert first["state"] == "done" and second["blocked"] is None and second["waiting_on"] is None
        attempts = [a for t in json.loads(run_farm("tasks", child, "--json", env=env).stdout) for a in t["attempts"]]
        assert min(a["started_at"] for a in attempts) >= first["finished_at"]
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(tmp_path / "state")
