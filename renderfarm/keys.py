"""Every Redis key the farm uses, in one place. Redis is transport only: the database is the truth."""

from __future__ import annotations

PREFIX = "farm:"

CONTROL_STREAM = PREFIX + "control"  # intents from the CLI (submit, cancel...) to the manager
EVENT_PREFIX = PREFIX + "events:"  # + node name: that node's sealed events (it may write no other)
DEAD_LETTERS = PREFIX + "dead"  # entries the manager could not parse or apply, with the reason
ACL_SEEN = PREFIX + "acl-seen"  # Valkey's ACL LOG entries the manager has counted, and how many times
S3_SEEN = PREFIX + "s3-seen"  # how far the manager has read each S3 server's log for refusals
MANAGER_GROUP = "manager"  # consumer group of the control stream and every node's event stream
MANAGER_LEADER = PREFIX + "manager:leader"  # leader lock: value is the holder's id, expires unless renewed
REPLY_PREFIX = PREFIX + "reply:"  # + request id: the manager's answer to one intent
HEARTBEAT_PREFIX = PREFIX + "hb:"  # + node name: its sealed heartbeat, expires after the heartbeat TTL
LEASE_PREFIX = PREFIX + "lease:"  # + task id: the attempt id that owns the task while it is live
QUEUE_PREFIX = "farm.worker."  # + node name: the node's own RQ queue name
LOG_PREFIX = PREFIX + "log:"  # + node name:attempt id: a running attempt's output, for `farm log -f`


def heartbeat_key(worker: str) -> str:
    return HEARTBEAT_PREFIX + worker


def lease_key(task_id: int) -> str:
    return f"{LEASE_PREFIX}{task_id}"


def reply_key(request_id: str) -> str:
    return REPLY_PREFIX + request_id


def queue_name(worker: str) -> str:
    return QUEUE_PREFIX + worker


def event_stream(node: str) -> str:
    return EVENT_PREFIX + node


def node_of_stream(stream: str) -> str | None:
    """The node whose event stream this is, or None (the control stream)."""
    return stream.removeprefix(EVENT_PREFIX) if stream.startswith(EVENT_PREFIX) else None


def log_stream(node: str, attempt_id: int) -> str:
    return f"{LOG_PREFIX}{node}:{attempt_id}"
