"""Progress for long work: a live Rich bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from renderfarm_cli.console import duration, err

if TYPE_CHECKING:
    from renderfarm.status import JobStatus

LINE_EVERY = 5.0  # seconds between progress lines when not on a terminal


class Progress:
    """A progress display for one piece of work with a known total."""

    def __init__(self, title: str, total: int, unit: str) -> None:
        self.title = title
        self.total = max(total, 1)
        self.unit = unit
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._last_line = 0.0
        self._last_text = ""

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                MofNCompleteColumn(), TextColumn(self.unit), TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"), console=err(), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=self.total, detail="")
        return self

    def update(self, done: float, detail: str = "", *, force: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, detail=detail)
            return
        now = time.monotonic()
        text = f"{self.title}: {int(done)}/{self.total} {self.unit} ({done / self.total:.0%}){', ' + detail if detail else ''}"
        if force or now - self._last_line >= LINE_EVERY:
            if text != self._last_text or force:
                err().print(text, soft_wrap=True)
            self._last_line = now
            self._last_text = text

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def job_detail(status: JobStatus) -> str:
    c = status.counts
    parts = [status.state]
    if c.get("running"):
        parts.append(f"{c['running']} running")
    if c.get("failed"):
        parts.append(f"{c['failed']} failed")
    if status.eta is not None and status.state == "running":
        parts.append(f"ETA {duration(status.eta)}")
    return ", ".join(parts)


def follow_job(settings, job_id: str, title: str) -> JobStatus:
    """Show a job's progress until it finishes; returns its final status."""
    from renderfarm.client import wait_for_job

    holder: dict[str, Progress] = {}

    def on_update(status: JobStatus) -> None:
        if "p" not in holder:
            holder["p"] = Progress(title, status.frames, "tasks" if status.steps else "frames").__enter__()
        done = status.frames * status.progress
        final = status.state in ("done", "failed", "cancelled")
        holder["p"].update(done, job_detail(status), force=final)

    try:
        return wait_for_job(settings, job_id, on_update)
    finally:
        if "p" in holder:
            holder["p"].__exit__(None, None, None)
