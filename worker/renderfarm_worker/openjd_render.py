"""One attempt of an OpenJD task on this worker: the opt-in (FARM_ALLOW_OPENJD=1), the worker's
runner and its warm session, the attempt's log and progress, and the files the task wrote,
checked and uploaded under the attempt's prefix (`<attempt prefix>outputs/<relative path>`)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import RenderError
from renderfarm.wire import Progress

if TYPE_CHECKING:
    from renderfarm.wire import TaskOrder
    from renderfarm_worker.attemptlog import AttemptLog
    from renderfarm_worker.openjd_runner import OpenJDRunner
    from renderfarm_worker.runtime import WorkerRuntime

log = logging.getLogger("renderfarm.worker")

PROGRESS_EVERY = 1.0  # seconds between progress events, as for other renderers
_runners: dict[str, OpenJDRunner] = {}  # by worker name: one runner, one warm session each
_runners_lock = threading.Lock()


@dataclass(frozen=True)
class OpenJDOutput:
    """One file a task wrote, uploaded: its path relative to the session's `params/`."""

    path: str
    sha256: str
    size: int
    etag: str | None

    def wire(self):
        """As the done event's output. The manager's side of issue 18 gives `Output` a `path`
        (and makes `frame` optional) for the files of OpenJD tasks."""
        from renderfarm.wire import Output

        return Output(path=self.path, sha256=self.sha256, size=self.size, etag=self.etag)


def runner_of(rt: WorkerRuntime) -> OpenJDRunner:
    from renderfarm_worker.openjd_runner import OpenJDRunner
    from renderfarm_worker.render import account_of

    with _runners_lock:
        runner = _runners.get(rt.name)
        if runner is None:
            root = rt.scratch / "openjd"
            root.mkdir(parents=True, exist_ok=True)
            runner = _runners[rt.name] = OpenJDRunner(root, account_of(rt.settings.render_user))
        return runner


def close_idle(rt: WorkerRuntime, idle_for: float) -> None:
    """End this worker's warm OpenJD session if it has been idle `idle_for` seconds."""
    runner = _runners.get(rt.name)
    if runner is not None:
        runner.close_if_idle(idle_for)


def close(rt: WorkerRuntime) -> None:
    """At the worker's exit: cancel what runs, exit the session's environments."""
    with _runners_lock:
        runner = _runners.pop(rt.name, None)
    if runner is not None:
        runner.close(time_limit=rt.settings.shutdown_grace)


def render_openjd(rt: WorkerRuntime, order: TaskOrder, openjd, workdir: Path,
                  attempt_log: AttemptLog) -> list[OpenJDOutput]:
    """Run the task `openjd` (the order's OpenJDTask, or its JSON) describes in the warm session
    of its job and step, its inputs staged first, then upload what it wrote. Raises RenderError
    when it fails (its openjd_fail line, its exit code, its timeout) and Interrupted when the
    worker was told to stop it."""
    from renderfarm_worker.openjd_inputs import stager
    from renderfarm_worker.openjd_layout import copy_out
    from renderfarm_worker.openjd_task import OpenJDOrder, OpenJDOrderError, Outcome
    from renderfarm_worker.render import LiveLog

    if not getattr(rt.settings, "allow_openjd", False):
        raise RenderError("OpenJD tasks are not allowed on this worker (set FARM_ALLOW_OPENJD=1)")
    if rt.settings.render_user:  # as the render user, through sudo: refused where that cannot work
        from renderfarm_worker.capabilities import openjd_refusal

        refusal = openjd_refusal(rt.settings.render_user)
        if refusal is not None:
            raise RenderError(f"{refusal}: this worker takes no OpenJD tasks")
    inputs = getattr(openjd, "inputs", None) or ()
    try:
        task = OpenJDOrder.parse(openjd.model_dump() if hasattr(openjd, "model_dump") else openjd)
    except OpenJDOrderError as e:
        raise RenderError(str(e)) from None
    live = LiveLog(rt, order.attempt_id)
    progress = _Progress(rt, order.attempt_id)

    def on_log(line: str) -> None:
        attempt_log.write(f"{line}\n".encode("utf-8", "replace"))
        live.add(line)

    def on_status(text: str) -> None:
        attempt_log.note(f"status: {text}")
        progress.status(text)

    result = runner_of(rt).run_task(
        order.job_id, task, on_log=on_log, on_progress=progress.send, on_status=on_status,
        stage_inputs=stager(rt, inputs, attempt_log) if inputs else None, should_stop=rt.should_stop)
    live.flush()
    attempt_log.flush()
    rt.raise_if_stopped()
    if result.outcome is Outcome.TIMED_OUT:
        raise RenderError(f"step {task.step}: timed out ({result.message})")
    if not result.ok:
        raise RenderError(f"step {task.step}: {result.message}")
    out = workdir / "out"
    copies = []
    for relative in result.outputs:  # copied: the session's next task may write the same names
        target = out / relative
        try:  # never through a link: the render user may have swapped one in since the snapshot
            copy_out(result.output_root, relative, target)
        except OSError as e:
            raise RenderError(f"output {relative}: cannot read it ({e.strerror or e})") from None
        copies.append((relative, target))
    return [upload(rt, order, relative, path) for relative, path in copies]


def upload(rt: WorkerRuntime, order: TaskOrder, relative: str, path: Path) -> OpenJDOutput:
    """Upload one output under the attempt's prefix, with its SHA-256 for the manager's check."""
    from renderfarm.wire.base import check_relative_path
    from renderfarm_worker.render import read_output

    data = read_output(path)
    if not data:
        raise RenderError(f"output {relative} is empty")
    try:  # a name the farm cannot store or download safely fails the task, saying which
        check_relative_path(relative)
    except ValueError as e:
        raise RenderError(f"output: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    key = f"{order.prefix}outputs/{relative}"
    etag = rt.with_storage(f"upload {key}", lambda: rt.storage.put_file(key, path, sha256=digest))
    path.unlink()
    return OpenJDOutput(relative, digest, len(data), etag or None)


class _Progress:
    """openjd_progress (a percentage) and openjd_status (a line of text) as the attempt's progress
    events, at most one a second; each carries the latest of both."""

    def __init__(self, rt: WorkerRuntime, attempt_id: int) -> None:
        self.rt, self.attempt_id = rt, attempt_id
        self.next = time.monotonic() + PROGRESS_EVERY
        self.fraction = 0.0
        self.text: str | None = None

    def send(self, percent: float) -> None:
        if not 0 <= percent < 100:
            return
        self.fraction = round(percent / 100, 4)
        self._maybe_send()

    def status(self, text: str) -> None:
        from renderfarm.wire.events import STATUS_MAX

        # One printable line, as the wire takes it: control characters become spaces.
        self.text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)[:STATUS_MAX]
        self._maybe_send()

    def _maybe_send(self) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + PROGRESS_EVERY
        self.rt.events.send(Progress(worker=self.rt.name, attempt_id=self.attempt_id,
                                     progress=self.fraction, status=self.text))
