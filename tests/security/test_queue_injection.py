"""Nothing in Redis can make a worker run code: pickled jobs and JSON jobs naming other
functions or callbacks are refused before anything is imported, and the worker renders on."""

from __future__ import annotations

import json
import pickle
import time

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_for, wait_job

from renderfarm import keys, presence
from renderfarm.config import load_settings
from renderfarm.redisconn import connect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("inject")
    env = farm_env(root / "state")
    run_farm("up", "-d", "-w", "1", env=env, timeout=120)
    yield root, env
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(root / "state")


def test_hostile_jobs_are_refused_and_the_worker_renders_on(farm):
    from rq import Queue
    from rq.job import Callback
    from rq.serializers import JSONSerializer

    root, env = farm
    settings = load_settings(env, cwd=root)
    r = connect(settings)
    worker = next(iter(presence.live_workers(r)))
    queue_name = keys.queue_name(worker)
    canaries = [root / f"canary-{i}" for i in range(4)]

    # 1. A pickled job (RQ's default serializer) naming os.system.
    Queue(queue_name, connection=r).enqueue_call("os.system", args=(f"touch {canaries[0]}",))
    # 2. A JSON job naming os.system as its function.
    json_queue = Queue(queue_name, connection=r, serializer=JSONSerializer)
    json_queue.enqueue_call("os.system", args=(f"touch {canaries[1]}",))
    # 3. A JSON job naming our own task, with os.system as its success and failure callbacks.
    json_queue.enqueue_call(
        "renderfarm_worker.tasks.render_task", args=({"v": 1},),
        on_success=Callback("os.system"), on_failure=Callback("os.system"),
    )
    # 4. A job hash whose data is a pickle that runs code when unpickled, written by hand.
    class Boom:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {canaries[3]}",))

    r.hset("rq:job:handmade", mapping={"data": pickle.dumps(Boom()), "origin": queue_name, "status": "queued",
                                       "created_at": "2026-01-01T00:00:00.000000Z", "description": "x"})
    r.rpush(f"rq:queue:{queue_name}", "handmade")

    wait_for(lambda: r.llen(f"rq:queue:{queue_name}") == 0, 30, "the worker to take the hostile jobs")
    time.sleep(2)
    assert not any(c.exists() for c in canaries), [c for c in canaries if c.exists()]
    log = (root / "state" / "logs" / f"{worker}.log").read_text()
    assert log.count("security: refused job") >= 4, log[-3000:]

    # The worker is still alive and still renders.
    job = json.loads(run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-2", "--json", env=env).stdout)["id"]
    wait_job(env, job, ("done",), 60)  # a render
    assert worker in presence.live_workers(r)
