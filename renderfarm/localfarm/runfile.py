"""The local farm's run file (``run.json``): the processes it started, the supervisor watching them,
and how often each was restarted; with the lock that lets one `farm up`, `farm down` or
supervisor round change it at a time."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from renderfarm.localfarm import services

RUN_FILE = "run.json"
LOCK_FILE = ".lock"


@dataclass
class FarmProcess:
    """One process of the local farm, as the run file records it."""

    role: str  # valkey, weed, manager, worker (or supervisor)
    name: str
    pid: int
    start_time: int | None  # the kernel's, to tell this process from a later one with its pid
    log: str
    argv: list[str] = field(default_factory=list)  # how to start it again
    restarts: int = 0  # times it was started again after it died, since `farm up`
    started_at: float | None = None  # wall clock, when this pid was started
    exited_at: float | None = None  # wall clock, when the previous pid was found dead
    last_exit: str | None = None  # how the previous pid ended, when its parent could tell
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return services.alive(self.pid, self.start_time)

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "popen"}

    @classmethod
    def from_json(cls, doc: dict) -> FarmProcess:
        known = {f.name for f in fields(cls)} - {"popen"}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class RunFile:
    """What `farm up` started in one state directory."""

    processes: list[FarmProcess] = field(default_factory=list)
    supervisor: FarmProcess | None = None
    detached: bool = False
    started_at: float | None = None


def run_path(state_dir: Path) -> Path:
    return state_dir / RUN_FILE


def read_run_file(state_dir: Path) -> RunFile | None:
    """The run file, or None when no farm was started here (or `farm down` stopped it)."""
    try:
        doc = json.loads(run_path(state_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    supervisor = doc.get("supervisor")
    return RunFile(
        processes=[FarmProcess.from_json(p) for p in doc.get("processes", [])],
        supervisor=FarmProcess.from_json(supervisor) if supervisor else None,
        detached=bool(doc.get("detached")),
        started_at=doc.get("started_at"),
    )


def write_run_file(state_dir: Path, run: RunFile) -> None:
    doc = {
        "started_at": run.started_at,
        "detached": run.detached,
        "supervisor": run.supervisor.to_json() if run.supervisor else None,
        "processes": [p.to_json() for p in run.processes],
    }
    services.write_private(run_path(state_dir), json.dumps(doc, indent=2))


@contextmanager
def locked(state_dir: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the state directory's lock; yields False (without it) when `wait` is off and another
    process holds it."""
    with (state_dir / LOCK_FILE).open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
