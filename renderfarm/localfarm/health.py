"""How the local farm is doing, for `farm status`, `farm doctor` and `farm top`: each process alive
or not and how often the supervisor started it again, the manager's last sign of life, and
whether a command's settings point at the farm that runs."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.config import differing_settings
from renderfarm.localfarm import services
from renderfarm.localfarm.runfile import FarmProcess, read_run_file

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.config import Settings
    from renderfarm.doctor import Check

# renderfarm.manager.loop's: the leader lock lives LEADER_TTL s and is renewed every LEADER_RENEW s
# (a test holds these to the manager's), so its remaining TTL tells when the manager last renewed it.
LEADER_TTL = 10.0
LEADER_RENEW = 2.0
SILENT_AFTER = 2 * LEADER_RENEW + 1.0  # two renewals missed: the manager is stuck or gone


@dataclass(frozen=True)
class ProcessHealth:
    """One process of the local farm, as the run file and /proc see it."""

    name: str
    role: str
    pid: int
    alive: bool
    restarts: int
    started_at: float | None
    exited_at: float | None  # when its previous process was found dead
    last_exit: str | None  # how that one ended, when the supervisor could tell
    log: str

    @classmethod
    def of(cls, p: FarmProcess) -> ProcessHealth:
        return cls(p.name, p.role, p.pid, p.alive(), p.restarts, p.started_at, p.exited_at, p.last_exit, p.log)


@dataclass(frozen=True)
class FarmHealth:
    """The processes `farm up` started in a state directory, and its supervisor."""

    processes: list[ProcessHealth]
    supervisor: ProcessHealth | None  # None: started in the foreground, or with --no-supervise
    detached: bool

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self.processes)

    def to_json(self) -> dict:
        return {
            "processes": [asdict(p) for p in self.processes],
            "supervisor": asdict(self.supervisor) if self.supervisor else None,
            "restarts": self.restarts,
        }


def farm_health(state_dir: Path) -> FarmHealth | None:
    """None when no local farm was started in this state directory (or `farm down` stopped it)."""
    run = read_run_file(state_dir)
    if run is None:
        return None
    supervisor = ProcessHealth.of(run.supervisor) if run.supervisor else None
    return FarmHealth([ProcessHealth.of(p) for p in run.processes], supervisor, run.detached)


def restart_summary(state_dir: Path) -> str | None:
    """One short line for `farm top` when the local farm had restarts or lost its supervisor;
    None when there is nothing to say."""
    health = farm_health(state_dir)
    if health is None:
        return None
    parts = []
    if health.restarts:
        each = ", ".join(f"{p.name} {p.restarts}" for p in health.processes if p.restarts)
        parts.append(f"{health.restarts} restart(s): {each}")
    if health.detached and not (health.supervisor and health.supervisor.alive):
        parts.append("unsupervised")
    return "local farm " + "; ".join(parts) if parts else None


@dataclass(frozen=True)
class ManagerLife:
    """The manager's last sign of life: who holds the leader lock, and when it last renewed it."""

    holder: str | None  # the lock's value, host:pid:nonce; None when no manager holds it
    renewed_ago: float | None  # seconds since the holder last renewed the lock
    host: str | None
    pid: int | None
    process_alive: bool | None  # for a manager on this host, whether its process runs; else None

    @property
    def running(self) -> bool:
        """A manager holds the lock and is not known to be dead (killed outright, a manager's lock
        outlives it by up to its TTL)."""
        return self.holder is not None and self.process_alive is not False

    @property
    def silent(self) -> bool:
        return self.renewed_ago is not None and self.renewed_ago > SILENT_AFTER

    def describe(self) -> str:
        if self.holder is None:
            return "manager not running (no manager holds the leader lock)"
        where = f"pid {self.pid} on {self.host}" if self.pid is not None else self.holder
        renewed = f"{self.renewed_ago:.1f} s ago" if self.renewed_ago is not None else "at an unknown time"
        if self.process_alive is False:
            return f"manager not running: {where} has exited (it last renewed its leader lock {renewed})"
        if self.silent:
            return (f"manager {where} silent: it last renewed its leader lock {renewed} "
                    f"(every {LEADER_RENEW:g} s when well)")
        return f"manager {where}, last renewed its leader lock {renewed}"

    def to_json(self) -> dict:
        return {**asdict(self), "running": self.running, "silent": self.silent}


