"""A worker whose scratch disk is full or read-only: each task it takes fails, visibly, and goes to
the other worker; once the disk is mended it takes work again, of a job already running (a real
5 MB tmpfs; needs root)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from conftest import run_farm, wait_for
from livefarm import BOUNCING, LiveFarm, report

pytestmark = pytest.mark.slow

NODE = "bad-disk-node"
STEADY = "steady"  # the other worker's name and tag: a job requiring it is not NODE's to take
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


def start_node(f: LiveFarm, folder, name: str, *args: str, scratch=None) -> tuple[subprocess.Popen, object]:
    """A worker enrolled with `farm node add NAME ARGS` and started, beating and known to the
    manager (its row written, so it is handed tasks); the process and its open log."""
    from nodekit import cli_node

    from renderfarm import presence
    from renderfarm.localfarm.services import node_env

    log = (folder / f"{name}.log").open("wb")
    argv = cli_node(f.env, name, folder, *args) + (["--scratch", str(scratch)] if scratch else [])
    node = subprocess.Popen(argv, env=node_env(f.env), stdout=log, stderr=subprocess.STDOUT)
    r = f.redis()
    wait_for(lambda: name in presence.live_workers(r), 30, f"{name} to beat")
    wait_for(lambda: f.query("select 1 from workers where name = ?", name), 30, f"the manager to see {name}")
    return node, log


@pytest.fixture()
def farm(tmp_path, disk):
    """A farm of two enrolled workers: STEADY (tagged so) and NODE (untagged), started on the
    tmpfs, which then goes bad."""
    f = LiveFarm(tmp_path, workers=0)
    f.up()
    started = []
    try:
        started.append(start_node(f, tmp_path, STEADY, "--tag", STEADY))
        started.append(start_node(f, tmp_path, NODE, scratch=disk.mount))
        disk.spoil()
        yield f
    finally:
        for node, log in started:
            node.send_signal(signal.SIGTERM)
        for node, log in started:
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

    # Mended mid-job: a long job that at first only the STEADY worker may render (NODE, still on
    # its bad disk, takes none of it, so it is not blocklisted for it); once it renders, the disk
    # is mended and the job opened to any worker; NODE then renders some of it while it runs.
    long = farm.submit(BOUNCING, "--frames", "1-200", "--name", "long", "--require", STEADY)
    wait_for(lambda: any(a["state"] in ("running", "done") for a in farm.attempts(long)), 120,
             f"the long job to render on {STEADY}")
    assert not [a for a in farm.attempts(long) if a["worker"] == NODE]
    disk.mend()
    run_farm("set", long, "--any-worker", env=farm.env)

    def rendered() -> list:
        return [a for a in farm.attempts(long) if a["worker"] == NODE and a["state"] == "done"]

    wait_for(rendered, 120, f"{NODE} to render a task of the running job once mended")
    assert farm.job_state(long) == "running", "the long job ended before NODE rendered any of it"
    took_after = [a for a in farm.attempts(long) if a["worker"] == NODE]
    assert all(a["state"] in ("queued", "running", "done") for a in took_after), [
        dict(a) for a in took_after]
    run_farm("cancel", long, env=farm.env)
    assert farm.wait_job(long, timeout=120) == "cancelled"
    report(f"scratch disk: {disk.how}", failed_over=len(took), rendered_after_mending=len(rendered()))
