"""The RQ worker class farm-worker runs: in-process jobs, one queue, our functions only, and a
shutdown that finishes the render, or hands it back after a grace period or a second SIGTERM."""

from __future__ import annotations

import logging
import threading

from rq import SimpleWorker

from renderfarm.queues import ALLOWED_FUNCTIONS
from renderfarm_worker import runtime

log = logging.getLogger("renderfarm.worker")


CALLBACK_FIELDS = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")


def refusal(job) -> str | None:
    """Why a queued job must not run, or None. RQ imports a job's function and its callbacks by
    dotted name, so anyone who can write to Redis could name os.system: only our own task
    function, with JSON arguments and no callbacks, may run. Checked before anything is imported."""
    try:
        name = job.func_name  # decodes the job's data with the JSON serializer, nothing else
    except Exception as e:  # a pickle, or anything else that is not our JSON
        return f"its data is not JSON ({type(e).__name__})"
    if name not in ALLOWED_FUNCTIONS:
        return f"it names function {name!r}"
    if getattr(job, "_instance", None) is not None:
        return "it names an instance method"
    callbacks = [getattr(job, f, None) for f in CALLBACK_FIELDS]
    if any(callbacks):
        return f"it names callbacks {[c for c in callbacks if c]}"
    return None


class FarmWorker(SimpleWorker):
    """Runs jobs in this process (the renderer is already a subprocess, so forking a horse per
    job buys nothing), and refuses any job whose function is not ours."""

    def execute_job(self, job, queue):
        why = refusal(job)
        if why:
            log.error("security: refused job %s from queue %s: %s", job.id, queue.name, why)
            self._drop(job, queue)
            return
        super().execute_job(job, queue)

    def _drop(self, job, queue) -> None:
        """Remove a refused job with plain Redis commands: nothing of it is decoded or imported."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        pipe.delete(job.key)
        pipe.execute()

    def request_stop(self, signum, frame):
        """First SIGTERM: take no new work, let the render finish for up to the grace period."""
        rt = runtime._CURRENT
        if rt is not None and not rt.stopping:
            rt.stopping = True
            try:
                rt.beat()  # tell the manager at once, so it stops prefetching into our queue
            except Exception:
                pass
            grace = rt.settings.shutdown_grace
            timer = threading.Timer(grace, rt.hand_back_now)
            timer.daemon = True
            timer.start()
            if rt.lease is not None:
                log.info("finishing %s before exiting (at most %g s more; SIGTERM again to hand it back now)", rt.lease.label, grace)
        super().request_stop(signum, frame)

    def request_force_stop(self, signum, frame):
        """Second SIGTERM: stop the render now and hand the task back, then exit."""
        rt = runtime._CURRENT
        if rt is not None:
            rt.hand_back_now()
