"""A finished job on a real local farm (one worker): cancel, suspend, resume and retry say there
is nothing to do, on stderr, exit 1 and change nothing; `retry --all` renders it again. Once its
attempts end, Valkey holds nothing of them: no lease and no RQ job, a failed attempt's included."""

from __future__ import annotations

import time

import pytest
from conftest import run_farm, wait_for
from faults.livefarm import LiveFarm, command_scene

pytestmark = pytest.mark.slow

# Frame 2 fails on its first run; every run leaves a line in runs-N.
FLAKY = """
import sys, pathlib
from PIL import Image
frame, out, w, h, marks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), pathlib.Path(sys.argv[5])
runs = marks / f"runs-{frame}"
with open(runs, "a") as f:
    f.write("run\\n")
if frame == "2" and runs.read_text().count("run") == 1:
    print("the texture server is down", flush=True)
    sys.exit(3)
Image.new("RGB", (w, h), (0, 120, 200)).save(out)
"""


def leftovers(r) -> list[bytes]:
    """What Valkey still holds of attempts: leases and RQ job records."""
    return sorted([*r.scan_iter(match="farm:lease:*"), *r.scan_iter(match="rq:job:*")])


def test_verbs_on_a_done_job_say_so_and_retry_all_renders_it_again(tmp_path):
    farm = LiveFarm(tmp_path, workers=1)
    farm.up()
    try:
        r = farm.redis()
        scene = command_scene(tmp_path, FLAKY, frames="1-3")
        job = farm.submit(scene, "--renderer", "command", "--name", "flaky")
        assert farm.wait_job(job, 120) == "done"
        assert [(a["task"], a["number"], a["state"]) for a in farm.attempts(job)] == [
            (0, 1, "done"), (1, 1, "failed"), (1, 2, "done"), (2, 1, "done")]
        wait_for(lambda: not leftovers(r), 30, "no lease or RQ job left")

        before = [tuple(a) for a in farm.attempts(job)]
        for verb, why in [("cancel", "nothing to cancel"), ("suspend", "nothing to suspend"),
                          ("resume", "it is not suspended"),
                          ("retry", "no failed task to retry (`--all` renders every task again)")]:
            said = run_farm(verb, job, env=farm.env, check=False)
            assert (said.returncode, said.stdout, said.stderr.strip()) == (1, "", f"farm: job {job} is done; {why}")
        assert farm.job_state(job) == "done" and [tuple(a) for a in farm.attempts(job)] == before

        retried_at = time.time()
        again = run_farm("retry", "--all", job, env=farm.env)
        assert again.returncode == 0, again
        wait_for(lambda: farm.done_tasks(job) == 3 and farm.job_state(job) == "done"
                 and len(farm.attempts(job)) == 7, 120, "the job to render again")
        fresh = [a for a in farm.attempts(job) if a["started_at"] and a["started_at"] >= retried_at - 1]
        assert sorted((a["task"], a["state"]) for a in fresh) == [(0, "done"), (1, "done"), (2, "done")]
        runs = {p.name: p.read_text().count("run") for p in (tmp_path / "marks").glob("runs-*")}
        assert runs == {"runs-1": 2, "runs-2": 3, "runs-3": 2}
        farm.check_frames(job, "flaky", [1, 2, 3], (64, 36))
        wait_for(lambda: not leftovers(r), 30, "no lease or RQ job left after the second render")
    finally:
        farm.down()
