"""The worker's RQ subclass on a real Valkey: its records are written later, its state at once."""

from __future__ import annotations

import redis
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from renderfarm_worker.rqworker import FarmWorker


def test_a_state_written_later_never_overrides_a_newer_one(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    worker = FarmWorker(["farm.worker.t"], connection=r, name="t.1.1", serializer=JSONSerializer)
    # A job ends (idle, written later), the next one starts at once (busy, in RQ's pipeline)...
    worker.set_state(WorkerStatus.IDLE)
    worker.set_state(WorkerStatus.BUSY, pipeline=r.pipeline())
    worker._books.drain()
    # ...and a SIGTERM now must find it busy, or RQ stops the render in the middle.
    assert worker.get_state() == WorkerStatus.BUSY
    assert r.hget(worker.key, "state") == WorkerStatus.IDLE.encode()  # the record, as written
    worker._books.close()
