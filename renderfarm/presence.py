"""Node heartbeats in Redis: who is alive, what each is doing and holds, and what it can do.

Each node writes only its own key, sealed with its own key; the manager reads the keys of the
nodes it enrolled and checks each seal (renderfarm.manager.loop), listings just read them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from renderfarm import keys

if TYPE_CHECKING:
    from redis import Redis


def beat(r: Redis, name: str, sealed: str, ttl: float) -> None:
    """Refresh a node's heartbeat (its sealed text); it expires after `ttl` seconds unless refreshed."""
    r.set(keys.heartbeat_key(name), sealed, px=int(ttl * 1000))


def leave(r: Redis, name: str) -> None:
    r.delete(keys.heartbeat_key(name))


def read_beats(r: Redis, names: list[str]) -> dict[str, bytes]:
    """The heartbeat (sealed text) of each of these nodes that has one now."""
    if not names:
        return {}
    return {name: value for name, value in zip(names, r.mget([keys.heartbeat_key(n) for n in names]))
            if value is not None}


MAX_LISTED = 10_000  # heartbeats a listing reads at most


def live_workers(r: Redis, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Every node with an unexpired heartbeat that reads as one, as plain values (for listings:
    the manager alone checks seals), with `ts`: when it beat last, by this reader's clock `now`
    (from what is left of the beat's TTL in Redis, never from the node's own clock)."""
    import time

    from renderfarm.wire import Heartbeat, Sealed, WireError

    found = []
    for key in r.scan_iter(match=keys.HEARTBEAT_PREFIX + "*", count=1000):
        found.append(key.decode("utf-8", "replace") if isinstance(key, bytes) else key)
        if len(found) >= MAX_LISTED:
            break
    if not found:
        return {}
    pipe = r.pipeline(transaction=False)
    for key in found:
        pipe.get(key)
        pipe.pttl(key)
    answers = pipe.execute()
    now = time.time() if now is None else now
    out = {}
    for key, value, left_ms in zip(found, answers[::2], answers[1::2]):
        name = key.removeprefix(keys.HEARTBEAT_PREFIX)
        try:
            beat = Heartbeat.parse(Sealed.parse(value).body) if value is not None else None
        except WireError:
            continue
        if beat is None or beat.name != name:
            continue
        age = max(0.0, beat.ttl - left_ms / 1000) if isinstance(left_ms, int) and left_ms >= 0 else 0.0
        out[name] = {**beat.model_dump(mode="json", exclude_none=True), "ts": now - age}
    return dict(sorted(out.items()))
