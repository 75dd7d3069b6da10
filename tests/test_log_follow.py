"""`farm log -f` on a running builtin render: progress lines while it runs, then the rest of the
stored log once the attempt ends."""

from __future__ import annotations

import queue
import subprocess
import threading

import pytest
from conftest import EXAMPLES, farm_command, wait_for
from faults.livefarm import LiveFarm

pytestmark = pytest.mark.slow


def test_following_a_running_builtin_task_shows_progress_before_it_ends(tmp_path):
    """The builtin renderer used to print only protocol lines, which the worker keeps out of the
    live log: `-f` showed nothing for the whole render, then only `ended: done`."""
    scene = tmp_path / "slow-balls.toml"  # one 640x360 frame of 3 s or so
    scene.write_text((EXAMPLES / "bouncing-balls.toml").read_text().replace("samples = 4", "samples = 32"))
    farm = LiveFarm(tmp_path, workers=1)
    farm.up()
    follower = None
    try:
        job = farm.submit(scene, "--frames", "3")
        wait_for(lambda: any(a["state"] == "running" for a in farm.attempts(job)), 60, "the render to start")
        follower = subprocess.Popen(
            [*farm_command(), "log", "-f", f"{job}:0"], env=farm.env, stdout=subprocess.PIPE, text=True
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=lambda: [*map(lines.put, follower.stdout), lines.put(None)], daemon=True).start()
        seen, state_at_first_progress = [], None
        while (line := lines.get(timeout=120)) is not None:
            seen.append(line.rstrip("\n"))
            if state_at_first_progress is None and line.startswith("rendering frame 3"):
                state_at_first_progress = farm.attempts(job)[0]["state"]
        assert follower.wait(timeout=30) == 0
        assert state_at_first_progress == "running", seen
        assert seen[-1] == f"# attempt {job}:0/1 ended: done"
        # The rest of the stored log follows, once: how the renderer ended, not the live lines again.
        assert any(line.startswith("# exit 0 after") for line in seen), seen
        assert seen.count("rendering frame 3: 640x360, 32 samples a pixel") == 1, seen
        assert sum(line.startswith("rendered frame 3 in") for line in seen) == 1, seen
        assert not [line for line in seen if line.startswith("progress ")], seen
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        farm.down()
