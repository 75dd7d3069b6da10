"""`farm top` shows the local farm's restarts (as `farm doctor` counts them) and a farm left
without its supervisor, on its summary line, read from the run file its supervisor keeps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

from renderfarm_cli.top import farm_top
from test_top_keys import SIZE, until

from renderfarm.config import load_settings
from renderfarm.localfarm import services
from renderfarm.localfarm.health import restart_summary
from renderfarm.localfarm.runfile import FarmProcess, RunFile, write_run_file


def test_the_summary_line_counts_the_local_farms_restarts(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        worker = FarmProcess("worker", "host-w1", sleeper.pid, services.process_start_time(sleeper.pid), "", [],
                             restarts=2, started_at=time.time())
        manager = FarmProcess("manager", "manager", sleeper.pid, services.process_start_time(sleeper.pid), "", [],
                              restarts=1, started_at=time.time())
        me = FarmProcess("supervisor", "supervisor", os.getpid(), services.process_start_time(os.getpid()), "", [])
        write_run_file(state, RunFile([manager, worker], me, True, time.time()))
        assert restart_summary(state) == "local farm 3 restart(s): manager 1, host-w1 2"
        settings = load_settings({"FARM_STATE_DIR": str(state)}, cwd=tmp_path)

        async def drive() -> None:
            app = farm_top(settings)
            async with app.run_test(size=SIZE) as pilot:
                summary = app.farm.query_one("#summary")
                await until(pilot, lambda: "3 restart(s): manager 1, host-w1 2" in str(summary.render()), 10,
                            "the restarts on the summary line")
                # The supervisor gone: the farm is said to be unsupervised.
                write_run_file(state, RunFile([manager, worker], None, True, time.time()))
                app.farm.show(app.farm.snap)
                assert "3 restart(s): manager 1, host-w1 2; unsupervised" in str(summary.render())
                await pilot.press("q")

        asyncio.run(drive())
    finally:
        sleeper.kill()
        sleeper.wait()
