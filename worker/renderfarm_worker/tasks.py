"""The RQ entry point: render one attempt of a task and report it. Payloads are plain JSON."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderfarm import queues
from renderfarm.errors import RenderError, RenderFarmError, VerificationError
from renderfarm.events import EventType
from renderfarm.frames import frame_name
from renderfarm.keys import log_stream
from renderfarm.renderers.process import run_renderer, scrubbed_env
from renderfarm.renderers.registry import Region, RenderRequest, get_renderer
from renderfarm.stitching import TileProblem
from renderfarm.storage.keys import attempt_prefix
from renderfarm_worker import runtime
from renderfarm_worker.runtime import Interrupted, Lease

log = logging.getLogger("renderfarm.worker")

PROGRESS_EVERY = 1.0  # seconds between progress events
LOG_TAIL = 2000  # characters of the renderer's output quoted in a failure


@dataclass(frozen=True)
class AttemptSpec:
    """The checked payload of one attempt."""

    attempt_id: int
    attempt: int
    task_id: int
    task_index: int
    job_id: str
    name: str
    renderer: str
    scene_key: str
    scene_sha256: str
    frames: tuple[int, ...]
    format: str
    width: int
    height: int
    timeout: float
    kind: str = "render"
    region: Region | None = None  # a tile task's rectangle of the frame
    grid: str | None = None  # an assembly's tile grid, and where each of its tiles is committed
    tile_keys: tuple[str, ...] = ()
    renderer_version: str | None = None  # the version of the renderer the job needs ("3.4")
    options: dict[str, Any] = field(default_factory=dict)  # the job's render options (samples...)

    @classmethod
    def parse(cls, payload: Any) -> AttemptSpec:
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise RenderError(f"unsupported task payload {str(payload)[:200]!r}")
        try:
            region = payload.get("region")
            spec = cls(
                int(payload["attempt_id"]), int(payload["attempt"]), int(payload["task_id"]),
                int(payload["task_index"]), str(payload["job_id"]), str(payload["name"]),
                str(payload["renderer"]), str(payload["scene_key"]), str(payload["scene_sha256"]),
                tuple(int(f) for f in payload["frames"]), str(payload["format"]),
                int(payload["width"]), int(payload["height"]), float(payload["timeout"]),
                str(payload.get("kind", "render")),
                Region(*(int(v) for v in region)) if region is not None else None,
                payload.get("grid") and str(payload["grid"]),
                tuple(str(k) for k in payload.get("tile_keys", ())),
                payload.get("renderer_version") and str(payload["renderer_version"]),
                dict(payload.get("options") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RenderError(f"malformed task payload ({e!r})") from None
        if not spec.frames:
            raise RenderError("task payload names no frames")
        if spec.kind not in ("render", "tile", "assemble"):
            raise RenderError(f"unknown task kind {spec.kind!r}")
        return spec

    @property
    def label(self) -> str:
        return f"{self.job_id}:{self.task_index}/{self.attempt}"

    @property
    def prefix(self) -> str:
        return attempt_prefix(self.job_id, self.task_index, self.attempt)

    @property
    def ext(self) -> str:
        from renderfarm.images import extension

        return extension(self.format)

    def output_name(self, frame: int) -> str:
        return frame_name(self.name, frame, self.ext)


def render_task(payload: dict) -> dict:
    """Render the frames of one attempt, upload them under the attempt's own prefix, and report."""
    import redis

    rt = runtime.current()
    spec = AttemptSpec.parse(payload)
    try:
        ours = rt.owns(spec.task_id, spec.attempt_id)
    except redis.RedisError as e:  # cannot tell: give it back rather than risk a double render
        log.warning("handing %s back: Redis unreachable (%s)", spec.label, e)
        rt.events.send(EventType.RELEASED, attempt_id=spec.attempt_id, reason="Redis unreachable at start")
        return {"skipped": True}
    if not ours:
        log.info("skipping %s: no longer ours", spec.label)
        return {"skipped": True}
    rt.begin(Lease(spec.task_id, spec.attempt_id, spec.label))
    started = StartedEvent(rt, spec.attempt_id)
    meter = Meter(rt)
    workdir = rt.scratch / "attempts" / f"{spec.job_id}-{spec.task_index}-{spec.attempt}"
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "out").mkdir(parents=True)
    log_path = workdir / "render.log"
    handed_on = False
    try:
        with log_path.open("wb") as log_file:
            try:
                if spec.kind == "assemble":
                    from renderfarm_worker.assembly import assemble

                    outputs = assemble(rt, spec, workdir, log_file)
                else:
                    files = meter.watch(_Render(rt, spec, workdir, log_file)).run()
            except Interrupted as e:
                report_stop(rt, spec, e, log_file, log_path, meter)
                return {"ok": False}
            except Exception as e:  # every failure is reported; the manager decides on a retry
                report_failure(rt, spec, e, log_file, log_path, meter)
                return {"ok": False}
        # The log is closed (all its lines on disk) before anything reads it for upload.
        if spec.kind != "assemble":
            # The renderer is done: checking and uploading its files, the log and the done event
            # go on in the background while the next task renders.
            rt.finisher.submit(lambda: finish(rt, spec, files, workdir, log_path, meter))
            handed_on = True
            return {"ok": True}
        log_key = _upload_log(rt, spec, log_path)
        rt.events.send(EventType.DONE, attempt_id=spec.attempt_id, outputs=outputs, log_key=log_key,
                       usage=meter.usage())
        log.info("%s rendered %d frame(s)", spec.label, len(outputs))
        return {"ok": True}
    finally:
        started.cancel()
        rt.end()
        if not handed_on:
            shutil.rmtree(workdir, ignore_errors=True)


