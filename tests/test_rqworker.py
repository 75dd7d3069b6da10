"""The worker's RQ subclass on a real Valkey: its records are written later, its state at once."""

from __future__ import annotations

import redis
from nodekit import events_of, unenrolled
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


def test_an_entry_rq_cannot_read_is_dropped_and_the_work_loop_goes_on(redis_url: str) -> None:
    """A queue entry whose id RQ refuses ('../' in it) ended RQ's work loop, and stayed in its
    intermediate queue to end it again at the next maintenance."""
    from rq import Queue
    from rq.job import Job

    r = redis.Redis.from_url(redis_url)
    queue = Queue("farm.worker.u", connection=r, serializer=JSONSerializer)
    made = Job.create("renderfarm_worker.tasks.render_task", args=("{}",), connection=r,
                      serializer=JSONSerializer, id="attempt-1", origin=queue.name)
    bad = "attempt-1/../../x"
    r.hset(Job.key_for(bad), mapping={**made.to_dict(), "status": "queued"})
    r.rpush(queue.key, bad)
    queue.enqueue_call("os.system", args=("true",), job_id="after")  # refused too, once reached
    worker = FarmWorker([queue.name], connection=r, name="u.1.1", serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
    assert r.llen(queue.key) == 0 and r.llen(queue.intermediate_queue_key) == 0
    assert not r.exists(Job.key_for(bad)) and not r.exists(Job.key_for("after"))


def test_a_job_record_rq_cannot_read_is_refused_and_the_work_loop_goes_on(redis_url: str, tmp_path) -> None:
    """Job records written by hand with a date, timeout or status RQ cannot parse: each made RQ's
    dequeue raise, which ended the work loop and lost the entry unreported. Each is refused (and
    reported, to be dead-lettered) like any job that is not ours, and the jobs behind them too."""
    import json

    from rq import Queue

    from renderfarm import keys, wire
    from renderfarm.config import load_settings
    from renderfarm.queues import RENDER_TASK
    from renderfarm_worker import runtime

    r = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
                              "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}"}, cwd=tmp_path)
    rt = runtime.WorkerRuntime(settings=settings, credentials=unenrolled("t", settings), pool="default",
                               scratch=tmp_path / "scratch", r=r)
    runtime.install(rt)
    queue = keys.queue_name("t")
    data = json.dumps([RENDER_TASK, None, ["{}"], {}])
    records = {
        "bad-date": {"data": data, "created_at": "yesterday"},
        "bad-timeout": {"data": data, "timeout": "soon"},
        "bad-status": {"data": data, "status": "exploded"},
        "bad-dependencies": {"data": data, "dependency_ids": "[[["},
    }
    for job_id, record in records.items():
        r.hset(f"rq:job:{job_id}", mapping={"origin": queue, **record})
        r.rpush(f"rq:queue:{queue}", job_id)
    Queue(queue, connection=r, serializer=JSONSerializer).enqueue_call("os.system", args=("true",), job_id="last")
    worker = FarmWorker([queue], connection=r, name="t.1.1", serializer=JSONSerializer)
    try:
        worker.work(burst=True)
        assert rt.events.flush(10)
    finally:
        runtime.install(None)
    assert r.llen(f"rq:queue:{queue}") == 0
    refused = events_of(r, "t")
    unreadable = "its record is not RQ's"
    assert [(e.rq_id, e.reason.split(": ", 1)[1].split(" (")[0]) for e in refused] == [
        ("bad-date", unreadable), ("bad-timeout", unreadable), ("bad-status", unreadable),
        ("bad-dependencies", unreadable), ("last", "it names function 'os.system'"),
    ]
    assert not any(r.exists(f"rq:job:{job_id}") for job_id in records)


