"""Worker heartbeats in Redis: who is alive, what each is doing, and since when."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from renderfarm import keys

if TYPE_CHECKING:
    from redis import Redis


def beat(r: Redis, name: str, info: dict[str, Any], ttl: float) -> None:
    """Refresh a worker's heartbeat; it expires after `ttl` seconds unless refreshed."""
    pipe = r.pipeline(transaction=False)
    pipe.set(keys.heartbeat_key(name), json.dumps(info), px=int(ttl * 1000))
    pipe.sadd(keys.WORKERS_SET, name)
    pipe.execute()


def leave(r: Redis, name: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.delete(keys.heartbeat_key(name))
    pipe.srem(keys.WORKERS_SET, name)
    pipe.execute()


def live_workers(r: Redis) -> dict[str, dict[str, Any]]:
    """Every worker with an unexpired heartbeat, with the info it last sent."""
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in r.smembers(keys.WORKERS_SET))
    if not names:
        return {}
    raw = r.mget([keys.heartbeat_key(n) for n in names])
    live = {}
    for name, value in zip(names, raw):
        if value is None:
            continue
        try:
            info = json.loads(value)
        except ValueError:
            continue
        if isinstance(info, dict):
            live[name] = info
    return live


def forget(r: Redis, names: list[str]) -> None:
    """Drop workers the manager has declared offline from the announced set."""
    if names:
        r.srem(keys.WORKERS_SET, *names)
