"""The local farm's process logs rotate by size (renderfarm.localfarm.logrotate): the supervisor
copies a log past the size aside and empties it under a process that goes on writing to it (its
next line lands at the start: no hole, nothing lost while it wrote nothing), and only so many
rotated copies are kept."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from conftest import wait_for

from renderfarm.localfarm import logrotate, services

# Writes numbered 1 KiB lines past the rotation size, waits for a go-ahead, writes 100 more.
WRITER = """
import os, sys, time
flag, lines = sys.argv[1], int(sys.argv[2])
def write(n):
    sys.stdout.write(f"{n:08d} " + "x" * 1014 + "\\n")
for n in range(lines):
    write(n)
sys.stdout.flush()
while not os.path.exists(flag):
    time.sleep(0.01)
for n in range(lines, lines + 100):
    write(n)
sys.stdout.flush()
"""


def test_the_supervisor_rotates_a_log_past_its_size_under_a_process_still_writing(tmp_path: Path) -> None:
    from renderfarm.localfarm.runfile import FarmProcess, RunFile, write_run_file
    from renderfarm.localfarm.supervisor import Supervisor

    log = tmp_path / "logs" / "writer.log"
    lines = logrotate.LOG_MAX_BYTES // 1024 + 64  # a little past the size
    flag = tmp_path / "go"
    argv = [sys.executable, "-c", WRITER, str(flag), str(lines)]
    writer = services.spawn(argv, cwd=tmp_path, env=dict(os.environ), log_path=log, detach=True)
    try:
        entry = FarmProcess("worker", "writer", writer.pid, services.process_start_time(writer.pid), str(log), argv,
                            started_at=time.time())
        me = FarmProcess("supervisor", "supervisor", os.getpid(), services.process_start_time(os.getpid()), "", [])
        write_run_file(tmp_path, RunFile([entry], me, True, time.time()))
        wait_for(lambda: log.stat().st_size == lines * 1024, 30, "the writer to write past the size")

        assert Supervisor(tmp_path, dict(os.environ)).round()
        old = logrotate.rotated(log, 1)
        assert old.stat().st_size == lines * 1024 and log.stat().st_size == 0
        flag.touch()
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
    data = log.read_bytes()
    assert b"\0" not in data  # appended at the start of the emptied file, not at its old offset
    numbers = [int(line[:8]) for line in data.splitlines()]
    assert numbers == list(range(lines, lines + 100))
    assert int(old.read_bytes().splitlines()[-1][:8]) == lines - 1  # nothing lost between the two


def test_only_so_many_rotated_copies_are_kept(tmp_path: Path) -> None:
    log = tmp_path / "manager.log"
    small = tmp_path / "worker-1.log"
    small.write_text("short\n")
    for n in range(4):
        log.write_text(f"generation {n}\n" * 10)
        assert logrotate.rotate_logs(tmp_path, max_bytes=100, keep=2) == [log]
        assert log.stat().st_size == 0
    assert logrotate.rotated(log, 1).read_text().startswith("generation 3")
    assert logrotate.rotated(log, 2).read_text().startswith("generation 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manager.log", "manager.log.1", "manager.log.2",
                                                          "worker-1.log"]
    assert small.read_text() == "short\n"  # under the size: left alone
    assert not logrotate.rotate(tmp_path / "missing.log", max_bytes=1)