def finish(rt: runtime.WorkerRuntime, spec: AttemptSpec, files: list[tuple[int, Path]], workdir: Path,
           log_path: Path, meter: Meter) -> None:
    """An attempt's end, in the finisher's thread: its files are checked and uploaded together
    with its log, then the done event is sent if the attempt still holds its task (or the
    failure). The uploads and the lease check run side by side: on a long link each is mostly
    waiting for its answer, and the last task of a job waits for them all. An upload made for a
    superseded attempt is harmless: it lies under the attempt's own prefix."""
    from concurrent.futures import wait

    pool, submitted = rt.uploads, []
    try:
        with log_path.open("ab") as log_file:
            try:
                lease = pool.submit(queues.lease_holder, rt.r, spec.task_id)
                log_upload = pool.submit(_upload_log, rt, spec, log_path)
                uploads = [pool.submit(upload_output, rt, spec, frame, path) for frame, path in files]
                submitted = [lease, log_upload, *uploads]
                holder = lease.result()
                if holder is not None and holder != spec.attempt_id:
                    raise Interrupted("superseded before its frames were uploaded", hand_back=False)
                outputs = [u.result() for u in uploads]
                log_key = log_upload.result()
            except Interrupted as e:
                report_stop(rt, spec, e, log_file, log_path, meter)
                return
            except Exception as e:
                report_failure(rt, spec, e, log_file, log_path, meter)
                return
        rt.events.send(EventType.DONE, attempt_id=spec.attempt_id, outputs=outputs, log_key=log_key,
                       usage=meter.usage())
        log.info("%s rendered %d frame(s)", spec.label, len(outputs))
    finally:
        wait(submitted)  # none may still be reading the files removed here
        shutil.rmtree(workdir, ignore_errors=True)


def report_stop(rt: runtime.WorkerRuntime, spec: AttemptSpec, e: Interrupted, log_file, log_path: Path,
                meter: Meter) -> None:
    log_file.write(f"# stopped: {e}\n".encode())
    log_file.flush()
    log_key = _upload_log(rt, spec, log_path)
    if e.hand_back:  # not a failure of the task: the manager hands it out again
        rt.events.send(EventType.RELEASED, attempt_id=spec.attempt_id, reason=str(e), log_key=log_key,
                       usage=meter.usage())
    else:
        rt.events.send(EventType.FAILED, attempt_id=spec.attempt_id, error=str(e), log_key=log_key,
                       usage=meter.usage())
    log.warning("%s stopped: %s", spec.label, e)


def report_failure(rt: runtime.WorkerRuntime, spec: AttemptSpec, e: Exception, log_file, log_path: Path,
                   meter: Meter) -> None:
    error = str(e) if isinstance(e, RenderFarmError) else f"{type(e).__name__}: {e}"
    if not isinstance(e, RenderFarmError):
        log.exception("%s: unexpected error", spec.label)
    log_file.write(f"# failed: {error}\n".encode())
    log_file.flush()
    log_key = _upload_log(rt, spec, log_path)
    extra = {"bad_tiles": list(e.tile_indexes)} if isinstance(e, TileProblem) else {}
    rt.events.send(EventType.FAILED, attempt_id=spec.attempt_id, error=error, log_key=log_key,
                   usage=meter.usage(), **extra)
    log.warning("%s failed: %s", spec.label, error)


