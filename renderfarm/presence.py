"""Worker heartbeats in Redis: who is alive, what each is doing and holds, and what it can do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderfarm import keys

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.wire import Heartbeat


@dataclass(frozen=True)
class BadBeat:
    """A name in the workers' set whose heartbeat breaks its contract (or whose name does)."""

    name: str
    raw: bytes | None
    reason: str
    member: bytes | str | None = None  # a bad name's member of the set, as stored (to drop it)


def beat(r: Redis, heartbeat: Heartbeat, ttl: float) -> None:
    """Refresh a worker's heartbeat; it expires after `ttl` seconds unless refreshed."""
    pipe = r.pipeline(transaction=False)
    pipe.set(keys.heartbeat_key(heartbeat.name), heartbeat.to_json(), px=int(ttl * 1000))
    pipe.sadd(keys.WORKERS_SET, heartbeat.name)
    pipe.execute()


def leave(r: Redis, name: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.delete(keys.heartbeat_key(name))
    pipe.srem(keys.WORKERS_SET, name)
    pipe.execute()


MAX_WORKERS = 100_000  # names read from the workers' set at most (a flood of names is refused)


def read_beats(r: Redis) -> tuple[dict[str, Heartbeat], list[BadBeat]]:
    """Every worker with an unexpired heartbeat that parses and names itself, and the bad ones
    (a name that is not a worker name, a beat that breaks its contract or names another worker)."""
    import re

    from renderfarm.wire import Heartbeat, WireError

    raw_names = list(r.sscan_iter(keys.WORKERS_SET, count=1000))[:MAX_WORKERS]
    names, bad = [], []
    for raw_name in raw_names:
        name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else str(raw_name)
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            names.append(name)
        else:
            reason = f"workers: {name[:80]!r} is not a worker name"
            bad.append(BadBeat(name[:200], None, reason, member=raw_name))
    if not names:
        return {}, bad
    names.sort()
    live = {}
    for name, value in zip(names, r.mget([keys.heartbeat_key(n) for n in names])):
        if value is None:
            continue
        try:
            heartbeat = Heartbeat.parse(value)
        except WireError as e:
            bad.append(BadBeat(name, value, str(e)))
            continue
        if heartbeat.name != name:
            bad.append(BadBeat(name, value, f"heartbeat: name {heartbeat.name!r} at the key of {name!r}"))
            continue
        live[name] = heartbeat
    return live, bad


def live_workers(r: Redis, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Every worker with a good, unexpired heartbeat, as plain values (for listings), with `ts`:
    when it beat last, by this reader's clock `now` (from what is left of the beat's TTL in Redis,
    never from the worker's own clock)."""
    import time

    live, _bad = read_beats(r)
    if not live:
        return {}
    pipe = r.pipeline(transaction=False)
    for name in live:
        pipe.pttl(keys.heartbeat_key(name))
    now = time.time() if now is None else now
    out = {}
    for (name, beat), left_ms in zip(live.items(), pipe.execute()):
        age = max(0.0, beat.ttl - left_ms / 1000) if isinstance(left_ms, int) and left_ms >= 0 else 0.0
        out[name] = {**beat.model_dump(mode="json", exclude_none=True), "ts": now - age}
    return out


def forget(r: Redis, names: list[str]) -> None:
    """Drop workers the manager has declared offline (or that never were workers) from the set."""
    if names:
        r.srem(keys.WORKERS_SET, *names)
