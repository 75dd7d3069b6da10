"""`farm log -f` on a running builtin render: progress lines while it runs, then the rest of the
stored log once the attempt ends."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import EXAMPLES, farm_command, wait_for
from faults.livefarm import LiveFarm

from renderfarm import keys

pytestmark = pytest.mark.slow


def renderers(farm: LiveFarm) -> list[int]:
    """The builtin renderer's processes (a task's, or a warm session's) under the farm's workers."""
    found, parents = [], [farm.pids()[w] for w in farm.worker_names()]
    while parents:
        children = [c for p in parents for c in farm.children(p)]
        for child in children:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"renderfarm.renderers.builtin" in argv:
                found.append(child)
        parents = children
    return found


def test_following_a_running_builtin_task_shows_progress_before_it_ends(tmp_path):
    """The builtin renderer used to print only protocol lines, which the worker keeps out of the
    live log: `-f` showed nothing for the whole render, then only `ended: done`."""
    scene = tmp_path / "slow-balls.toml"  # one 640x360 frame of 3 s or so (more under load)
    scene.write_text((EXAMPLES / "bouncing-balls.toml").read_text().replace("samples = 4", "samples = 32"))
    farm = LiveFarm(tmp_path, workers=1)
    farm.up()
    follower = None
    try:
        job = farm.submit(scene, "--frames", "3")
        wait_for(lambda: any(a["state"] == "running" for a in farm.attempts(job)), 60, "the render to start")
        [(attempt_id, worker)] = [tuple(a) for a in farm.query("select id, worker from attempts where job_id = ?", job)]
        r, stream = farm.redis(), keys.log_stream(worker, attempt_id)
        wait_for(lambda: any(b"rendering frame 3" in f.get(b"l", b"") for _, f in r.xrange(stream)), 60,
                 "the first progress line in the live log")
        # Held until the follower has shown that line: `farm log -f` takes seconds to start on a
        # loaded machine, as long as the render itself, and would otherwise find the attempt ended.
        held = renderers(farm)
        assert held, "no builtin renderer process found under the worker"
        for pid in held:
            os.kill(pid, signal.SIGSTOP)
        try:
            assert farm.attempts(job)[0]["state"] == "running", "the render ended before it was held"
            follower = subprocess.Popen(
                [*farm_command(), "log", "-f", f"{job}:0"], env=farm.env, stdout=subprocess.PIPE, text=True
            )
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=lambda: [*map(lines.put, follower.stdout), lines.put(None)], daemon=True).start()
            seen, state_at_first_progress = [], None
            while (line := lines.get(timeout=120)) is not None:
                seen.append(line.rstrip("\n"))
                if line.startswith("rendering frame 3"):
                    state_at_first_progress = farm.attempts(job)[0]["state"]
                    break
        finally:
            for pid in held:
                os.kill(pid, signal.SIGCONT)
        while (line := lines.get(timeout=120)) is not None:
            seen.append(line.rstrip("\n"))
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
