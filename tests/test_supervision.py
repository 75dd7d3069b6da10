"""The local farm keeps itself alive: `farm up -d`'s supervisor starts again a process that dies
(with backoff, counted in the run file, shown by `farm doctor`), never while `farm up` or `farm
down` holds the state directory; and `farm status` does not call a dead manager running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_for, wait_job

from renderfarm import keys
from renderfarm.localfarm import services


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- the supervisor's rounds, on a real process in a run file of the test's own -----------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def sleeper(tmp_path):
    """A run file naming one `sleep` process, and this test process as its supervisor."""
    from renderfarm.localfarm.runfile import FarmProcess, RunFile, read_run_file, write_run_file

    argv = ["sleep", "600"]
    proc = subprocess.Popen(argv)
    entry = FarmProcess("worker", "sleeper", proc.pid, services.process_start_time(proc.pid), str(tmp_path / "s.log"),
                        argv, started_at=time.time())
    me = FarmProcess("supervisor", "supervisor", os.getpid(), services.process_start_time(os.getpid()), "", [])
    write_run_file(tmp_path, RunFile([entry], me, True, time.time()))
    yield tmp_path, proc
    proc.kill()
    proc.wait()
    run = read_run_file(tmp_path)
    for p in run.processes if run else ():
        p.signal(signal.SIGKILL)


def _kill(state: Path) -> int:
    from renderfarm.localfarm.runfile import read_run_file

    pid = read_run_file(state).processes[0].pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not read_run_file(state).processes[0].alive(), 10, f"pid {pid} to die")
    return pid


def test_a_dead_process_is_started_again_with_backoff(sleeper):
    from renderfarm.localfarm.runfile import read_run_file
    from renderfarm.localfarm.supervisor import Supervisor

    state, first = sleeper
    clock = Clock()
    sup = Supervisor(state, dict(os.environ), clock=clock)
    assert sup.round() and read_run_file(state).processes[0].restarts == 0

    first.kill()
    first.wait()
    assert sup.round()  # found dead a moment after it started: one second of backoff first
    assert read_run_file(state).processes[0].pid == first.pid
    clock.now += 1.0
    assert sup.round()
    again = read_run_file(state).processes[0]
    assert again.pid != first.pid and again.alive() and again.restarts == 1 and again.exited_at is not None

    _kill(state)  # dies again at once: the wait doubles
    assert sup.round()
    clock.now += 1.9
    assert sup.round() and read_run_file(state).processes[0].pid == again.pid
    clock.now += 0.2
    assert sup.round()
    third = read_run_file(state).processes[0]
    assert third.pid != again.pid and third.restarts == 2
    assert third.last_exit == "killed by signal 9"  # its own child: it knows how it ended

    clock.now += 60  # a process that ran a while is started again at once
    _kill(state)
    assert sup.round() and read_run_file(state).processes[0].restarts == 3


def test_the_supervisor_never_fights_farm_up_or_down(sleeper):
    from renderfarm.localfarm.runfile import locked, read_run_file
    from renderfarm.localfarm.supervisor import Supervisor

    state, first = sleeper
    clock = Clock()
    sup = Supervisor(state, dict(os.environ), clock=clock)
    first.kill()
    first.wait()
    clock.now += 60
    with locked(state):  # `farm up` or `farm down` at work: the supervisor waits its turn
        assert sup.round()
        assert read_run_file(state).processes[0].pid == first.pid
    (state / "run.json").unlink()  # `farm down` is done: nothing to watch, the supervisor exits
    assert sup.round() is False


# -- the manager's last sign of life ------------------------------------------------------------


def test_the_lock_constants_are_the_managers():
    from renderfarm.localfarm.health import LEADER_RENEW, LEADER_TTL
    from renderfarm.manager import loop

    assert (LEADER_TTL, LEADER_RENEW) == (loop.LEADER_TTL, loop.LEADER_RENEW)


def test_manager_life_from_the_leader_lock(redis_url):
    import redis

    from renderfarm.localfarm.health import LEADER_TTL, life_of, manager_life

    r = redis.Redis.from_url(redis_url)
    assert not manager_life(r).running and manager_life(r).holder is None
    host = socket.gethostname()
    r.set(keys.MANAGER_LEADER, f"{host}:{os.getpid()}:a1b2", px=int(LEADER_TTL * 1000))
    life = manager_life(r)
    assert life.running and life.process_alive and not life.silent and life.pid == os.getpid()
    assert life.renewed_ago < 1.0
    # Killed outright: its lock lives on, but its process is gone.
    dead = _dead_pid()
    r.set(keys.MANAGER_LEADER, f"{host}:{dead}:a1b2", px=9000)
    life = manager_life(r)
    assert not life.running and life.process_alive is False
    assert f"pid {dead} on {host} has exited" in life.describe()
    # A manager on another host: its silence is all we know.
    assert life_of("farmhost:42:a1b2", 3000).silent and life_of("farmhost:42:a1b2", 3000).running
    assert abs(life_of("farmhost:42:a1b2", 3000).renewed_ago - 7.0) < 1e-9


def test_farm_status_does_not_call_a_dead_manager_running(redis_url, tmp_path):
    import redis

    dead = _dead_pid()
    r = redis.Redis.from_url(redis_url)
    # The lock outlives both commands below (a loaded machine takes seconds to start each: a lock
    # gone by the second is another case, no manager holding it), and goes with the test.
    r.set(keys.MANAGER_LEADER, f"{socket.gethostname()}:{dead}:a1b2", px=120_000)
    try:
        env = farm_env(tmp_path / "state", FARM_REDIS_URL=redis_url)
        doc = json.loads(run_farm("status", "--json", env=env).stdout)
        assert doc["running"] is False and doc["redis"] is True
        assert doc["manager"]["pid"] == dead and doc["manager"]["process_alive"] is False
        text = run_farm("status", env=env)
        assert "farm manager not running" in text.stdout
        assert "farm running" not in text.stdout and f"pid {dead}" in text.stdout
        assert "manager is not running" in text.stderr
    finally:
        r.delete(keys.MANAGER_LEADER)


# -- a whole farm ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_processes_come_back_with_their_data(tmp_path):
    """kill -9 Valkey, SeaweedFS, the manager and the worker of a `farm up -d`: each is started
    again, Valkey with its AOF and SeaweedFS with its objects; the farm renders; `farm doctor`
    counts the restarts; `farm down` leaves nothing running."""
    from renderfarm.config import load_settings
    from renderfarm.redisconn import connect
    from renderfarm.storage import open_storage

    state = tmp_path / "state"
    env = farm_env(state)
    run_farm("up", "-d", "-w", "1", env=env, timeout=120)
    try:
        settings = load_settings(env, cwd=tmp_path)
        r = connect(settings)
        r.set("supervision-probe", "kept")
        assert r.execute_command("WAITAOF", 1, 0, 5000)[0] == 1  # on disk: AOF fsyncs once a second
        open_storage(settings).put_bytes("supervision-probe", b"kept")
        before = {p["name"]: p["pid"] for p in _processes(state)}
        for pid in before.values():
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def all_back():
            now = {p["name"]: p for p in _processes(state)}
            return all(now[n]["pid"] != before[n] and services.alive(now[n]["pid"], now[n]["start_time"])
                       and now[n].get("restarts", 0) >= 1 for n in before)

        wait_for(all_back, 60, "every process to be started again")
        worker = next(n for n in before if n not in ("valkey", "seaweedfs", "manager"))
        back = {p["name"]: p["pid"] for p in _processes(state)}
        wait_for(lambda: _answers(lambda: connect(settings).get("supervision-probe")) == b"kept", 30, "Valkey's data")
        storage = open_storage(settings)
        wait_for(lambda: _answers(lambda: storage.get_bytes("supervision-probe")) == b"kept", 60, "SeaweedFS's data")
        r = connect(settings)
        holder = f"{socket.gethostname()}:{back['manager']}:".encode()
        wait_for(lambda: (r.get(keys.MANAGER_LEADER) or b"").startswith(holder), 30, "the new manager to lead")
        print(f"all four back and leading {time.monotonic() - killed_at:.1f} s after kill -9")

        rows = {c["part"]: c for c in json.loads(run_farm("doctor", "--json", env=env, check=False).stdout)}
        assert rows["local farm"]["status"] == "ok", rows["local farm"]
        for name in before:
            assert rows[f"restarts {name}"]["detail"].startswith("started again "), rows[f"restarts {name}"]
        status = json.loads(run_farm("status", "--json", env=env).stdout)
        assert status["running"] and status["manager"]["pid"] == back["manager"]
        assert status["local_farm"]["restarts"] >= 4

        sub = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-2", "--json", env=env)
        job = json.loads(sub.stdout)["id"]

        assert wait_job(env, job, ("done", "failed"), 120) == "done"
        assert any(t["worker"] == worker for t in json.loads(run_farm("tasks", job, "--json", env=env).stdout))
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state), farm_processes(state)
    assert not (state / "run.json").exists()


def _processes(state: Path) -> list[dict]:
    return json.loads((state / "run.json").read_text())["processes"]


def _answers(read):
    try:
        return read()
    except Exception:  # noqa: BLE001 - still starting
        return None


@pytest.mark.slow
def test_farm_up_starts_a_dead_supervisor_again_and_down_stops_it(tmp_path):
    from renderfarm.localfarm.runfile import read_run_file

    state = tmp_path / "state"
    env = farm_env(state)
    run_farm("up", "-d", "-w", "0", env=env, timeout=120)
    try:
        supervisor = read_run_file(state).supervisor
        os.kill(supervisor.pid, signal.SIGKILL)
        wait_for(lambda: not read_run_file(state).supervisor.alive(), 10, "the supervisor to die")
        doctor = {c["part"]: c for c in json.loads(run_farm("doctor", "--json", env=env, check=False).stdout)}
        assert doctor["local farm"]["status"] == "warn" and "no supervisor" in doctor["local farm"]["detail"]
        run_farm("up", "-d", "-w", "0", env=env, timeout=120)  # only the supervisor was missing
        again = read_run_file(state)
        assert again.supervisor.alive() and again.supervisor.pid != supervisor.pid
        assert all(p.alive() and p.restarts == 0 for p in again.processes)
        assert run_farm("up", "-d", "-w", "0", env=env, check=False).returncode != 0  # all running
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state), farm_processes(state)



def test_a_worker_the_farm_turned_away_is_not_started_again(sleeper):
    """A revoked node's worker exits 78: starting it again would only be refused again (a dead
    letter each time). Started by `farm up`, how it ended is unknown: it is started once more, and
    left dead once it ends so again as the supervisor's own child."""
    from renderfarm.localfarm.runfile import read_run_file, write_run_file
    from renderfarm.localfarm.supervisor import Supervisor
    from renderfarm.nodes import TURNED_AWAY_EXIT

    state, first = sleeper
    run = read_run_file(state)
    run.processes[0].argv = [sys.executable, "-c", f"import sys; sys.exit({TURNED_AWAY_EXIT})"]
    write_run_file(state, run)
    clock = Clock()
    sup = Supervisor(state, dict(os.environ), clock=clock)
    first.kill()
    first.wait()
    assert sup.round()
    clock.now += 1.0
    assert sup.round()
    again = read_run_file(state).processes[0]
    assert again.pid != first.pid and again.restarts == 1
    wait_for(lambda: sup.children[again.pid].poll() is not None, 30, "the turned-away worker to exit")
    for _ in range(3):
        clock.now += 60
        assert sup.round()
    assert read_run_file(state).processes[0].pid == again.pid and read_run_file(state).processes[0].restarts == 1
