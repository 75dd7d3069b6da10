"""The RQ entry point: render one attempt of a task and report it. The order is one JSON string,
parsed (renderfarm.wire.TaskOrder) before any path or key is built from it; anything that goes
wrong after that ends the attempt with an event that names it."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from renderfarm.errors import RenderFarmError
from renderfarm.stitching import TileProblem
from renderfarm.wire import Done, Failed, Released, Started, TaskOrder, Usage, WireError
from renderfarm_worker import runtime
from renderfarm_worker.attemptlog import AttemptLog
from renderfarm_worker.render import Render, upload_output
from renderfarm_worker.runtime import Interrupted, Lease

log = logging.getLogger("renderfarm.worker")


def render_task(raw: str) -> dict:
    """Render the frames of one attempt, upload them under the attempt's own prefix, and report."""
    import redis
    from rq import get_current_job

    rt = runtime.current()
    job = get_current_job()
    try:
        order = rt.open_order(raw, job.id if job is not None else None)
    except WireError as e:
        rt.refuse(job.id if job is not None else "?", str(e), raw)
        return {"refused": True}
    try:
        ours = rt.owns(order.task_id, order.attempt_id)
    except redis.RedisError as e:  # cannot tell: give it back rather than risk a double render
        log.warning("handing %s back: Redis unreachable (%s)", order.label, e)
        rt.events.send(Released(worker=rt.name, attempt_id=order.attempt_id, reason="Redis unreachable at start"))
        return {"skipped": True}
    if not ours:
        log.info("skipping %s: no longer ours", order.label)
        return {"skipped": True}
    rt.begin(Lease(order.task_id, order.attempt_id, order.label))
    try:
        return _render(rt, order)
    finally:
        rt.end()


def sleep_node(raw: str) -> dict:
    """Obey the manager's sleep order: run this node's sleep command (renderfarm_worker.sleep)."""
    from rq import get_current_job

    from renderfarm_worker.sleep import go_to_sleep, open_sleep_order

    rt = runtime.current()
    job = get_current_job()
    try:
        order = open_sleep_order(rt, raw, job.id if job is not None else None)
    except WireError as e:
        rt.refuse(job.id if job is not None else "?", str(e), raw)
        return {"refused": True}
    return go_to_sleep(rt, order)


def _render(rt: runtime.WorkerRuntime, order: TaskOrder) -> dict:
    started = StartedEvent(rt, order.attempt_id)
    meter = Meter(rt)
    workdir = rt.attempt_dir(f"attempt-{order.attempt_id}")
    attempt_log: AttemptLog | None = None
    handed_on = False
    try:
        try:
            shutil.rmtree(workdir, ignore_errors=True)
            (workdir / "out").mkdir(parents=True)
            attempt_log = AttemptLog(workdir / "render.log")
            if order.kind == "assemble":
                from renderfarm_worker.assembly import assemble

                outputs = assemble(rt, order, workdir, attempt_log)
            elif (openjd := getattr(order, "openjd", None)) is not None:
                from renderfarm_worker.openjd_render import render_openjd

                outputs = [o.wire() for o in render_openjd(rt, order, openjd, workdir, attempt_log)]
            else:
                files = meter.watch(Render(rt, order, workdir, attempt_log)).run()
        except Interrupted as e:
            report_stop(rt, order, e, attempt_log, meter)
            return {"ok": False}
        except Exception as e:  # every failure is reported (a full disk too); the manager decides on a retry
            report_failure(rt, order, e, attempt_log, meter)
            return {"ok": False}
        finally:
            started.cancel()
        if order.kind != "assemble" and getattr(order, "openjd", None) is None:
            # The renderer is done: checking and uploading its files, the log and the done event
            # go on in the background while the next task renders.
            rt.finisher.submit(lambda: finish(rt, order, files, workdir, attempt_log, meter))
            handed_on = True
            return {"ok": True}
        log_key = attempt_log.upload(rt, order.prefix + "log.txt")
        rt.events.send(Done(worker=rt.name, attempt_id=order.attempt_id, outputs=tuple(outputs), log_key=log_key,
                            usage=meter.usage()))
        log.info("%s rendered %d frame(s)", order.label, len(outputs))
        return {"ok": True}
    finally:
        if not handed_on:
            if attempt_log is not None:
                attempt_log.close()
            shutil.rmtree(workdir, ignore_errors=True)
            rt.let_go(order.attempt_id)


