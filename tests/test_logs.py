"""Every attempt's stored log holds all of its renderer's output and ends with how it ended."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES
from faults.livefarm import LiveFarm

pytestmark = pytest.mark.slow


def test_every_stored_log_holds_the_renderers_output_and_its_exit(tmp_path):
    """48 one-frame tasks on 2 workers: the finisher used to upload a log still open and
    unflushed, so about a quarter of them held only the command line."""
    farm = LiveFarm(tmp_path, workers=2)
    farm.up()
    try:
        job = farm.submit(EXAMPLES / "orbit.toml", "--frames", "1-48")
        assert farm.wait_job(job) == "done"
        rows = farm.query(
            "select t.[index] task, a.log_key from attempts a join tasks t on t.id = a.task_id "
            "where a.job_id = ? and a.state = 'done' order by t.[index]", job
        )
        assert len(rows) == 48
        storage = farm.storage()
        short = []
        for row in rows:
            assert row["log_key"], f"task {row['task']}: no log stored"
            lines = storage.get_bytes(row["log_key"]).decode().splitlines()
            output = [ln for ln in lines if not ln.startswith("#")]
            if not output or not lines[-1].startswith("# exit 0 after"):
                short.append((row["task"], lines))
        assert not short, f"{len(short)} of 48 stored logs are cut short, e.g. {short[0]}"
    finally:
        farm.down()


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (dict(returncode=0), "exit 0 after 1.50 s (cpu 1.00 s)"),
        (dict(returncode=3), "exit 3 after 1.50 s (cpu 1.00 s)"),
        (dict(returncode=-9), "killed by SIGKILL after 1.50 s (cpu 1.00 s)"),
        (dict(returncode=None, timed_out=True), "timed out after 1.50 s (cpu 1.00 s): the limit is 60 s; "
                                                "the renderer's process group was killed"),
        (dict(returncode=None, stopped=True), "stopped after 1.50 s (cpu 1.00 s): the render is no longer this "
                                              "worker's; its process group was killed"),
    ],
)
def test_a_log_ends_with_how_the_renderer_ended_never_exit_none(result, expected):
    from renderfarm.renderers.process import RunResult
    from renderfarm_worker.render import ending

    assert ending(RunResult(**result, seconds=1.5, cpu_seconds=1.0), 60) == expected