def test_an_entry_whose_record_the_node_may_not_read_is_refused_and_the_work_loop_goes_on(
        redis_url: str, tmp_path) -> None:
    """A queue entry whose id is not one of the node's own jobs' (found by fuzzing): Valkey refuses
    the node its record, and RQ's dequeue raised that refusal, which ended the work loop and left
    the entry in the intermediate queue, unreported. It is refused and reported like any job that
    is not ours (its record left where the node may not delete it), and the jobs behind it too."""
    from rq import Queue
    from rq.job import Job

    from renderfarm import keys, nodes
    from renderfarm.config import load_settings
    from renderfarm_worker import runtime

    admin = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
                              "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}"}, cwd=tmp_path)
    credentials = unenrolled("v", settings)
    admin.execute_command("ACL", "SETUSER", nodes.redis_user("v"),
                          *nodes.acl_rule("v", credentials.node_id, nodes.password_digest("pw")))
    r = redis.Redis(port=admin.connection_pool.connection_kwargs["port"], username=nodes.redis_user("v"),
                    password="pw")
    rt = runtime.WorkerRuntime(settings=settings, credentials=credentials, pool="default",
                               scratch=tmp_path / "scratch", r=r)
    runtime.install(rt)
    queue = Queue(keys.queue_name("v"), connection=admin, serializer=JSONSerializer)
    queue.enqueue_call("renderfarm_worker.tasks.render_task", args=("{}",), job_id="fz-foreign")
    queue.enqueue_call("os.system", args=("true",), job_id=f"{credentials.node_id}-2")
    worker = FarmWorker([queue.name], connection=r, name=f"{credentials.node_id}.1.1", serializer=JSONSerializer)
    try:
        worker.work(burst=True, logging_level="WARNING")
        assert rt.events.flush(10)
    finally:
        runtime.install(None)
        # The server is the session's: its ACL log must not tell later tests of this node.
        admin.execute_command("ACL", "DELUSER", nodes.redis_user("v"))
        admin.execute_command("ACL", "LOG", "RESET")
    assert admin.llen(queue.key) == 0 and admin.llen(queue.intermediate_queue_key) == 0
    refused = events_of(admin, "v")
    assert [(e.rq_id, e.reason.split(": ", 1)[1]) for e in refused] == [
        ("fz-foreign", "its record is not this node's to read"),
        (f"{credentials.node_id}-2", "it names function 'os.system'"),
    ]
    assert admin.exists(Job.key_for("fz-foreign"))


def test_a_job_whose_record_names_another_queue_is_refused_before_rq_files_it_there(
        redis_url: str, tmp_path) -> None:
    """A job record written by hand with another queue as its origin (found by fuzzing): RQ filed
    the job's records (started, intermediate, finished) under that queue's keys, not the node's own."""
    from rq import Queue
    from rq.job import Job

    from renderfarm import keys
    from renderfarm.config import load_settings
    from renderfarm_worker import runtime

    r = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
                              "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}"}, cwd=tmp_path)
    rt = runtime.WorkerRuntime(settings=settings, credentials=unenrolled("w", settings), pool="default",
                               scratch=tmp_path / "scratch", r=r)
    runtime.install(rt)
    queue = Queue(keys.queue_name("w"), connection=r, serializer=JSONSerializer)
    queue.enqueue_call("renderfarm_worker.tasks.render_task", args=("{}",), job_id="elsewhere")
    r.hset(Job.key_for("elsewhere"), "origin", "farm.worker.other")
    worker = FarmWorker([queue.name], connection=r, name="w.1.1", serializer=JSONSerializer)
    try:
        worker.work(burst=True, logging_level="WARNING")
        assert rt.events.flush(10)
        worker._books.drain()
    finally:
        runtime.install(None)
    assert r.llen(queue.key) == 0 and r.llen(queue.intermediate_queue_key) == 0
    [refused] = events_of(r, "w")
    assert refused.rq_id == "elsewhere"
    assert refused.reason.endswith(f"its record names queue 'farm.worker.other', not {queue.name}")
    assert not list(r.scan_iter("rq:*farm.worker.other*"))
