"""A worker whose scratch disk is full or read-only: each task it takes fails, visibly, and goes to
the other worker; once the disk is mended it takes work again (a real 5 MB tmpfs; needs root)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from conftest import run_farm, wait_for
from livefarm import BOUNCING, LiveFarm, report

pytestmark = pytest.mark.slow

NODE = "bad-disk-node"
ERRORS = {"full": "No space left on device", "read-only": "Read-only file system"}


class BadDisk:
    """A 5 MB tmpfs for a worker's scratch directory, that goes bad (filled to the last byte, or
    remounted read-only) and is mended."""

    def __init__(self, mount, how: str) -> None:
        self.mount, self.how, self.error = mount, how, ERRORS[how]
        self.filler = mount / "filler"

    def spoil(self) -> None:
        if self.how == "full":
            argv = ["dd", "if=/dev/zero", f"of={self.filler}", "bs=64k"]
            fill = subprocess.run(argv, check=False, capture_output=True, text=True)
            assert self.error in fill.stderr, fill.stderr
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(self.mount)], check=True)

    def mend(self) -> None:
        if self.how == "full":
            self.filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(self.mount)], check=True)


@pytest.fixture(params=list(ERRORS))
def disk(request, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "scratch"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], check=True)
    try:
        yield BadDisk(mount, request.param)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture()
def farm(tmp_path, disk):
    """A farm of one worker, and a second one (NODE) started on the tmpfs, which then goes bad."""
    f = LiveFarm(tmp_path, workers=1)
    f.up()
    log = (tmp_path / f"{NODE}.log").open("wb")
    from nodekit import cli_node

    from renderfarm.localfarm.services import node_env

    argv = [*cli_node(f.env, NODE, tmp_path), "--scratch", str(disk.mount)]
    node = subprocess.Popen(argv, env=node_env(f.env), stdout=log, stderr=subprocess.STDOUT)
    try:
        r = f.redis()
        from renderfarm import presence

        wait_for(lambda: NODE in presence.live_workers(r), 30, f"{NODE} to beat")
        # Known to the manager (its row written) before a job comes, so it is handed tasks.
        wait_for(lambda: f.query("select 1 from workers where name = ?", NODE), 30, f"the manager to see {NODE}")
        disk.spoil()
        yield f
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
        f.down()


def test_a_bad_scratch_disk_fails_each_task_over_and_the_worker_works_again_once_mended(farm, disk):
    job = farm.submit(BOUNCING, "--frames", "1-6", "--name", "shot")
    assert farm.wait_job(job, timeout=120) == "done"
    farm.check_frames(job, "shot", list(range(1, 7)), (640, 360))
    attempts = farm.attempts(job)
    took = [a for a in attempts if a["worker"] == NODE]
    assert took, f"{NODE} was handed no task"
    for a in took:
        assert a["state"] == "failed", dict(a)
        assert disk.error in (a["error"] or ""), dict(a)
        # The stored log ends with the failure, as the manager recorded it.
        shown = run_farm("log", f"{job}:{a['task']}/{a['number']}", env=farm.env).stdout
        assert f"# failed: {a['error']}" in shown, shown
        others = [b for b in attempts if b["task"] == a["task"] and b["worker"] != NODE]
        assert [b["state"] for b in others] == ["done"], [dict(b) for b in others]

    disk.mend()
    second = farm.submit(BOUNCING, "--frames", "1-6", "--name", "mended")
    assert farm.wait_job(second, timeout=120) == "done"
    farm.check_frames(second, "mended", list(range(1, 7)), (640, 360))
    rendered = [a for a in farm.attempts(second) if a["worker"] == NODE]
    assert rendered and all(a["state"] == "done" for a in rendered), [dict(a) for a in rendered]
    report(f"scratch disk: {disk.how}", failed_over=len(took), rendered_after_mending=len(rendered))