class StartedEvent:
    """The started event, sent only if the attempt is still running after a moment: a short task's
    done (or failed) event carries its start time instead, one event fewer for the manager."""

    DELAY = 1.0

    def __init__(self, rt: runtime.WorkerRuntime, attempt_id: int) -> None:
        import threading

        self.rt, self.attempt_id, self.ts = rt, attempt_id, time.time()
        self.timer = threading.Timer(self.DELAY, self._send)
        self.timer.daemon = True
        self.timer.start()

    def _send(self) -> None:
        self.rt.events.send(EventType.STARTED, attempt_id=self.attempt_id, ts=self.ts)

    def cancel(self) -> None:
        self.timer.cancel()


class Meter:
    """What an attempt burned: its wall time on this worker, and the CPU time of its renderer
    (and of this process, which downloads, uploads and stitches), for the manager's accounting."""

    def __init__(self, rt: runtime.WorkerRuntime) -> None:
        self.rt = rt
        self.start = time.monotonic()
        self.started_ts = time.time()
        self.own_cpu = _own_cpu()
        self.render: _Render | None = None

    def watch(self, render: _Render) -> _Render:
        self.render = render
        return render

    def usage(self) -> dict:
        renderer_cpu = self.render.result.cpu_seconds if self.render and self.render.result else 0.0
        return {
            "started_ts": self.started_ts,
            "site": self.rt.site, "watts": self.rt.watts, "watts_per_core": self.rt.watts_per_core,
            "wall": round(time.monotonic() - self.start, 3),
            "cpu": round(renderer_cpu + _own_cpu() - self.own_cpu, 3),
        }


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Render:
    """One renderer run: follows its output, takes each frame's file as it lands, reports progress."""

    def __init__(self, rt: runtime.WorkerRuntime, spec: AttemptSpec, workdir: Path, log_file) -> None:
        self.rt, self.spec, self.workdir, self.log_file = rt, spec, workdir, log_file
        self.files: dict[int, Path] = {}
        # The first progress event waits a second: a task that is done sooner says so by its done
        # event alone (the manager's work per task is what limits a farm of short tasks).
        self.next_progress = time.monotonic() + PROGRESS_EVERY
        self.tail = ""
        self.live = LiveLog(rt, spec.attempt_id)
        self.result = None

    def run(self) -> list[tuple[int, Path]]:
        """Render; returns each frame's file, checked to exist and hold something."""
        spec, rt = self.spec, self.rt
        renderer = get_renderer(spec.renderer)
        if renderer.name == "command" and not rt.settings.allow_commands:
            raise RenderError("the command renderer is not allowed on this worker (set FARM_ALLOW_COMMANDS=1)")
        program = self._program(renderer.name)
        scene = rt.fetch_scene(spec.scene_key, spec.scene_sha256)
        pattern = str(self.workdir / "out" / f"{spec.name}.{{frame}}.{spec.ext}")
        size = (spec.region.width, spec.region.height) if spec.region else (spec.width, spec.height)
        request = RenderRequest(
            scene, spec.frames, pattern, *size, region=spec.region, fmt=spec.format,
            frame_size=(spec.width, spec.height), program=program, threads=rt.settings.render_threads,
            options=spec.options,
        )
        argv = renderer.command(request)
        self.log_file.write(f"# {spec.label} on {rt.name}: {' '.join(argv)}\n".encode())
        self.log_file.flush()
        session_argv = renderer.session_command()
        if session_argv:
            session = rt.session_for((spec.job_id, spec.renderer, spec.scene_sha256), session_argv, scrubbed_env())
            self.log_file.write(f"# in warm session {session.proc.pid}\n".encode())
            result = self.result = session.render(
                renderer.session_request(request), timeout=spec.timeout, log=self.log_file,
                on_line=self.on_line, should_stop=rt.should_stop,
            )
            if result.returncode != 0:
                rt.close_session()  # after any failure, the next task starts a fresh renderer
        else:
            result = self.result = run_renderer(
                argv, cwd=self.workdir, env=scrubbed_env({"TMPDIR": str(self.workdir)}), timeout=spec.timeout,
                log=self.log_file, on_line=self.on_line, should_stop=rt.should_stop,
            )
        self.live.flush()
        self.log_file.write(f"# {ending(result, spec.timeout)}\n".encode())
        rt.raise_if_stopped()
        if result.timed_out:
            raise RenderError(f"timed out after {spec.timeout:g} s; the renderer's process group was killed")
        if result.returncode != 0:
            raise RenderError(f"{spec.renderer} exited with status {result.returncode}: {self._last_line()}")
        missing = [f for f in spec.frames if f not in self.files]
        if missing:
            raise RenderError(f"{spec.renderer} exited 0 without writing frame(s) {', '.join(map(str, missing))}")
        # No lease check here: the finisher makes one before uploading, off the path to the next task.
        rt.raise_if_stopped()
        return [(f, self.files[f]) for f in spec.frames]

    def _program(self, renderer: str) -> str | None:
        """The executable of a renderer this worker runs from an install of its own (Blender),
        checked against the version the job needs."""
        if renderer != "blender":
            return None
        from renderfarm.scheduling import version_matches

        blender, need = self.rt.blender, self.spec.renderer_version
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
            self._take_frame(int(frame_text), Path(path))
            self._progress(0.0)
        elif word == "progress":
            try:
                self._progress(float(rest.split()[-1]))
            except (ValueError, IndexError):
                pass

    def _take_frame(self, frame: int, path: Path) -> None:
        spec = self.spec
        if frame not in spec.frames:
            raise RenderError(f"renderer wrote frame {frame}, which is not in this task")
        if not path.is_file() or path.parent != self.workdir / "out":
            raise RenderError(f"renderer reported frame {frame} at {path}, which is not an output file")
        if path.stat().st_size == 0:
            raise RenderError(f"renderer wrote an empty file for frame {frame}")
        self.files[frame] = path

    def _progress(self, fraction_of_frame: float) -> None:
        now = time.monotonic()
        if now < self.next_progress:
            return
        done = (len(self.files) + min(max(fraction_of_frame, 0.0), 1.0)) / len(self.spec.frames)
        if done >= 1.0:  # every frame is in: the done event follows at once, and says more
            return
        self.next_progress = now + PROGRESS_EVERY
        self.rt.events.send(EventType.PROGRESS, attempt_id=self.spec.attempt_id, progress=round(done, 4))

    def _last_line(self) -> str:
        lines = [ln for ln in self.tail.splitlines() if ln.strip() and not ln.startswith("#")]
        return lines[-1][:300] if lines else "(no output)"


