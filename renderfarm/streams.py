"""The Redis streams: intents from the CLI to the manager (control), each node's own events, and
the manager's dead letters.

Each entry carries one JSON message (a renderfarm.wire class; a node's events sealed with its key)
in the field ``d``. The manager reads the control stream and every enrolled node's event stream
through one consumer group on each (a wiped Redis loses them: NOGROUP, so reads recreate them)
and parses each entry itself, so that one it cannot parse is put aside as a dead letter rather
than read again forever. A node may write only its own event stream: where an entry was found
says which node wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from renderfarm import keys
from renderfarm.errors import FarmNotRunningError

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.wire import DeadLetter, Message, Reply

CONSUMER = "manager"
DEAD_LETTERS_KEPT = 10_000  # the newest ones; older ones are trimmed
REPLY_TTL = 300  # seconds an unclaimed reply waits for its reader


@dataclass(frozen=True)
class Entry:
    """One entry as read: its stream, id, raw JSON (b"" when it has no `d` field, None when it was
    deleted while pending) and how many times it has been delivered to the manager."""

    stream: str
    id: str
    raw: bytes | None
    deliveries: int = 1

    @property
    def is_control(self) -> bool:
        return self.stream == keys.CONTROL_STREAM

    @property
    def node(self) -> str | None:
        """The node whose event stream this entry was on (who wrote it), or None."""
        return keys.node_of_stream(self.stream)


def ensure_groups(r: Redis, streams: list[str]) -> None:
    """Create the manager's consumer group on these streams (and the streams), if missing."""
    import redis

    for stream in streams:
        try:
            r.xgroup_create(stream, keys.MANAGER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def post(r: Redis, stream: str, message: Message | str) -> str:
    """Append one message (or JSON text, in tests) to a stream; returns the entry id."""
    text = message if isinstance(message, str) else message.to_json()
    entry_id = r.xadd(stream, {"d": text})
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def read(r: Redis, streams: list[str], *, pending: bool, count: int = 500,
         block_ms: int | None = None) -> list[Entry]:
    """Entries of these streams: our own unacknowledged ones when `pending` (after a restart or an
    error), each with its delivery count, else new ones."""
    import redis

    start = "0" if pending else ">"
    try:
        reply = r.xreadgroup(
            keys.MANAGER_GROUP, CONSUMER, {s: start for s in streams}, count=count, block=block_ms
        )
    except redis.ResponseError as e:
        if "NOGROUP" not in str(e):
            raise
        ensure_groups(r, streams)
        return []
    out = []
    for stream, entries in reply or []:
        stream = stream.decode() if isinstance(stream, bytes) else stream
        counts = _deliveries(r, stream, entries) if pending and entries else {}
        for entry_id, fields in entries:
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            # No fields: deleted while pending (nothing to apply). No `d`: not ours (a dead letter).
            raw = fields.get(b"d", b"") if fields else None
            out.append(Entry(stream, entry_id, raw, counts.get(entry_id, 1)))
    return out


def _deliveries(r: Redis, stream: str, entries) -> dict[str, int]:
    """How many times each of these pending entries has been delivered (this read included)."""
    first, last = entries[0][0], entries[-1][0]
    rows = r.xpending_range(stream, keys.MANAGER_GROUP, min=first, max=last, count=len(entries) + 100)
    out = {}
    for row in rows:
        entry_id = row["message_id"]
        out[entry_id.decode() if isinstance(entry_id, bytes) else entry_id] = int(row["times_delivered"])
    return out


def ack(r: Redis, stream: str, entry_ids: list[str], keep_from: str | None = None, *, pipe=None) -> None:
    """Acknowledge applied entries and trim the stream up to the last of them, but never past
    `keep_from` (an entry read but deferred, to be applied later). With `pipe` (a pipeline of
    `r`), the commands join it for the caller to send: one round trip for many streams."""
    if not entry_ids:
        return
    trim_to = max(entry_ids, key=entry_order)
    if keep_from is not None and entry_order(keep_from) < entry_order(trim_to):
        trim_to = keep_from
    own = pipe is None
    if own:
        pipe = r.pipeline(transaction=False)
    pipe.xack(stream, keys.MANAGER_GROUP, *entry_ids)
    # MINID at the last acknowledged id, never a blind MAXLEN (FACTS.md).
    pipe.xtrim(stream, minid=trim_to, approximate=False)
    if own:
        pipe.execute()


def entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# -- intents and replies ----------------------------------------------------------------------


def send_intent(r: Redis, intent: Message) -> str:
    """Post an intent (submit, cancel...) for the manager; returns its request id."""
    post(r, keys.CONTROL_STREAM, intent)
    return intent.request_id


def await_reply(r: Redis, request_id: str, timeout: float) -> Reply:
    """Wait for the manager's answer to an intent."""
    from renderfarm.wire import Reply

    got = r.blpop([keys.reply_key(request_id)], timeout=timeout)
    if got is None:
        raise FarmNotRunningError(
            f"the manager did not answer within {timeout:g} s; is it running? (`farm up -d` starts the local farm)"
        )
    return Reply.parse(got[1])


def send_reply(r: Redis, request_id: str, reply: Reply) -> None:
    key = keys.reply_key(request_id)
    pipe = r.pipeline(transaction=False)
    pipe.rpush(key, reply.to_json())
    pipe.expire(key, REPLY_TTL)
    pipe.execute()


# -- dead letters -----------------------------------------------------------------------------


def post_dead_letters(r: Redis, letters: list[DeadLetter]) -> None:
    """Keep entries the manager put aside (the newest DEAD_LETTERS_KEPT of them)."""
    if not letters:
        return
    pipe = r.pipeline(transaction=False)
    for letter in letters:
        pipe.xadd(keys.DEAD_LETTERS, {"d": letter.to_json()}, maxlen=DEAD_LETTERS_KEPT, approximate=True)
    pipe.execute()


def dead_letters(r: Redis, count: int = 100) -> list[tuple[str, DeadLetter]]:
    """The newest dead letters, newest first, with their entry ids."""
    from renderfarm.wire import DeadLetter, WireError

    out = []
    for entry_id, fields in r.xrevrange(keys.DEAD_LETTERS, count=count):
        try:
            letter = DeadLetter.parse(fields.get(b"d") or b"")
        except WireError:
            continue  # only the manager writes here; anything else is not ours to show
        out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, letter))
    return out


def dead_letter_count(r: Redis) -> int:
    return int(r.xlen(keys.DEAD_LETTERS))
