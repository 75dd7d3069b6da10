"""Every Redis key the farm uses, in one place. Redis is transport only: the database is the truth."""

from __future__ import annotations

PREFIX = "farm:"

CONTROL_STREAM = PREFIX + "control"  # intents from the CLI (submit, cancel...) to the manager
EVENT_STREAM = PREFIX + "events"  # worker events (started, progress, done, failed, released, refused, bye)
DEAD_LETTERS = PREFIX + "dead"  # entries the manager could not parse or apply, with the reason
MANAGER_GROUP = "manager"  # consumer group of both streams
MANAGER_LEADER = PREFIX + "manager:leader"  # leader lock: value is the holder's id, expires unless renewed
WORKERS_SET = PREFIX + "workers"  # names of workers that have announced themselves
REPLY_PREFIX = PREFIX + "reply:"  # + request id: the manager's answer to one intent
HEARTBEAT_PREFIX = PREFIX + "hb:"  # + worker name: JSON heartbeat, expires after the heartbeat TTL
LEASE_PREFIX = PREFIX + "lease:"  # + task id: the attempt id that owns the task while it is live
QUEUE_PREFIX = "farm.worker."  # + worker name: the worker's own RQ queue name
LOG_PREFIX = PREFIX + "log:"  # + attempt id: a running attempt's renderer output, for `farm log -f`


def heartbeat_key(worker: str) -> str:
    return HEARTBEAT_PREFIX + worker


def lease_key(task_id: int) -> str:
    return f"{LEASE_PREFIX}{task_id}"


def reply_key(request_id: str) -> str:
    return REPLY_PREFIX + request_id


def queue_name(worker: str) -> str:
    return QUEUE_PREFIX + worker


def log_stream(attempt_id: int) -> str:
    return f"{LOG_PREFIX}{attempt_id}"