class LiveLog:
    """A running attempt's renderer output, sent to Redis every half second for `farm log -f`
    (best effort: the stored log is the record), by the runtime's render-io thread."""

    EVERY = 0.5
    KEEP_LINES = 5000

    def __init__(self, rt: runtime.WorkerRuntime, attempt_id: int) -> None:
        self.rt, self.key = rt, log_stream(attempt_id)
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


def ending(result, timeout: float) -> str:
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


def upload_output(rt: runtime.WorkerRuntime, spec: AttemptSpec, frame: int, path: Path) -> dict:
    """Check one output (it decodes, in the job's format, at the right size: a renderer that exits
    0 with a broken file has failed), upload it under the attempt's own prefix, and return its
    record for the done event, with the version tag the manager's promotion is conditional on."""
    from renderfarm.images import check_image

    data = path.read_bytes()
    width, height = (spec.region.width, spec.region.height) if spec.region else (spec.width, spec.height)
    try:
        check_image(data, fmt=spec.format, width=width, height=height, what=f"frame {frame} ({path.name})")
    except VerificationError as e:
        raise RenderError(f"output rejected: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    key = spec.prefix + spec.output_name(frame)
    etag = rt.with_storage(f"upload {key}", lambda: rt.storage.put_file(key, path, sha256=digest))
    path.unlink()
    return {"frame": frame, "key": key, "sha256": digest, "size": len(data), "etag": etag}


def _upload_log(rt: runtime.WorkerRuntime, spec: AttemptSpec, path: Path) -> str | None:
    key = spec.prefix + "log.txt"
    try:
        rt.with_storage(f"upload {key}", lambda: rt.storage.put_file(key, path))
    except (RenderFarmError, Interrupted) as e:
        log.warning("%s: could not store the log: %s", spec.label, e)
        return None
    return key
