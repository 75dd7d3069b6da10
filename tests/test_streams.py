"""Redis transport on a private Valkey: the control and event streams, the event sender through
an outage, worker heartbeats and the manager's leader lock."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import redis
from conftest import wait_for
from redis.backoff import NoBackoff
from redis.retry import Retry

from renderfarm import keys, presence, streams
from renderfarm.config import load_settings
from renderfarm.errors import FarmNotRunningError
from renderfarm.events import EventSender
from renderfarm.wire import Bye, CancelIntent, Done, Failed, Heartbeat, Output, Progress, Reply, Started, Usage
from renderfarm.localfarm import services
from renderfarm.manager.leader import LeaderLock
from renderfarm.redisconn import connect


@pytest.fixture()
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


EVENT_STREAM = keys.event_stream("node-01")
STREAMS = [keys.CONTROL_STREAM, EVENT_STREAM]


def plain(event) -> str:
    """Events as they are (a worker seals them: not this test's business)."""
    return event.to_json()


def entries(r: redis.Redis, stream: str) -> list[dict]:
    return [json.loads(fields[b"d"]) for _id, fields in r.xrange(stream)]


def post(r: redis.Redis, stream: str, doc: dict) -> str:
    """Post any JSON document (the manager parses it; the stream does not care)."""
    return streams.post(r, stream, json.dumps(doc))


def docs(got: list) -> list[tuple[str, str, dict | None]]:
    """Entries as read, with their JSON decoded."""
    return [(e.stream, e.id, json.loads(e.raw) if e.raw is not None else None) for e in got]


# -- the control stream: intents and replies ---------------------------------------------------


def test_intent_read_reply_round_trip(r: redis.Redis) -> None:
    intent = CancelIntent(request_id="ab" * 16, job="a1b2c3d4")
    assert streams.send_intent(r, intent) == "ab" * 16
    # The first read on a fresh Redis finds no consumer group yet: it creates one and reads nothing.
    assert streams.read(r, STREAMS, pending=False) == []
    got = streams.read(r, STREAMS, pending=False)
    assert len(got) == 1
    entry = got[0]
    assert entry.stream == keys.CONTROL_STREAM == "farm:control" and entry.is_control
    assert entry.id == r.xrange(keys.CONTROL_STREAM)[0][0].decode()
    assert (entry.raw, entry.deliveries) == (intent.to_json().encode(), 1)
    assert json.loads(entry.raw) == {"type": "cancel", "request_id": "ab" * 16, "job": "a1b2c3d4", "kill": False} \
        or json.loads(entry.raw) == {"type": "cancel", "request_id": "ab" * 16, "job": "a1b2c3d4"}
    assert streams.read(r, STREAMS, pending=False) == []  # delivered once

    streams.send_reply(r, intent.request_id, Reply(ok=True, job_id="a1b2c3d4"))
    assert 295 <= r.ttl(f"farm:reply:{intent.request_id}") <= 300  # unclaimed answers do not pile up
    assert streams.await_reply(r, intent.request_id, 1.0) == Reply(ok=True, job_id="a1b2c3d4")
    assert not r.exists(f"farm:reply:{intent.request_id}")


def test_await_reply_times_out_with_a_hint(r: redis.Redis) -> None:
    start = time.monotonic()
    with pytest.raises(FarmNotRunningError) as err:
        streams.await_reply(r, "0" * 32, 0.3)
    assert 0.25 <= time.monotonic() - start < 2.0
    assert (
        str(err.value)
        == "the manager did not answer within 0.3 s; is it running? (`farm up -d` starts the local farm)"
    )


def test_a_reply_waits_for_a_late_reader(r: redis.Redis) -> None:
    streams.send_reply(r, "late", Reply(ok=False, error="frames: '10-1' runs backwards"))
    streams.send_reply(r, "other", Reply(ok=True))
    assert streams.await_reply(r, "late", 0.5) == Reply(ok=False, error="frames: '10-1' runs backwards")
    assert streams.await_reply(r, "other", 0.5) == Reply(ok=True)


def test_pending_entries_come_back_after_a_restart_until_acknowledged(
    redis_url: str, r: redis.Redis
) -> None:
    streams.ensure_groups(r, STREAMS)
    c1 = post(r, keys.CONTROL_STREAM, {"type": "submit", "n": 1})
    c2 = post(r, keys.CONTROL_STREAM, {"type": "cancel", "n": 2})
    e1 = post(r, EVENT_STREAM, {"type": "started", "n": 3})
    e2 = post(r, EVENT_STREAM, {"type": "done", "n": 4})
    everything = [
        (keys.CONTROL_STREAM, c1, {"type": "submit", "n": 1}),
        (keys.CONTROL_STREAM, c2, {"type": "cancel", "n": 2}),
        (EVENT_STREAM, e1, {"type": "started", "n": 3}),
        (EVENT_STREAM, e2, {"type": "done", "n": 4}),
    ]
    assert streams.read(r, STREAMS, pending=True) == []  # nothing delivered yet, so nothing pending
    assert docs(streams.read(r, STREAMS, pending=False)) == everything

    # The manager dies before acknowledging; a new one (a new connection) reads them again.
    restarted = redis.Redis.from_url(redis_url)
    assert streams.read(restarted, STREAMS, pending=False) == []
    assert docs(streams.read(restarted, STREAMS, pending=True)) == everything
    assert docs(streams.read(restarted, STREAMS, pending=True)) == everything  # still pending until acknowledged

    streams.ack(restarted, keys.CONTROL_STREAM, [c1, c2])
    streams.ack(restarted, EVENT_STREAM, [e1])
    assert docs(streams.read(restarted, STREAMS, pending=True)) == [
        (EVENT_STREAM, e2, {"type": "done", "n": 4})
    ]
    streams.ack(restarted, EVENT_STREAM, [e2])
    assert streams.read(restarted, STREAMS, pending=True) == []

    # New entries still arrive, and count is honoured per stream.
    c3 = post(r, keys.CONTROL_STREAM, {"type": "resume"})
    c4 = post(r, keys.CONTROL_STREAM, {"type": "suspend"})
    assert docs(streams.read(restarted, STREAMS, pending=False, count=1)) == [
        (keys.CONTROL_STREAM, c3, {"type": "resume"})
    ]
    assert docs(streams.read(restarted, STREAMS, pending=False, count=1)) == [
        (keys.CONTROL_STREAM, c4, {"type": "suspend"})
    ]
    restarted.close()


def test_a_blocking_read_returns_when_an_entry_arrives(r: redis.Redis) -> None:
    import threading

    streams.ensure_groups(r, STREAMS)
    start = time.monotonic()
    assert streams.read(r, STREAMS, pending=False, block_ms=200) == []
    assert 0.15 <= time.monotonic() - start < 2.0

    poster = threading.Timer(
        0.2,
        lambda: streams.post(
            redis.Redis(connection_pool=r.connection_pool), EVENT_STREAM, '{"type": "bye"}'
        ),
    )
    poster.start()
    start = time.monotonic()
    got = streams.read(r, STREAMS, pending=False, block_ms=5000)
    poster.join()
    assert [(s, d) for s, _, d in docs(got)] == [(EVENT_STREAM, {"type": "bye"})]
    assert time.monotonic() - start < 2.0


def test_flushall_loses_the_group_and_read_recreates_it(r: redis.Redis) -> None:
    streams.ensure_groups(r, STREAMS)
    post(r, keys.CONTROL_STREAM, {"type": "before"})
    assert [d for _, _, d in docs(streams.read(r, STREAMS, pending=False))] == [{"type": "before"}]

    r.flushall()
    # Posted after the wipe but before the manager's next read: still read, since the group
    # is recreated from the start of the stream.
    early = post(r, EVENT_STREAM, {"type": "started", "attempt_id": 9})
    assert streams.read(r, STREAMS, pending=False) == []  # NOGROUP: the group is recreated
    groups = {s: [g["name"].decode() for g in r.xinfo_groups(s)] for s in STREAMS}
    assert groups == {keys.CONTROL_STREAM: ["manager"], EVENT_STREAM: ["manager"]}
    later = post(r, keys.CONTROL_STREAM, {"type": "after"})
    assert docs(streams.read(r, STREAMS, pending=False)) == [
        (keys.CONTROL_STREAM, later, {"type": "after"}),
        (EVENT_STREAM, early, {"type": "started", "attempt_id": 9}),
    ]

    r.flushall()
    assert streams.read(r, STREAMS, pending=True) == []  # the pending read recreates the group as well
    again = post(r, keys.CONTROL_STREAM, {"type": "again"})
    assert docs(streams.read(r, STREAMS, pending=False)) == [(keys.CONTROL_STREAM, again, {"type": "again"})]


def test_ensure_groups_is_idempotent_and_keeps_the_position(r: redis.Redis) -> None:
    streams.ensure_groups(r, STREAMS)
    post(r, keys.CONTROL_STREAM, {"type": "one"})
    assert len(streams.read(r, STREAMS, pending=False)) == 1
    streams.ensure_groups(r, STREAMS)  # BUSYGROUP is not an error, and does not rewind the group
    assert streams.read(r, STREAMS, pending=False) == []


def test_ack_trims_the_stream_at_the_last_acknowledged_id(r: redis.Redis) -> None:
    streams.ensure_groups(r, STREAMS)
    ids = [post(r, EVENT_STREAM, {"type": "progress", "i": i}) for i in range(6)]
    post(r, keys.CONTROL_STREAM, {"type": "submit"})
    assert [e.id for e in streams.read(r, STREAMS, pending=False) if e.stream == EVENT_STREAM] == ids
    assert r.xlen(EVENT_STREAM) == 6

    streams.ack(r, EVENT_STREAM, ids[:3])
    # MINID keeps every id >= the last acknowledged one: what is unread or unacknowledged stays.
    assert [e.decode() for e, _ in r.xrange(EVENT_STREAM)] == ids[2:]
    assert r.xpending(EVENT_STREAM, "manager")["pending"] == 3
    streams.ack(r, EVENT_STREAM, ids[3:])
    assert [e.decode() for e, _ in r.xrange(EVENT_STREAM)] == ids[5:]
    assert r.xpending(EVENT_STREAM, "manager")["pending"] == 0
    assert r.xlen(keys.CONTROL_STREAM) == 1  # the other stream is left alone
    streams.ack(r, EVENT_STREAM, [])  # nothing to do
    assert r.xlen(EVENT_STREAM) == 1

    # Entries posted after the last acknowledged one are never trimmed.
    fresh = post(r, EVENT_STREAM, {"type": "done"})
    streams.ack(r, EVENT_STREAM, ids[5:])
    assert [e.decode() for e, _ in r.xrange(EVENT_STREAM)] == [ids[5], fresh]


def test_entries_come_back_raw_for_the_manager_to_parse(r: redis.Redis) -> None:
    streams.ensure_groups(r, STREAMS)
    raw = [{"d": "not json"}, {"d": "[1, 2]"}, {"d": b"\xff\xfe"}, {"other": "field"}, {"d": '{"type": "bye"}'}]
    ids = [r.xadd(keys.CONTROL_STREAM, fields).decode() for fields in raw]
    got = streams.read(r, STREAMS, pending=False)
    assert [(e.id, e.raw, e.deliveries) for e in got] == [
        (ids[0], b"not json", 1), (ids[1], b"[1, 2]", 1), (ids[2], b"\xff\xfe", 1), (ids[3], b"", 1),
        (ids[4], b'{"type": "bye"}', 1)]
    # Read again while pending, each says how often it was delivered; one deleted meanwhile
    # comes back without its fields.
    r.xdel(keys.CONTROL_STREAM, ids[4])
    again = streams.read(r, STREAMS, pending=True)
    assert [(e.id, e.deliveries) for e in again[:4]] == [(i, 2) for i in ids[:4]]
    assert (again[-1].id, again[-1].raw) == (ids[4], None)


def test_dead_letters_are_kept_newest_first(r: redis.Redis) -> None:
    from renderfarm.wire import DeadLetter

    assert streams.dead_letter_count(r) == 0
    letters = [DeadLetter(source="farm:events", entry=f"{i}-0", reason=f"bad {i}", raw="{}", at=float(i))
               for i in range(3)]
    streams.post_dead_letters(r, letters)
    streams.post_dead_letters(r, [])
    assert streams.dead_letter_count(r) == 3
    assert [letter for _id, letter in streams.dead_letters(r)] == letters[::-1]
    r.xadd(keys.DEAD_LETTERS, {"d": "not ours"})  # what does not parse is not shown
    assert [letter.entry for _id, letter in streams.dead_letters(r, count=2)] == ["2-0"]


# -- the event sender --------------------------------------------------------------------------


def fail(attempt: int, error: str = "renderer exited with status 1") -> Failed:
    return Failed(worker="node-01", attempt_id=attempt, error=error)


def done(attempt: int) -> Done:
    return Done(worker="node-01", attempt_id=attempt, outputs=(Output(frame=1, sha256="ab" * 32, size=9),),
                usage=Usage(wall=1.0))


def progress(attempt: int, fraction: float) -> Progress:
    return Progress(worker="node-01", attempt_id=attempt, progress=fraction)


def test_events_arrive_in_order(r: redis.Redis) -> None:
    sender = EventSender(r, EVENT_STREAM, plain)
    sent = []
    for attempt in range(1, 11):
        sender.send(Started(worker="node-01", attempt_id=attempt))
        sender.send(progress(attempt, 0.5))
        sender.send(done(attempt) if attempt % 3 else fail(attempt))
        sent += [("started", attempt), ("progress", attempt), ("done" if attempt % 3 else "failed", attempt)]
    sender.send(Bye(worker="node-01"))
    assert sender.close(10.0) is True
    got = entries(r, EVENT_STREAM)
    # Progress may be coalesced only into the progress just before it, of the same attempt:
    # with a started in between, none was, so every event is here in order.
    assert [(d["type"], d.get("attempt_id")) for d in got] == sent + [("bye", None)]
    assert all(d["worker"] == "node-01" for d in got)
    assert got[1] == {"type": "progress", "worker": "node-01", "attempt_id": 1, "progress": 0.5}


def test_flush_on_an_idle_sender_is_immediate(r: redis.Redis) -> None:
    sender = EventSender(r, EVENT_STREAM, plain)
    start = time.monotonic()
    assert sender.flush(5.0) is True
    assert sender.close() is True
    assert time.monotonic() - start < 1.5
    assert r.xlen(EVENT_STREAM) == 0


class PrivateValkey:
    """A Valkey of this test's own, which it may stop and start again on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = services.free_ports(1)[0]
        self.password = secrets.token_urlsafe(12)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = services.valkey_argv(self.data_dir, self.port, self.password, "127.0.0.1")
        log = self.data_dir / "valkey.log"
        self.proc = services.spawn(
            argv, cwd=self.data_dir, env=dict(os.environ), log_path=log, detach=False
        )
        probe = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1)
        services.wait_until(
            probe.ping, timeout=20, proc=self.proc, what="private valkey", log_path=log
        )
        probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture()
def own_valkey(tmp_path: Path):
    server = PrivateValkey(tmp_path / "vk")
    yield server
    server.stop()


def test_no_event_is_lost_while_redis_is_down(
    own_valkey: PrivateValkey, tmp_path: Path, caplog
) -> None:
    own_valkey.start()
    settings = load_settings(
        {"FARM_STATE_DIR": str(tmp_path / "state"), "FARM_REDIS_URL": own_valkey.url}, cwd=tmp_path
    )
    r = connect(settings)  # the client a worker uses
    sender = EventSender(r, EVENT_STREAM, plain)
    sender.send(Started(worker="node-01", attempt_id=1))
    assert sender.flush(5.0)

    own_valkey.stop()
    caplog.set_level(logging.WARNING, logger="renderfarm.events")
    sender.send(progress(1, 0.3))
    sender.send(done(1))
    sender.send(Started(worker="node-01", attempt_id=2))
    sender.send(progress(2, 0.3))
    sender.send(fail(2))
    # The sender itself sees the outage (after the client's own retries) and keeps everything.
    wait_for(
        lambda: any("event stream unreachable" in m for m in caplog.messages),
        15,
        "the sender to see the outage",
    )
    assert sender.flush(0.1) is False
    assert any("5 event(s) kept, retrying" in m for m in caplog.messages), caplog.messages

    own_valkey.start()  # same port, password and data directory
    assert sender.flush(20.0) is True
    assert sender.close() is True
    fresh = redis.Redis.from_url(own_valkey.url)
    got = entries(fresh, EVENT_STREAM)
    fresh.close()
    assert [(d["type"], d["attempt_id"]) for d in got] == [
        ("started", 1),
        ("progress", 1),
        ("done", 1),
        ("started", 2),
        ("progress", 2),
        ("failed", 2),
    ]
    assert got[-1]["error"] == "renderer exited with status 1"


def test_progress_of_one_attempt_is_coalesced_while_queued(own_valkey: PrivateValkey) -> None:
    # The client points at a port where nothing listens yet, so every event stays queued.
    r = redis.Redis(
        port=own_valkey.port,
        password=own_valkey.password,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    sender = EventSender(r, EVENT_STREAM, plain)
    for attempt, fraction in [(1, 0.1), (1, 0.2), (1, 0.3), (2, 0.1), (1, 0.4), (1, 0.5)]:
        sender.send(progress(attempt, fraction))
    sender.send(done(1))
    sender.send(progress(1, 0.6))
    sender.send(progress(1, 0.7))
    time.sleep(0.3)  # let the sender's first, failing try finish before the server starts
    own_valkey.start()
    assert sender.close(10.0) is True
    got = entries(r, EVENT_STREAM)
    assert [(d["type"], d["attempt_id"], d.get("progress")) for d in got] == [
        ("progress", 1, 0.3),  # 0.1 and 0.2 replaced while queued
        ("progress", 2, 0.1),  # another attempt's progress is never merged
        ("progress", 1, 0.5),  # merges only into the progress just before it
        ("done", 1, None),  # a non-progress event is never replaced
        ("progress", 1, 0.7),
    ]
    r.close()


# -- presence: worker heartbeats ---------------------------------------------------------------


def beat(r: redis.Redis, name: str, ttl: float = 30, **fields) -> None:
    from renderfarm.wire import Sealed

    sealed = Sealed.seal(Heartbeat(name=name, pid=fields.pop("pid", 7), ttl=ttl, **fields), node=name, seq=1, key="k")
    presence.beat(r, name, sealed.to_json(), ttl=ttl)


def test_beat_live_workers_and_leave(r: redis.Redis) -> None:
    assert presence.live_workers(r) == {}
    beat(r, "node-b", state="idle", pid=12)
    beat(r, "node-a", state="busy", task="abcd1234:7")
    live = presence.live_workers(r)
    assert list(live) == ["node-a", "node-b"]
    assert (live["node-a"]["state"], live["node-a"]["task"], live["node-b"]["pid"]) == ("busy", "abcd1234:7", 12)
    assert 29_000 < r.pttl("farm:hb:node-a") <= 30_000

    beat(r, "node-a", state="idle")  # the newest info replaces the old
    assert presence.live_workers(r)["node-a"]["state"] == "idle"

    presence.leave(r, "node-b")
    assert list(presence.live_workers(r)) == ["node-a"]
    assert not r.exists("farm:hb:node-b")
    assert presence.read_beats(r, ["node-a", "node-b"]).keys() == {"node-a"}
    assert presence.read_beats(r, []) == {}


def test_heartbeat_expires_after_its_ttl(r: redis.Redis) -> None:
    beat(r, "short", ttl=1.0, seq=1)
    beat(r, "long", ttl=30, seq=2)
    assert 900 < r.pttl("farm:hb:short") <= 1000
    time.sleep(0.6)
    beat(r, "short", ttl=1.0, seq=3)  # a beat in time keeps it alive past the first TTL
    time.sleep(0.6)
    assert {n: b["seq"] for n, b in presence.live_workers(r).items()} == {"short": 3, "long": 2}
    wait_for(
        lambda: "short" not in presence.live_workers(r),
        2.0,
        "the short heartbeat to expire",
        interval=0.05,
    )
    assert list(presence.live_workers(r)) == ["long"]


def test_a_heartbeat_that_does_not_read_is_not_listed(r: redis.Redis) -> None:
    beat(r, "ok")
    r.set("farm:hb:bad", "{not json")
    r.set("farm:hb:list", "[1]")
    beat(r, "other")
    r.set("farm:hb:other", r.get("farm:hb:ok"))  # a beat under another node's name
    assert list(presence.live_workers(r)) == ["ok"]


# -- the manager's leader lock -----------------------------------------------------------------


def test_a_second_manager_waits_until_the_first_releases(r: redis.Redis) -> None:
    first, second = LeaderLock(r, ttl=10), LeaderLock(r, ttl=10)
    assert first.token != second.token
    assert first.token.split(":")[1] == str(os.getpid())
    assert first.holder() is None
    assert first.acquire() is True
    assert first.holder() == first.token == second.holder()
    assert 9_000 < r.pttl(keys.MANAGER_LEADER) <= 10_000

    assert second.acquire() is False
    assert second.renew() is False  # cannot renew, nor take, a lock someone else holds
    second.release()  # releasing a lock one does not hold does nothing
    assert first.holder() == first.token

    r.pexpire(keys.MANAGER_LEADER, 2_000)
    assert first.renew() is True
    assert 9_000 < r.pttl(keys.MANAGER_LEADER) <= 10_000  # renewed to the full TTL
    assert first.acquire() is False  # not re-entrant: acquire is for a lock that is free

    first.release()
    assert first.holder() is None
    assert second.acquire() is True
    assert first.renew() is False
    assert second.holder() == second.token


def test_the_lock_passes_on_when_its_holder_stops_renewing(r: redis.Redis) -> None:
    first, second = LeaderLock(r, ttl=0.3), LeaderLock(r, ttl=0.3)
    assert first.acquire() is True
    assert second.acquire() is False
    wait_for(second.acquire, 2.0, "the first lock to expire", interval=0.05)
    assert second.holder() == second.token
    assert first.renew() is False  # expired and taken: the first manager has lost it
    first.release()
    assert second.holder() == second.token


def test_renew_takes_the_lock_back_when_it_is_free(r: redis.Redis) -> None:
    """renew() re-acquires a lock that expired (or was wiped with FLUSHALL) and nobody took."""
    lock = LeaderLock(r, ttl=10)
    assert lock.acquire() is True
    r.flushall()
    assert lock.holder() is None
    assert lock.renew() is True
    assert lock.holder() == lock.token
    assert 9_000 < r.pttl(keys.MANAGER_LEADER) <= 10_000
    other = LeaderLock(r, ttl=10)
    assert other.acquire() is False
