"""Idle workers on a real Valkey: RQ's long blocking dequeue outlasts the socket timeout of
ordinary commands without a timeout, a reconnect or a log line, and a task queued then is taken
at once. RQ's dequeue wait (405 s) is shortened here to just past that timeout."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from conftest import wait_for
from renderfarm_worker.daemon import REDIS_CONNECTIONS, open_connections
from renderfarm_worker.rqworker import FarmWorker
from rq import Queue
from rq.serializers import JSONSerializer

from renderfarm.config import load_settings
from renderfarm.keys import queue_name
from renderfarm.redisconn import connect

COMMAND_TIMEOUT = 10.0  # connect()'s socket timeout for an ordinary command's reply
DEQUEUE = int(COMMAND_TIMEOUT) + 1  # RQ waits worker_ttl - 15 s for a job


def _stats(r, section: str, field: str) -> int:
    return int(r.info(section)[field])


def test_an_idle_worker_waits_past_the_socket_timeout_and_takes_the_next_task_at_once(
        redis_url: str, tmp_path: Path, caplog) -> None:
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url}, cwd=tmp_path)
    r = connect(settings)
    open_connections(r, REDIS_CONNECTIONS)  # as the daemon does: the pool opens them ahead
    worker = FarmWorker([queue_name("idle")], connection=r, name="idle.1.1", serializer=JSONSerializer,
                        worker_ttl=DEQUEUE + 15)
    assert worker.dequeue_timeout == DEQUEUE
    watch = connect(settings)  # this test's own connection, opened before it counts connections
    seen: dict[str, object] = {}

    def queue_a_task_after_a_long_wait() -> None:
        try:
            wait_for(lambda: _stats(watch, "clients", "blocked_clients") >= 1, 10, "the worker's dequeue")
            seen["connections"] = _stats(watch, "stats", "total_connections_received")
            # The first wait ends by its own timeout, after the socket timeout has passed...
            wait_for(lambda: watch.info("commandstats").get("cmdstat_blmove", {}).get("calls", 0) >= 1,
                     DEQUEUE + 15, "the worker's first dequeue wait to end by its own timeout")
            wait_for(lambda: _stats(watch, "clients", "blocked_clients") >= 1, 10, "the worker's next dequeue")
            # ...on the same connection (a timeout in redis-py drops it and opens another).
            seen["reconnects"] = _stats(watch, "stats", "total_connections_received") - seen["connections"]
        except AssertionError as e:
            seen["error"] = str(e)
        finally:  # the job also ends the worker's loop (max_jobs=1)
            queue = Queue(queue_name("idle"), connection=watch, serializer=JSONSerializer)
            queued = time.monotonic()
            queue.enqueue_call("builtins.print")  # refused by the worker: only its dequeue matters here
            while watch.llen(queue.key) and time.monotonic() - queued < 30:
                time.sleep(0.002)
            seen["pickup"] = time.monotonic() - queued

    helper = threading.Thread(target=queue_a_task_after_a_long_wait, daemon=True)
    caplog.set_level(logging.WARNING, logger="rq")
    helper.start()
    worker.work(max_jobs=1, logging_level="WARNING")  # in the main thread: RQ installs signal handlers
    helper.join(30)
    r.close()
    watch.close()

    noisy = [rec.getMessage() for rec in caplog.records if rec.name.startswith("rq")]
    assert noisy == []  # e.g. "could not connect to Redis instance: Timeout reading from socket"
    assert "error" not in seen, seen["error"]
    assert seen["reconnects"] == 0
    assert seen["pickup"] < 1.0, f"the task waited {seen['pickup']:.2f} s to be taken"


def test_how_long_a_command_may_hold_its_reply() -> None:
    from renderfarm.redisconn import blocking_seconds

    assert blocking_seconds(("GET", "k")) == 0
    assert blocking_seconds(("BLMOVE", "q", "q:i", "RIGHT", "LEFT", 405)) == 405
    assert blocking_seconds(("BLPOP", b"reply:1", 60.0)) == 60
    assert blocking_seconds(("BLPOP", "k", 0)) is None  # until an answer comes
    assert blocking_seconds(("BZMPOP", 2.5, 1, "z", "MIN")) == 2.5
    assert blocking_seconds(("XREAD", "COUNT", 100, "BLOCK", 1000, "STREAMS", "log", "0-0")) == 1.0
    assert blocking_seconds(("xreadgroup", "GROUP", "BLOCK", "c", "BLOCK", 200, "STREAMS", "s", ">")) == 0.2
    assert blocking_seconds(("XREAD", "STREAMS", "BLOCK", "0-0")) == 0  # a stream named BLOCK
    assert blocking_seconds(("XREAD", "BLOCK", 0, "STREAMS", "s", "$")) is None
    assert blocking_seconds(("WAIT", 1, 500)) == 0.5
    for refused in ("soon", "-1", "nan", "inf"):  # the server answers these with an error at once
        assert blocking_seconds(("BLPOP", "k", refused)) == 0
