"""A warm renderer session: one renderer process kept alive across consecutive tasks of a job.

It is still a subprocess in its own process group that dies with its worker; a timeout, a stop
or any doubt about its state kills the whole group, and the next task starts a fresh one.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from renderfarm.renderers.process import RunResult, die_with_parent, kill_group
from renderfarm.renderers.protocol import DONE, FAILED

if TYPE_CHECKING:
    from renderfarm.renderers.account import RenderAccount


class RendererSession:
    """One long-lived renderer process speaking the session protocol."""

    def __init__(self, key: tuple, argv: list[str], *, cwd: Path, env: dict[str, str],
                 account: RenderAccount | None = None) -> None:
        self.key = key
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent, **(account.popen_args() if account else {}),
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.last_used = time.monotonic()
        self._reader = threading.Thread(target=self._pump, name="renderer-session", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(raw)
        self.lines.put(None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def render(
        self, request: dict[str, Any], *, timeout: float, log: BinaryIO, on_line: Callable[[str], None],
        should_stop: Callable[[], bool] = lambda: False, poll: float = 0.5,
    ) -> RunResult:
        """Send one request and follow its lines to `done` or `failed`. A session that times
        out, is stopped or dies is closed (killed); the caller starts a new one next time."""
        start = time.monotonic()
        before = _cpu_of(self.proc.pid)
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            return RunResult(self.proc.poll() or 1, seconds=time.monotonic() - start)
        code: int | None = None
        timed_out = stopped = False
        try:
            while True:
                try:
                    raw = self.lines.get(timeout=poll)
                except queue.Empty:
                    raw = b""
                if raw is None:  # the process ended in the middle of a request
                    code = self.proc.wait() or 1
                    break
                if raw:
                    text = raw.decode("utf-8", "replace").rstrip("\n")
                    log.write(raw)
                    if text == DONE:
                        code = 0
                        break
                    if text.startswith(FAILED):
                        on_line(text)  # the reason, for the failure's message
                        code = 1
                        break
                    on_line(text)
                if time.monotonic() - start > timeout:
                    timed_out = True
                elif should_stop():
                    stopped = True
                if timed_out or stopped:
                    break
        except BaseException:
            self.close()
            raise
        if timed_out or stopped or code is None:
            self.close()
        self.last_used = time.monotonic()
        return RunResult(code, timed_out, stopped, time.monotonic() - start, _cpu_of(self.proc.pid) - before)

    def close(self) -> None:
        """Kill the session's whole process group."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            kill_group(self.proc, grace=1.0)
        self._reader.join(2.0)


def _cpu_of(pid: int) -> float:
    """CPU seconds a live process has used so far (user + system), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