def finish(rt: runtime.WorkerRuntime, order: TaskOrder, files: list[tuple[int, Path]], workdir: Path,
           attempt_log: AttemptLog, meter: Meter) -> None:
    """An attempt's end, in the finisher's thread: its files are checked and uploaded together
    with its log, then the done event is sent if the attempt still holds its task (or the
    failure). The uploads and the lease check run side by side: on a long link each is mostly
    waiting for its answer, and the last task of a job waits for them all. An upload made for a
    superseded attempt is harmless: it lies under the attempt's own prefix. Redis being away is
    no failure: the frames are kept and reported once it is back."""
    from concurrent.futures import wait

    pool, submitted = rt.uploads, []
    try:
        try:
            lease = pool.submit(rt.lease_holder_patiently, order.task_id)
            log_upload = pool.submit(attempt_log.upload, rt, order.prefix + "log.txt")
            uploads = [pool.submit(upload_output, rt, order, frame, path) for frame, path in files]
            submitted = [lease, log_upload, *uploads]
            holder = lease.result()
            if holder is not None and holder != order.attempt_id:
                raise Interrupted("superseded before its frames were uploaded", hand_back=False)
            outputs = [u.result() for u in uploads]
            log_key = log_upload.result()
        except Interrupted as e:
            wait(submitted)
            report_stop(rt, order, e, attempt_log, meter)
            return
        except Exception as e:
            wait(submitted)
            report_failure(rt, order, e, attempt_log, meter)
            return
        rt.events.send(Done(worker=rt.name, attempt_id=order.attempt_id, outputs=tuple(outputs), log_key=log_key,
                            usage=meter.usage()))
        log.info("%s rendered %d frame(s)", order.label, len(outputs))
    finally:
        wait(submitted)  # none may still be reading the files removed here
        attempt_log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        rt.let_go(order.attempt_id)


def report_stop(rt: runtime.WorkerRuntime, order: TaskOrder, e: Interrupted, attempt_log: AttemptLog | None,
                meter: Meter) -> None:
    log_key = _log_end(rt, order, attempt_log, f"stopped: {e}")
    if e.hand_back:  # not a failure of the task: the manager hands it out again
        rt.events.send(Released(worker=rt.name, attempt_id=order.attempt_id, reason=str(e)[:1000], log_key=log_key,
                                usage=meter.usage()))
    else:
        rt.events.send(Failed(worker=rt.name, attempt_id=order.attempt_id, error=str(e)[:4000], log_key=log_key,
                              usage=meter.usage()))
    log.warning("%s stopped: %s", order.label, e)


def report_failure(rt: runtime.WorkerRuntime, order: TaskOrder, e: Exception, attempt_log: AttemptLog | None,
                   meter: Meter) -> None:
    error = str(e) if isinstance(e, RenderFarmError) else f"{type(e).__name__}: {e}"
    if not isinstance(e, (RenderFarmError, OSError)):
        log.exception("%s: unexpected error", order.label)
    log_key = _log_end(rt, order, attempt_log, f"failed: {error}")
    bad_tiles = tuple(e.tile_indexes) if isinstance(e, TileProblem) else ()
    rt.events.send(Failed(worker=rt.name, attempt_id=order.attempt_id, error=error[:4000], log_key=log_key,
                          usage=meter.usage(), bad_tiles=bad_tiles))
    log.warning("%s failed: %s", order.label, error)


def _log_end(rt: runtime.WorkerRuntime, order: TaskOrder, attempt_log: AttemptLog | None, line: str) -> str | None:
    """End the attempt's log with how it ended and store it; where the disk never let the log be
    made (a full scratch disk), the one line is stored alone."""
    key = order.prefix + "log.txt"
    if attempt_log is None:
        try:
            rt.with_storage(f"upload {key}", lambda: rt.storage.put_bytes(key, f"# {line}\n".encode()))
        except (RenderFarmError, Interrupted) as e:
            log.warning("%s: could not store the log: %s", order.label, e)
            return None
        return key
    attempt_log.note(line)
    return attempt_log.upload(rt, key)


class StartedEvent:
    """The started event, sent only if the attempt is still running after a moment: a short task's
    done (or failed) event says how long it took instead, one event fewer for the manager."""

    DELAY = 1.0

    def __init__(self, rt: runtime.WorkerRuntime, attempt_id: int) -> None:
        self.rt, self.attempt_id, self.start = rt, attempt_id, time.monotonic()
        self.timer = threading.Timer(self.DELAY, self._send)
        self.timer.daemon = True
        self.timer.start()

    def _send(self) -> None:
        elapsed = round(time.monotonic() - self.start, 3)
        self.rt.events.send(Started(worker=self.rt.name, attempt_id=self.attempt_id, elapsed=elapsed))

    def cancel(self) -> None:
        self.timer.cancel()


class Meter:
    """What an attempt burned: its wall time on this worker, and the CPU time of its renderer
    (and of this process, which downloads, uploads and stitches), for the manager's accounting."""

    def __init__(self, rt: runtime.WorkerRuntime) -> None:
        self.rt = rt
        self.start = time.monotonic()
        self.own_cpu = _own_cpu()
        self.render: Render | None = None

    def watch(self, render: Render) -> Render:
        self.render = render
        return render

    def usage(self) -> Usage:
        renderer_cpu = self.render.result.cpu_seconds if self.render and self.render.result else 0.0
        return Usage(
            wall=round(min(time.monotonic() - self.start, 1e7), 3),
            cpu=round(max(0.0, renderer_cpu + _own_cpu() - self.own_cpu), 3),
            site=self.rt.site, watts=self.rt.watts, watts_per_core=self.rt.watts_per_core,
        )


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system
