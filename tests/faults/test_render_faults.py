"""Renderers that hang, or exit 0 without a usable image: killed, failed, retried elsewhere."""

from __future__ import annotations

import pytest
from livefarm import LiveFarm, command_scene, report

pytestmark = pytest.mark.slow

TIMEOUT = 4.0

HANGS_FIRST_TIME = """
import sys, time, pathlib
from PIL import Image
frame, out, w, h, marks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), pathlib.Path(sys.argv[5])
mark = marks / f"tried-{frame}"
if not mark.exists():
    mark.write_text("hang")
    time.sleep(600)
Image.new("RGB", (w, h), (0, 128, 0)).save(out)
"""

BAD_OUTPUTS = """
import sys
from PIL import Image
frame, out, w, h = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if frame == 1:
    pass                                   # exit 0, no file
elif frame == 2:
    open(out, "wb").close()                # a 0-byte file
elif frame == 3:
    Image.new("RGB", (w + 1, h)).save(out)  # the wrong size
elif frame == 4:
    open(out, "wb").write(b"not a png")    # undecodable
else:
    Image.new("RGB", (w, h), (200, 0, 0)).save(out)
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """One farm of two workers for both tests: each job fails or is retried on its own."""
    f = LiveFarm(tmp_path_factory.mktemp("render-faults"))
    f.up()
    yield f
    f.down()


def test_a_hanging_renderer_is_killed_at_its_timeout_and_retried_elsewhere(farm, tmp_path):
    scene = command_scene(tmp_path, HANGS_FIRST_TIME, frames="1")
    job = farm.submit(scene, "--renderer", "command", "--timeout", f"{TIMEOUT:g}", "--name", "hang")
    assert farm.wait_job(job, timeout=90) == "done"
    first, second = farm.attempts(job)
    assert first["state"] == "failed" and "timed out" in first["error"]
    took = first["finished_at"] - first["started_at"]
    assert took <= TIMEOUT + 10
    assert second["state"] == "done" and second["worker"] != first["worker"]
    farm.check_frames(job, "hang", [1], (64, 36))
    report("hanging renderer", killed_after_s=took, timeout_s=TIMEOUT, rendered_twice=farm.rendered_twice(job))


def test_exit_0_without_a_valid_image_fails_and_the_job_names_the_tasks(farm, tmp_path):
    scene = command_scene(tmp_path, BAD_OUTPUTS, frames="1-6")
    job = farm.submit(scene, "--renderer", "command", "--name", "bad")
    assert farm.wait_job(job, timeout=120) == "failed"
    error = farm.query("select error from jobs where id = ?", job)[0]["error"]
    assert error == f"4 tasks failed: {job}:0, {job}:1, {job}:2, {job}:3"
    by_task: dict[int, list] = {}
    for a in farm.attempts(job):
        by_task.setdefault(a["task"], []).append(a)
    for task in range(4):
        assert [a["state"] for a in by_task[task]] == ["failed"] * 3, task
    reasons = {t: by_task[t][0]["error"] for t in range(4)}
    assert "without writing frame(s) 1" in reasons[0]
    assert "empty file" in reasons[1]
    assert "65x36 pixels, expected 64x36" in reasons[2]
    assert "not a PNG file" in reasons[3]
    assert [a["state"] for a in by_task[4]] == ["done"] and [a["state"] for a in by_task[5]] == ["done"]
    keys = sorted(o.key for o in farm.storage().list(f"jobs/{job}/frames/"))
    assert keys == [f"jobs/{job}/frames/bad.0005.png", f"jobs/{job}/frames/bad.0006.png"]
    report("bad outputs", failed_attempts=12, frames_done=2)
