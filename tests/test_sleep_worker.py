"""Sleep and wake with a real farm-worker process (issue 20, acceptance 3): idle past
FARM_SLEEP_AFTER, the worker runs its sleep command (here: record it, then freeze the worker with
SIGSTOP, as a suspend freezes a machine); a job for it sends a magic packet, caught by a UDP
socket here and checked byte for byte, which thaws the worker (SIGCONT, as the packet would power
a machine back up); the job completes on it."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, wait_for
from nodekit import enrolled_worker_argv, worker_env

from renderfarm import keys, presence
from renderfarm.client import Submission, submit
from renderfarm.config import load_settings
from renderfarm.db import make_engine, session_scope
from renderfarm.manager import Manager
from renderfarm.redisconn import connect
from renderfarm.status import job_status, list_tasks, list_workers, resolve_job

pytestmark = pytest.mark.slow

MAC = "52:54:00:5e:e9:01"


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): its state in /proc is T."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def test_an_idle_worker_sleeps_and_a_magic_packet_wakes_it_to_render(redis_url: str, tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(60.0)
    settings = load_settings({
        "FARM_STATE_DIR": str(tmp_path / "state"), "FARM_REDIS_URL": redis_url,
        "FARM_DATABASE_URL": f"sqlite:///{tmp_path / 'farm.db'}", "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}",
        "FARM_HEARTBEAT_TTL": "2", "FARM_SLEEP_AFTER": "2", "FARM_WAKE_TIMEOUT": "60",
        "FARM_WAKE_ADDRESS": "127.0.0.1", "FARM_WAKE_PORT": str(udp.getsockname()[1]),
    }, cwd=tmp_path)
    stop = threading.Event()
    manager = Manager(settings, poll_ms=50)
    thread = threading.Thread(target=manager.run, args=(stop,), daemon=True)
    r = connect(settings)
    engine = make_engine(settings.database_url)
    slept = tmp_path / "slept.txt"
    sleep_command = f"sh -c {shlex.quote(f'echo slept >> {slept}; kill -STOP $PPID')}"
    worker = None
    caught: dict[str, object] = {}

    def wake_on_packet() -> None:  # the machine's network card: the packet powers it back up
        try:
            caught["packet"], _ = udp.recvfrom(1024)
            caught["at"] = time.monotonic()
        except OSError as e:
            caught["error"] = e
            return
        os.kill(worker.pid, signal.SIGCONT)

    def shown() -> str:
        with session_scope(engine) as s:
            return {w.name: w.state for w in list_workers(s, presence.live_workers(r))}.get("sleepy", "")

    try:
        thread.start()
        wait_for(lambda: r.exists(keys.MANAGER_LEADER), 30, "the manager to lead")
        argv = enrolled_worker_argv(settings, "sleepy", tmp_path)
        log = (tmp_path / "sleepy.log").open("ab")
        worker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=worker_env(
            settings, FARM_SLEEP_COMMAND=sleep_command, FARM_WORKER_MAC=MAC))
        # Idle past FARM_SLEEP_AFTER: it runs its sleep command and goes quiet, and shows asleep.
        wait_for(lambda: slept.exists() and slept.read_text() == "slept\n", 60, "the worker's sleep command")
        wait_for(lambda: _stopped(worker.pid), 10, "the worker to freeze")
        wait_for(lambda: not r.exists(keys.heartbeat_key("sleepy")), 10, "its heartbeat to lapse")
        wait_for(lambda: shown() == "asleep", 10, "farm workers to show it asleep")
        assert "packet" not in caught
        waker = threading.Thread(target=wake_on_packet, daemon=True)
        waker.start()
        submitted = time.monotonic()
        job_id = submit(settings, Submission(scene=EXAMPLES / "orbit.toml", frames="1-2", name="orbit"))

        def finished():
            with session_scope(engine) as s:
                status = job_status(s, resolve_job(s, job_id))
            return status if status.state in ("done", "failed") else None

        status = wait_for(finished, 90, f"job {job_id} to finish")
        done = time.monotonic()
        waker.join(5)
        print(f"submitted -> magic packet {caught['at'] - submitted:.2f} s; packet -> job done "
              f"{done - caught['at']:.2f} s")
        assert caught.get("packet") == b"\xff" * 6 + bytes.fromhex(MAC.replace(":", "")) * 16, caught
        assert status.state == "done" and status.frames_done == 2
        with session_scope(engine) as s:
            assert {t.worker for t in list_tasks(s, resolve_job(s, job_id))} == {"sleepy"}
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        stop.set()
        thread.join(30)
        engine.dispose()
        udp.close()
