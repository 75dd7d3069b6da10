"""The two Redis streams: intents from the CLI to the manager (control) and worker events.

Each entry carries one JSON document in the field ``d``. The manager reads both through one
consumer group; a wiped Redis loses the group (NOGROUP), so reads recreate it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from renderfarm import keys
from renderfarm.errors import FarmNotRunningError

if TYPE_CHECKING:
    from redis import Redis

STREAMS = (keys.CONTROL_STREAM, keys.EVENT_STREAM)
CONSUMER = "manager"


def ensure_groups(r: Redis) -> None:
    """Create the manager's consumer group on both streams (and the streams), if missing."""
    import redis

    for stream in STREAMS:
        try:
            r.xgroup_create(stream, keys.MANAGER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def post(r: Redis, stream: str, doc: dict[str, Any]) -> str:
    """Append one JSON document to a stream; returns the entry id."""
    entry_id = r.xadd(stream, {"d": json.dumps(doc, separators=(",", ":"))})
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def read(r: Redis, *, pending: bool, count: int = 500, block_ms: int | None = None) -> list[tuple[str, str, dict]]:
    """Read (stream, entry id, document) from both streams: our own unacknowledged entries when
    `pending` (after a restart), else new ones."""
    import redis

    start = "0" if pending else ">"
    try:
        reply = r.xreadgroup(
            keys.MANAGER_GROUP, CONSUMER, {s: start for s in STREAMS}, count=count, block=block_ms
        )
    except redis.ResponseError as e:
        if "NOGROUP" not in str(e):
            raise
        ensure_groups(r)
        return []
    out = []
    for stream, entries in reply or []:
        stream = stream.decode() if isinstance(stream, bytes) else stream
        for entry_id, fields in entries:
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            raw = fields.get(b"d") if fields else None
            try:
                doc = json.loads(raw) if raw is not None else None
            except ValueError:
                doc = None
            out.append((stream, entry_id, doc if isinstance(doc, dict) else {"type": "malformed"}))
    return out


def ack(r: Redis, stream: str, entry_ids: list[str], keep_from: str | None = None) -> None:
    """Acknowledge applied entries and trim the stream up to the last of them, but never past
    `keep_from` (an entry read but deferred, to be applied later)."""
    if not entry_ids:
        return
    trim_to = entry_ids[-1]
    if keep_from is not None and entry_order(keep_from) < entry_order(trim_to):
        trim_to = keep_from
    pipe = r.pipeline(transaction=False)
    pipe.xack(stream, keys.MANAGER_GROUP, *entry_ids)
    # MINID at the last acknowledged id, never a blind MAXLEN (FACTS.md).
    pipe.xtrim(stream, minid=trim_to, approximate=False)
    pipe.execute()


def entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def send_intent(r: Redis, kind: str, body: dict[str, Any]) -> str:
    """Post an intent (submit, cancel...) for the manager; returns its request id."""
    request_id = uuid.uuid4().hex
    post(r, keys.CONTROL_STREAM, {"type": kind, "request_id": request_id, "body": body, "ts": time.time()})
    return request_id


def await_reply(r: Redis, request_id: str, timeout: float) -> dict[str, Any]:
    """Wait for the manager's answer to an intent."""
    got = r.blpop([keys.reply_key(request_id)], timeout=timeout)
    if got is None:
        raise FarmNotRunningError(
            f"the manager did not answer within {timeout:g} s; is it running? (`farm up -d` starts the local farm)"
        )
    return json.loads(got[1])


def send_reply(r: Redis, request_id: str, doc: dict[str, Any]) -> None:
    key = keys.reply_key(request_id)
    pipe = r.pipeline(transaction=False)
    pipe.rpush(key, json.dumps(doc))
    pipe.expire(key, 300)
    pipe.execute()
