"""One renderer run on a worker: the renderer started for a task order, its output followed line
by line (frames as they land, progress, the live log for `farm log -f`), and each output checked
and uploaded under the attempt's own prefix."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import stat
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import RenderError, VerificationError
from renderfarm.keys import log_stream
from renderfarm.renderers.account import RenderAccount, render_account
from renderfarm.renderers.limits import Limits
from renderfarm.renderers.process import run_renderer, scrubbed_env
from renderfarm.renderers.registry import RenderRequest, get_renderer
from renderfarm.wire import Output, Progress

if TYPE_CHECKING:
    from renderfarm.renderers.process import RunResult
    from renderfarm.wire import TaskOrder
    from renderfarm_worker.attemptlog import AttemptLog
    from renderfarm_worker.runtime import WorkerRuntime

log = logging.getLogger("renderfarm.worker")

PROGRESS_EVERY = 1.0  # seconds between progress events
LOG_TAIL = 2000  # characters of the renderer's output quoted in a failure


class Render:
    """One renderer run: follows its output, takes each frame's file as it lands, reports progress."""

    def __init__(self, rt: WorkerRuntime, order: TaskOrder, workdir: Path, log_file: AttemptLog) -> None:
        self.rt, self.order, self.workdir, self.log_file = rt, order, workdir, log_file
        self.files: dict[int, Path] = {}
        # The first progress event waits a second: a task that is done sooner says so by its done
        # event alone (the manager's work per task is what limits a farm of short tasks).
        self.next_progress = time.monotonic() + PROGRESS_EVERY
        self.tail = ""
        self.live = LiveLog(rt, order.attempt_id)
        self.result: RunResult | None = None

    def run(self) -> list[tuple[int, Path]]:
        """Render; returns each frame's file, checked to exist and hold something."""
        order, rt = self.order, self.rt
        renderer = get_renderer(order.renderer)
        if renderer.name == "command" and not rt.settings.allow_commands:
            raise RenderError("the command renderer is not allowed on this worker (set FARM_ALLOW_COMMANDS=1)")
        if order.render_options.get("allow_scripts") and not rt.settings.allow_scripts:
            raise RenderError("the job lets its scene's scripts run; this worker does not allow scripts "
                              "(set FARM_ALLOW_SCRIPTS=1)")
        program = self._program(renderer.name)
        scene = rt.fetch_scene(order.scene_key, order.scene_sha256, order.scene_url)
        account = account_of(rt.settings.render_user)
        cwd = self.workdir
        if account is not None:
            cwd = self._open_to(account, scene)
        pattern = str(self.workdir / "out" / f"{order.name}.{{frame}}.{order.ext}")
        region = order.render_region
        size = (region.width, region.height) if region else (order.width, order.height)
        request = RenderRequest(
            scene, order.frames, pattern, *size, region=region, fmt=order.format,
            frame_size=(order.width, order.height), program=program, threads=rt.settings.render_threads,
            options=order.render_options, limits=Limits.of(rt.settings),
        )
        argv = renderer.command(request)
        self.log_file.note(f"{order.label} on {rt.name}: {' '.join(argv)}")
        session_argv = renderer.session_command()
        if session_argv:
            env = scrubbed_env()
            if account is not None:
                env = account.env(env, home=rt.scratch / "session")
            session = rt.session_for((order.job_id, order.renderer, order.scene_sha256), session_argv, env,
                                     account=account)
            self.log_file.note(f"in warm session {session.proc.pid}")
            result = self.result = session.render(
                renderer.session_request(request), timeout=order.timeout, log=self.log_file,
                on_line=self.on_line, should_stop=rt.should_stop,
            )
            if result.returncode != 0:
                rt.close_session()  # after any failure, the next task starts a fresh renderer
        else:
            env = scrubbed_env({"TMPDIR": str(cwd)})
            result = self.result = run_renderer(
                argv, cwd=cwd, env=account.env(env, home=cwd) if account else env, timeout=order.timeout,
                log=self.log_file, on_line=self.on_line, should_stop=rt.should_stop, account=account,
            )
            if account is not None:  # whatever it left running as the render user goes with it
                account.sweep()
        if account is not None:
            account.take_back(self.workdir / "out")
        self.live.flush()
        self.log_file.note(ending(result, order.timeout))
        rt.raise_if_stopped()
        if result.timed_out:
            raise RenderError(f"timed out after {order.timeout:g} s; the renderer's process group was killed")
        if result.returncode != 0:
            raise RenderError(f"{order.renderer} exited with status {result.returncode}: {self._last_line()}")
        missing = [f for f in order.frames if f not in self.files]
        if missing:
            raise RenderError(f"{order.renderer} exited 0 without writing frame(s) {', '.join(map(str, missing))}")
        for frame in order.frames:  # again, now that the renderer can no longer change them
            self._take_frame(frame, self.files[frame])
        # No lease check here: the finisher makes one before uploading, off the path to the next task.
        rt.raise_if_stopped()
        return [(f, self.files[f]) for f in order.frames]

    def _open_to(self, account: RenderAccount, scene: Path) -> Path:
        """Let the render user through to this attempt: the scene to read, `out/` and `tmp/` to
        write (its working directory); nothing else of the worker's (see renderers.account)."""
        scratch, scenes = self.rt.scratch, self.rt.scratch / "scenes"
        for passage in (scratch, scratch / "attempts", self.workdir):
            account.pass_through(passage)
        account.let_read(scenes / scene.relative_to(scenes).parts[0], scenes)
        account.give(self.workdir / "out")
        account.give(self.workdir / "tmp")
        return self.workdir / "tmp"

    def _program(self, renderer: str) -> str | None:
        """The executable of a renderer this worker runs from an install of its own (Blender),
        checked against the version the job needs."""
        if renderer != "blender":
            return None
        from renderfarm.scheduling import version_matches

        blender, need = self.rt.blender, self.order.renderer_version
        if blender is None:
            raise RenderError("no Blender on this worker (set FARM_BLENDER or put blender on PATH)")
        if need and not version_matches(blender.version, need):
            raise RenderError(f"the job needs Blender {need}; this worker has Blender {blender.version} at {blender.path}")
        return blender.path

    def on_line(self, line: str) -> None:
        self.tail = (self.tail + line + "\n")[-LOG_TAIL:]
        word, _, rest = line.partition(" ")
        if word not in ("frame", "progress"):  # the protocol's own lines are no news to a reader
            self.live.add(line)
        if word == "frame":
            frame_text, _, path = rest.partition(" ")
            try:
                frame = int(frame_text)
            except ValueError:
                raise RenderError(f"renderer reported frame {frame_text[:40]!r}, which is not a frame number") from None
            self._take_frame(frame, Path(path))
            self._progress(0.0)
        elif word == "progress":
            try:
                self._progress(float(rest.split()[-1]))
            except (ValueError, IndexError):
                pass

    def _take_frame(self, frame: int, path: Path) -> None:
        if frame not in self.order.frames:
            raise RenderError(f"renderer wrote frame {frame}, which is not in this task")
        try:
            st = path.lstat()  # a link is no output: the worker would read whatever it points at
        except (OSError, ValueError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or path.parent != self.workdir / "out":
            raise RenderError(f"renderer reported frame {frame} at {path}, which is not an output file")
        if st.st_size == 0:
            raise RenderError(f"renderer wrote an empty file for frame {frame}")
        self.files[frame] = path

    def _progress(self, fraction_of_frame: float) -> None:
        now = time.monotonic()
        if now < self.next_progress:
            return
        done = (len(self.files) + min(max(fraction_of_frame, 0.0), 1.0)) / len(self.order.frames)
        if done >= 1.0:  # every frame is in: the done event follows at once, and says more
            return
        self.next_progress = now + PROGRESS_EVERY
        self.rt.events.send(Progress(worker=self.rt.name, attempt_id=self.order.attempt_id, progress=round(done, 4)))

    def _last_line(self) -> str:
        lines = [ln for ln in self.tail.splitlines() if ln.strip() and not ln.startswith("#")]
        return lines[-1][:300] if lines else "(no output)"


@lru_cache(maxsize=4)
def account_of(name: str | None) -> RenderAccount | None:
    """The render user FARM_RENDER_USER names (checked once, at the worker's start)."""
    return render_account(name)


def ending(result: RunResult, timeout: float) -> str:
    """How a renderer run ended, for the last line of its log: never a bare `exit None`."""
    took = f"after {result.seconds:.2f} s (cpu {result.cpu_seconds:.2f} s)"
    if result.timed_out:
        return f"timed out {took}: the limit is {timeout:g} s; the renderer's process group was killed"
    if result.stopped:
        return f"stopped {took}: the render is no longer this worker's; its process group was killed"
    if result.returncode is None:
        return f"ended without an exit status {took}"
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return f"killed by {name} {took}"
    return f"exit {result.returncode} {took}"


class LiveLog:
    """A running attempt's renderer output, sent to Redis every half second for `farm log -f`
    (best effort: the stored log is the record), by the runtime's render-io thread."""

    EVERY = 0.5
    KEEP_LINES = 5000

    def __init__(self, rt: WorkerRuntime, attempt_id: int) -> None:
        self.rt, self.key = rt, log_stream(rt.name, attempt_id)
        self.lines: list[str] = []
        self.next_flush = time.monotonic() + self.EVERY

    def add(self, line: str) -> None:
        self.lines.append(line)
        if time.monotonic() >= self.next_flush:
            self.flush()

    def flush(self) -> None:
        import redis

        self.next_flush = time.monotonic() + self.EVERY
        if not self.lines:
            return
        text, self.lines = "\n".join(self.lines), []

        def post() -> None:
            try:
                pipe = self.rt.r.pipeline(transaction=False)
                pipe.xadd(self.key, {"l": text}, maxlen=self.KEEP_LINES, approximate=True)
                pipe.expire(self.key, 24 * 3600)
                pipe.execute()
            except redis.RedisError:
                pass

        self.rt.render_io.submit(post)


def upload_output(rt: WorkerRuntime, order: TaskOrder, frame: int, path: Path) -> Output:
    """Check one output (it decodes, in the job's format, at the right size: a renderer that exits
    0 with a broken file has failed), upload it under the attempt's own prefix, and return its
    record for the done event, with the version tag the manager's promotion is conditional on."""
    from renderfarm.images import check_image

    data = read_output(path)
    region = order.region
    width, height = (region.width, region.height) if region else (order.width, order.height)
    try:
        check_image(data, fmt=order.format, width=width, height=height, what=f"frame {frame} ({path.name})")
    except VerificationError as e:
        raise RenderError(f"output rejected: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    key = order.output_key(frame)
    etag = rt.with_storage(f"upload {key}", lambda: rt.storage.put_file(key, path, sha256=digest))
    path.unlink()
    return Output(frame=frame, sha256=digest, size=len(data), etag=etag or None)


def read_output(path: Path) -> bytes:
    """A renderer's output file, never what a link in its place points at."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RenderError(f"output {path.name} is not a regular file")
        return f.read()
