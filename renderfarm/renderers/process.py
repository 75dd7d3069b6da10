"""Running a renderer as a subprocess: its own process group, dying with its worker, killed
whole on timeout or cancel, its output streamed line by line to a log and a callback."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from renderfarm.renderers.account import RenderAccount

PR_SET_PDEATHSIG = 1
KILL_GRACE = 5.0
# Only these reach a renderer: no FARM_*, AWS_*, Redis or database credentials.
ENV_ALLOWED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT")

_prctl = None
if os.uname().sysname == "Linux":
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None


def die_with_parent() -> None:
    # Runs in the child between fork and exec: keep it to one system call (the function was
    # resolved before the fork, so nothing is loaded here). It runs after subprocess has switched
    # to a render user (a change of user clears the parent-death signal, so it must come after).
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def scrubbed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOWED if k in os.environ}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class RunResult:
    returncode: int | None
    timed_out: bool = False
    stopped: bool = False
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """SIGTERM the renderer's whole process group, then SIGKILL what is left after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; children it left in the group die too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def run_renderer(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float, log: BinaryIO,
    on_line: Callable[[str], None], should_stop: Callable[[], bool] = lambda: False, poll: float = 0.5,
    account: RenderAccount | None = None,
) -> RunResult:
    """Run `argv` to completion, timeout or stop; every output line goes to `log` and `on_line`.
    With `account`, the renderer runs as that user (the worker is root)."""
    start = time.monotonic()
    before = os.times()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        **(account.popen_args() if account else {}),
    )
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=pump, name="renderer-output", daemon=True)
    reader.start()
    timed_out = stopped = False
    try:
        while True:
            try:
                raw = lines.get(timeout=poll)
            except queue.Empty:
                raw = b""
            if raw is None:
                break
            if raw:
                log.write(raw)
                on_line(raw.decode("utf-8", "replace").rstrip("\n"))
            if time.monotonic() - start > timeout:
                timed_out = True
            elif should_stop():
                stopped = True
            if timed_out or stopped:
                kill_group(proc)
                break
        proc.wait()
    finally:
        if proc.poll() is None:
            kill_group(proc, grace=1.0)
        reader.join(2.0)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return RunResult(proc.returncode, timed_out, stopped, time.monotonic() - start, cpu)
