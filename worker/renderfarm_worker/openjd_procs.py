"""Finding and killing the processes an OpenJD action left behind, by a marker in their
environment: openjd-sessions kills an action's process group, and a process that left the group
(setsid, a daemon) survives that; each one still carries the environment it was started with.

Reading every process's environment costs ~15 ms on a 2-core node with 150 processes, as much
as a whole short task; so a scan for one action reads only the pids that did not exist when the
action started (listing /proc costs 0.2 ms). Pids wrap around (at 32768 here, often), so "higher
than the highest" would not do. A leftover that took the pid of a process that ended during the
action is missed there and found by the session's full scan when the session ends.

Linux only (it reads /proc); elsewhere nothing is found and openjd-sessions' own kill is all.
Processes of other users are passed over, but those of the `uids` a caller names (the render
user's, whose actions run through sudo: the worker is root then, and reads their environments).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

SESSION_MARKER = "FARM_OPENJD_SESSION"  # on every process of a session
ACTION_MARKER = "FARM_OPENJD_ACTION"  # on every process of one action


def pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def marked(name: str, value: str, old: frozenset[int] = frozenset(),
           uids: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
    """(pid, parent pid) of every process of ours (or of `uids`), but those in `old`, whose
    environment has `name`=`value`."""
    return _scan(name, value, old, uids)[0]


def _scan(name: str, value: str, old: frozenset[int],
          uids: frozenset[int] = frozenset()) -> tuple[list[tuple[int, int]], set[int]]:
    """What `marked` finds, and the processes of ours it could not read, or that read as having
    no environment at all: one in the middle of an exec does (1 scan in 100 missed one here), so
    they are worth another look."""
    needle = f"\0{name}={value}\0".encode()
    found, unread = [], set()
    uids = uids | {os.getuid()}
    for pid in pids():
        if pid in old or pid == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid not in uids:  # another user's: none of ours
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            environ = b""
        if not environ:
            unread.add(pid)
        elif needle in b"\0" + environ + b"\0":
            found.append((pid, int(fields[1])))
    return found, unread


def kill_marked(name: str, value: str, old: frozenset[int] = frozenset(),
                uids: frozenset[int] = frozenset()) -> list[int]:
    """SIGKILL every process, but those in `old`, marked `name`=`value`; their pids. It looks again
    while a look finds something, or a process without an environment it has not seen before."""
    killed: list[int] = []
    doubted: set[int] = set()
    for _ in range(20):
        found, unread = _scan(name, value, old, uids)
        unsure = bool(unread - doubted)
        doubted |= unread
        found = [pid for pid, _parent in found if pid not in killed]
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        if not found and not unsure:
            break
        time.sleep(0.005)
    return killed


class ActionTree:
    """The processes of one running action. Its leader is the process openjd-sessions started
    (a child of ours); once the leader is gone, whatever still carries the action's marker is
    only keeping the action's output open, and openjd-sessions would wait 5 s for it."""

    def __init__(self, value: str, uids: frozenset[int] = frozenset()) -> None:
        self.value, self.uids = value, uids
        self.leader: int | None = None
        self.old = frozenset(pids())  # made before the action starts

    def orphans(self) -> bool:
        """True when the leader has ended and marked processes remain."""
        if self.leader is not None and _running(self.leader):
            return False
        procs = marked(ACTION_MARKER, self.value, self.old, self.uids)
        leaders = [pid for pid, parent in procs if parent == os.getpid()]
        if leaders:
            self.leader = leaders[0]
            return False
        return bool(procs) and self.leader is not None

    def kill(self) -> list[int]:
        return kill_marked(ACTION_MARKER, self.value, self.old, self.uids)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
