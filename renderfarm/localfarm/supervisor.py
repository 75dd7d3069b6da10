"""The local farm's supervisor: started by `farm up -d`, it starts again any farm process that dies
(Valkey, SeaweedFS, the manager, a worker), with backoff, until `farm down` stops it.

It learns what to watch from the run file and writes each restart back to it, holding the state
directory's lock only for that moment: a round that finds `farm up` or `farm down` holding the
lock does nothing, so the supervisor never fights them. The processes `farm up` started are not
its children; it sees them die by their pid and kernel start time. Valkey comes back from its
append-only file, SeaweedFS from its data directory, both on the same ports.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from renderfarm.localfarm import logrotate, services
from renderfarm.localfarm.runfile import FarmProcess, locked, read_run_file, write_run_file
from renderfarm.nodes import TURNED_AWAY_EXIT

log = logging.getLogger("renderfarm.supervisor")

POLL = 0.5  # seconds between looks at the farm's processes
FIRST_DELAY = 0.0  # a process that ran a while is started again at once
MAX_DELAY = 30.0  # the longest wait before another try at a process that keeps dying
STEADY_AFTER = 30.0  # a process that ran this long before dying is not crash-looping
START_ORDER = ("valkey", "weed", "manager", "worker")  # servers before their clients


class Supervisor:
    """One supervisor of one state directory. `round()` looks once; `run()` loops until stopped."""

    def __init__(self, state_dir: Path, env: dict[str, str], *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.env = env
        self.clock = clock
        self.children: dict[int, subprocess.Popen] = {}  # what this supervisor started, to reap
        self.exits: dict[int, int] = {}  # how each reaped child ended (its return code), by pid
        self.delay: dict[str, float] = {}  # per name: the wait before its next start, doubled per quick death
        self.due: dict[tuple[str, int], float] = {}  # per dead (name, pid): when it may start again
        self.found_dead: dict[tuple[str, int], float] = {}  # and when it was found dead
        self.turned_away: set[tuple[str, int]] = set()  # dead workers the farm refused: left dead
        self.next_rotation = 0.0  # when the logs' sizes are looked at next (logrotate)

    def run(self, stop: threading.Event) -> None:
        log.info("supervising the local farm in %s (pid %d)", self.state_dir, os.getpid())
        while not stop.is_set():
            if not self.round():
                log.info("the farm was stopped (`farm down`); supervisor exits")
                return
            stop.wait(POLL)
        log.info("supervisor stopped")

    def round(self) -> bool:
        """Start again what died and is due; False when this supervisor has no farm to watch."""
        for pid, popen in list(self.children.items()):
            if popen.poll() is not None:  # reaped: no zombie left behind
                self.exits[pid] = self.children.pop(pid).returncode
        with locked(self.state_dir, wait=False) as held:
            if not held:
                return True  # `farm up` or `farm down` is at work: look again next round
            run = read_run_file(self.state_dir)
            if run is None or run.supervisor is None or run.supervisor.pid != os.getpid():
                return False
            now = self.clock()
            if now >= self.next_rotation:
                self.next_rotation = now + logrotate.CHECK_EVERY
                logrotate.rotate_logs(self.state_dir / "logs")
            dead = sorted((p for p in run.processes if not p.alive()), key=lambda p: START_ORDER.index(p.role))
            changed = False
            for proc in dead:
                key = (proc.name, proc.pid)
                if proc.role == "worker" and self.exits.get(proc.pid) == TURNED_AWAY_EXIT:
                    if key not in self.turned_away:  # revoked: it would only be refused again
                        self.turned_away.add(key)
                        log.warning("%s (pid %d) exited: the farm refuses its credentials (revoked?); not started "
                                    "again (`farm up` starts it, enrolled anew)", proc.name, proc.pid)
                    continue
                if key not in self.due:
                    self.found_dead[key] = now
                    self.due[key] = now + self._delay(proc, now)
                    log.warning("%s (pid %d) died%s; starting it again in %.1f s", proc.name, proc.pid,
                                self._how(proc), self.due[key] - now)
                if now >= self.due[key] and self._restart(proc, self.found_dead[key]):
                    self.due.pop(key)
                    self.found_dead.pop(key)
                    changed = True
            if changed:
                write_run_file(self.state_dir, run)
        return True

    def _delay(self, proc: FarmProcess, now: float) -> float:
        """At once after a long run; else twice the last wait (1, 2, 4... up to MAX_DELAY s)."""
        if proc.started_at is not None and now - proc.started_at >= STEADY_AFTER:
            self.delay[proc.name] = FIRST_DELAY
        else:
            self.delay[proc.name] = min(max(2 * self.delay.get(proc.name, 0.5), 1.0), MAX_DELAY)
        return self.delay[proc.name]

    def _how(self, proc: FarmProcess) -> str:
        """How a dead process ended, when it was this supervisor's child (else nobody knows)."""
        code = self.exits.get(proc.pid)
        if code is None:
            return ""
        return f" ({f'killed by signal {-code}' if code < 0 else f'exit status {code}'})"

    def _restart(self, proc: FarmProcess, died_at: float) -> bool:
        if not proc.argv:
            log.error("%s: the run file does not say how to start it; `farm up -d` starts it", proc.name)
            return False
        if proc.role == "manager":
            free_leader_lock(proc.pid)
        how = self._how(proc)
        try:
            env = services.node_env(self.env) if proc.role == "worker" else self.env
            popen = services.spawn(proc.argv, cwd=self.state_dir, env=env, log_path=Path(proc.log), detach=True,
                                   umask=services.umask_for(proc.role))
        except OSError as e:
            log.error("%s: cannot start %s (%s)", proc.name, proc.argv[0], e)
            return False
        self.children[popen.pid] = popen
        log.info("%s started again as pid %d", proc.name, popen.pid)
        proc.last_exit = how.strip(" ()") or None
        self.exits.pop(proc.pid, None)
        proc.pid, proc.start_time = popen.pid, services.process_start_time(popen.pid)
        proc.restarts += 1
        proc.exited_at, proc.started_at = died_at, self.clock()
        return True


def free_leader_lock(dead_pid: int) -> None:
    """A manager killed outright leaves its leader lock for up to its TTL (10 s), and the manager
    started in its place would wait that long: drop the lock if it names the dead process."""
    from renderfarm import keys
    from renderfarm.config import load_settings
    from renderfarm.redisconn import connect

    try:
        r = connect(load_settings(), timeout=2.0)
        # The lock's value is host:pid:nonce (renderfarm.manager.leader); delete only that value.
        holder = r.get(keys.MANAGER_LEADER)
        if holder is not None and holder.decode().startswith(f"{socket.gethostname()}:{dead_pid}:"):
            r.eval(_DELETE_IF, 1, keys.MANAGER_LEADER, holder)
            log.info("dropped the dead manager's leader lock")
        r.close()
    except Exception as e:  # noqa: BLE001 - Redis down too, or restarting: the lock expires anyway
        log.warning("could not drop the dead manager's leader lock (%s); it expires on its own", e)


_DELETE_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def main() -> int:
    from renderfarm.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    Supervisor(load_settings().state_dir, dict(os.environ)).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