def manager_life(r: Redis) -> ManagerLife:
    """Read the leader lock and its remaining time to live (one round trip)."""
    from renderfarm import keys

    pipe = r.pipeline(transaction=False)
    pipe.get(keys.MANAGER_LEADER)
    pipe.pttl(keys.MANAGER_LEADER)
    value, pttl = pipe.execute()
    return life_of(value.decode(errors="replace") if value is not None else None, pttl)


def life_of(holder: str | None, pttl_ms: int) -> ManagerLife:
    """The manager's life from the lock's value and its PTTL (-2: no key; -1: no expiry)."""
    if holder is None or pttl_ms == -2:
        return ManagerLife(None, None, None, None, None)
    renewed_ago = max(0.0, LEADER_TTL - pttl_ms / 1000) if pttl_ms >= 0 else None
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    pid = int(pid_text) if pid_text.isdigit() else None
    alive = None
    if pid is not None and host == socket.gethostname():
        alive = services.process_start_time(pid) is not None
    return ManagerLife(holder, renewed_ago, host or None, pid, alive)


def other_farm_note(settings: Settings) -> str | None:
    """When the local farm of this state directory runs and these settings point at another
    Redis, database or storage than it uses: one line saying so, and how to reach it."""
    run = read_run_file(settings.state_dir)
    if run is None or not any(p.role == "manager" and p.alive() for p in run.processes):
        return None
    differ = differing_settings(settings)
    if not differ:
        return None
    ours = "; ".join(f"{name} {mine} (from {settings.sources.get(name, 'default')})" for name, _, mine in differ)
    theirs = "; ".join(f"{name} {value}" for name, value, _ in differ)
    fixes = sorted({_fix(settings.sources.get(name, "default")) for name, _, _ in differ})
    return (f"this command uses {ours}, but the local farm running in {settings.state_dir} uses {theirs}; "
            f"{' and '.join(fixes)} to talk to it")


def _fix(source: str) -> str:
    if source.startswith("env "):
        return f"unset {source.removeprefix('env ')}"
    return f"change {source}"


def check_local_farm(settings: Settings) -> list[Check]:
    """`farm doctor`'s view of the local farm's processes: alive, supervised, restarted."""
    from renderfarm.doctor import Check, CheckStatus

    health = farm_health(settings.state_dir)
    if health is None:
        return []
    checks = []
    dead = [p for p in health.processes if not p.alive]
    supervised = health.supervisor is not None and health.supervisor.alive
    running = f"{len(health.processes) - len(dead)} of {len(health.processes)} processes running"
    if dead:
        names = ", ".join(p.name for p in dead)
        fix = f"the supervisor starts them again; if they keep dying, see {Path(dead[0].log).parent}" if supervised \
            else "`farm up -d` starts them again"
        checks.append(Check("local farm", CheckStatus.FAIL, f"{running}; not running: {names}", fix))
    elif health.detached and not supervised:
        checks.append(Check("local farm", CheckStatus.WARN,
                            f"{running}, but no supervisor: a process that dies stays dead",
                            "`farm up -d` starts the supervisor again"))
    else:
        watcher = f"supervisor pid {health.supervisor.pid}" if supervised \
            else "not supervised (farm up in the foreground, or --no-supervise)"
        checks.append(Check("local farm", CheckStatus.OK, f"{running}, {watcher}"))
    for p in health.processes:
        if p.restarts:
            when = f" at {time.strftime('%H:%M:%S', time.localtime(p.exited_at))}" if p.exited_at else ""
            how = f" ({p.last_exit})" if p.last_exit else ""
            checks.append(Check(f"restarts {p.name}", CheckStatus.WARN,
                                f"started again {p.restarts} time(s); last found dead{when}{how}",
                                f"see why it died in {p.log}"))
    return checks

