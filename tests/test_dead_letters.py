"""No entry wedges the manager: one that breaks its contract, names what its sender does not hold,
or fails to apply is acknowledged and kept as a dead letter with its reason, and the others are
applied (a real Valkey, SQLite and file storage; the manager driven tick by tick)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import wait_for
from nodekit import ActingNode, enroll_in_process
from test_manager_loop import in_process_manager

from renderfarm import keys, streams
from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.models import Job
from renderfarm.wire import CancelIntent, JobSpec, Progress, Sealed, SubmitIntent

SHA = "ab" * 32
SPEC = JobSpec(name="shot", owner="ana", renderer="null", scene_name="shot.toml", scene_key=f"scenes/{SHA}.toml",
               scene_sha256=SHA, frames="1-4", width=64, height=36)


def submit(request: str) -> SubmitIntent:
    return SubmitIntent(request_id=request * 32, job=SPEC)


def letters(manager) -> list:
    return [letter for _id, letter in streams.dead_letters(manager.r, count=1000)][::-1]


def jobs(manager) -> list[str]:
    with session_scope(manager.engine) as s:
        return sorted(j.request_id for j in s.query(Job).all())


def unacknowledged(manager) -> int:
    return sum(manager.r.xpending(stream, keys.MANAGER_GROUP)["pending"] for stream in manager.book.streams())


def test_bad_entries_are_dead_lettered_with_their_reasons_and_the_rest_applied(redis_url: str, tmp_path: Path):
    """The entries that wedged the farm for good: each is refused alone, the farm goes on."""
    manager = in_process_manager(redis_url, tmp_path)
    r = manager.r
    huge = json.loads(submit("1").to_json())
    huge["job"]["max_workers"] = 99999999999999999999999
    requires = json.loads(submit("2").to_json())
    requires["job"]["requires"] = 5
    bad_control = [json.dumps(huge), json.dumps(requires), "[" * 10_000 + "]" * 10_000,
                   json.dumps({"type": "cancel", "request_id": "3" * 32, "job": "../../x"})]
    bad_events = [
        json.dumps({"type": "progress", "worker": "w", "attempt_id": 1e30, "progress": 0.5}),
        json.dumps({"type": "progress", "worker": "w", "attempt_id": 1, "progress": "abc"}),
        json.dumps({"type": "started", "worker": "w", "attempt_id": 1, "ts": "x"}),
        json.dumps({"type": "done", "worker": "w", "attempt_id": 1, "outputs": 5,
                    "usage": {"wall": 1.0}}),
        json.dumps({"type": "done", "worker": "w", "attempt_id": 1,
                    "outputs": [{"frame": 1, "sha256": SHA, "size": 3}], "usage": {"wall": 1e308}}),
    ]
    node, other = ActingNode(enroll_in_process(manager, "w")), ActingNode(enroll_in_process(manager, "w2"))
    for raw in bad_control:
        streams.post(r, keys.CONTROL_STREAM, raw)
    streams.post(r, keys.CONTROL_STREAM, submit("a"))
    for raw in bad_events:  # sealed by the node itself: its seal is good, what it sealed is not
        node.post(r, raw)
    # Well formed, but naming an attempt that does not exist: refused, with the sender's name.
    node.post(r, Progress(worker="w", attempt_id=7, progress=0.5))
    node.post(r, Progress(worker="evil-node", attempt_id=7, progress=0.5))  # another's event, on its own stream
    streams.post(r, keys.event_stream("w"), Sealed.seal(Progress(worker="w", attempt_id=7, progress=0.5),
                                                         node="w", seq=2**60, key="not w's key"))
    replayed = node.sealed(Progress(worker="w", attempt_id=7, progress=0.5))
    streams.post(r, keys.event_stream("w"), replayed)
    streams.post(r, keys.event_stream("w"), replayed)
    r.xadd(keys.event_stream("w"), {"no-d": "field"})
    node.beat(r)
    r.set(keys.heartbeat_key("w2"), other.sealed(json.dumps({"name": "w2", "pid": "x"})), ex=30)

    manager.tick()
    manager.tick()  # a bad heartbeat is kept once, not once a round

    assert jobs(manager) == ["a" * 32]
    assert unacknowledged(manager) == 0
    reasons = [(letter.source, letter.worker, letter.reason) for letter in letters(manager)]
    events = "farm:events:w"
    assert reasons == [
        ("farm:control", None, "intent submit: job.max_workers: 99999999999999999999999 should be less than or equal "
                               "to 10000"),
        ("farm:control", None, "intent submit: job.requires: 5 should be a valid array"),
        ("farm:control", None, "intent: not valid JSON (recursion limit exceeded at line 1 column 202)"),
        ("farm:control", None, "intent cancel: job: '../../x' should match pattern '^[0-9a-f]{4,16}$'"),
        (events, "w", "event progress: attempt_id: 1e+30 should be a valid integer"),
        (events, "w", "event progress: progress: 'abc' should be a valid number"),
        (events, "w", "event started: ts: not a field of this message"),
        (events, "w", "event done: outputs: 5 should be a valid array"),
        (events, "w", "event done: usage.wall: 1e+308 should be less than or equal to 10000000"),
        (events, "w", "refused: an event of 'evil-node' sealed by 'w'"),
        (events, "w", "sealed message: the seal is not w's"),
        (events, "w", f"refused: a replayed event (sequence {Sealed.parse(replayed).seq}, newest seen "
                      f"{Sealed.parse(replayed).seq})"),
        (events, "w", "sealed message: not valid JSON (EOF while parsing a value at line 1 column 0)"),
        # (refused when applied, after those refused when read)
        (events, "w", "refused: progress event from w for attempt 7, which does not exist"),
        (events, "w", "refused: progress event from w for attempt 7, which does not exist"),
        ("farm:hb:w2", "w2", "heartbeat: pid: 'x' should be a valid integer"),
    ]
    by_entry = {letter.reason: letter for letter in letters(manager)}
    assert json.loads(json.loads(by_entry["event progress: progress: 'abc' should be a valid number"].raw)["body"]
                      )["progress"] == "abc"
    assert len(by_entry["intent: not valid JSON (recursion limit exceeded at line 1 column 202)"].raw) <= 4100
    # The senders of refused intents heard at once, not after a timeout.
    assert streams.await_reply(r, "1" * 32, 1).error.startswith("intent submit: job.max_workers")
    assert streams.await_reply(r, "a" * 32, 1).ok
    assert "w" in manager.live and "w2" not in manager.live
    refused = {n.name: n.refused for n in nodes_of(manager)}
    assert refused == {"w": 11, "w2": 1}  # every refusal counted against the node that sent it
    manager.engine.dispose()


def nodes_of(manager) -> list:
    from renderfarm.models import Node

    with session_scope(manager.engine) as s:
        return [Node(**n.model_dump()) for n in s.query(Node).order_by(Node.name)]


def test_a_submission_sent_again_makes_no_second_job(redis_url: str, tmp_path: Path):
    manager = in_process_manager(redis_url, tmp_path)
    for _ in range(3):
        streams.send_intent(manager.r, submit("b"))
        manager.tick()
    replies = [streams.await_reply(manager.r, "b" * 32, 1) for _ in range(3)]
    assert jobs(manager) == ["b" * 32]
    assert len({reply.job_id for reply in replies}) == 1
    assert [reply.changed for reply in replies] == [True, False, False]
    manager.engine.dispose()


def test_an_entry_whose_apply_raises_is_dead_lettered_and_the_rest_applied(redis_url: str, tmp_path: Path,
                                                                           monkeypatch):
    """A fault in our own code, injected into the apply path for one entry: that entry is put
    aside at its first delivery; the entries around it in the same batch are applied."""
    from renderfarm.manager import inbox, intake

    manager = in_process_manager(redis_url, tmp_path)
    real = intake.apply_intent

    def faulty(session, settings, r, intent, batch, now, book):
        if intent.request_id == "c" * 32:
            raise ZeroDivisionError("injected fault")
        return real(session, settings, r, intent, batch, now, book)

    monkeypatch.setattr(inbox, "apply_intent", faulty)
    for request in "dce":
        streams.send_intent(manager.r, submit(request))
    manager.tick()
    assert jobs(manager) == ["d" * 32, "e" * 32]
    [letter] = letters(manager)
    assert (letter.reason, letter.deliveries) == ("could not be applied: ZeroDivisionError: injected fault", 1)
    assert "dead letter" in streams.await_reply(manager.r, "c" * 32, 1).error
    assert unacknowledged(manager) == 0
    manager.engine.dispose()


def test_an_entry_that_breaks_the_loop_itself_is_dead_lettered_on_its_third_delivery(
    redis_url: str, tmp_path: Path, monkeypatch
):
    """A fault outside any one entry's transaction (answering it fails): the manager's loop backs
    off and reads the entry again; on its third delivery it is put aside, and the farm goes on."""
    from renderfarm.clock import Clock
    from renderfarm.manager import Manager

    manager = in_process_manager(redis_url, tmp_path, Clock())
    real = Manager._after_commit

    def faulty(self, batch):
        if "f" * 32 in batch.replies:
            raise ValueError("injected fault after the commit")
        return real(self, batch)

    monkeypatch.setattr(Manager, "_after_commit", faulty)
    streams.send_intent(manager.r, CancelIntent(request_id="f" * 32, job="abcd1234"))
    stop = threading.Event()
    thread = threading.Thread(target=manager.run, args=(stop,), daemon=True)
    thread.start()
    try:
        got = wait_for(lambda: letters(manager), 30, "the entry to be dead-lettered")
        assert [(x.reason, x.deliveries) for x in got] == [("delivered 3 times without being applied", 3)]
        streams.send_intent(manager.r, submit("9"))  # the farm goes on
        assert streams.await_reply(manager.r, "9" * 32, 10).ok
        assert wait_for(lambda: unacknowledged(manager) == 0, 10, "everything acknowledged")
    finally:
        stop.set()
        thread.join(15)


@pytest.mark.parametrize("stepped", [SteppedClock()])
def test_times_come_from_the_managers_clock(redis_url: str, tmp_path: Path, stepped):
    """A job's times are the manager's, however far off a worker's clock is."""
    manager = in_process_manager(redis_url, tmp_path, stepped)
    streams.send_intent(manager.r, submit("7"))
    manager.tick()
    with session_scope(manager.engine) as s:
        job = s.query(Job).one()
        assert job.submitted_at == stepped.now()
    manager.engine.dispose()


def test_dead_letters_are_listed_counted_by_doctor_and_shown_in_top(redis_url: str, tmp_path: Path):
    import redis

    from conftest import farm_env, run_farm
    from renderfarm.dashboard import Snapshot
    from renderfarm.doctor import dead_letter_verdict
    from renderfarm_cli.top_view import summary_text

    manager = in_process_manager(redis_url, tmp_path)
    node = ActingNode(enroll_in_process(manager, "node-7"))
    node.post(manager.r, '{"type": "progress", "worker": "node-7", "attempt_id": "x"}')
    streams.post(manager.r, keys.CONTROL_STREAM, "[not json")
    manager.tick()
    env = farm_env(tmp_path / "cli", FARM_REDIS_URL=redis_url)
    listed = json.loads(run_farm("dead-letters", "--json", env=env).stdout)
    assert [(d["source"], d["worker"], d["reason"]) for d in listed] == [  # newest first
        ("farm:events:node-7", "node-7", "event progress: attempt_id: 'x' should be a valid integer"),
        ("farm:control", None, "intent: not valid JSON (expected ident at line 1 column 3)"),
    ]
    table = run_farm("dead-letters", env=env).stdout
    assert "event progress: attempt_id: 'x' should be a valid integer" in table and "node-7" in table
    check = dead_letter_verdict(redis.Redis.from_url(redis_url))
    assert (check.status.value, check.detail, check.fix) == (
        "warn", "2 entries put aside; newest: event progress: attempt_id: 'x' should be a valid integer",
        "see why with `farm dead-letters`")
    assert "2 dead letters" in summary_text(Snapshot(taken_at=0.0, farm_running=True, dead_letters=2)).plain
    manager.engine.dispose()


def test_a_worker_refusing_a_long_order_reports_it_and_the_manager_keeps_it(redis_url: str, tmp_path: Path):
    """A refused order longer than a dead letter keeps: the worker's Refused event carries the
    excerpt (cut short, with '...') and the manager keeps it. The event's own bound was shorter
    than the excerpt, so the worker failed to report it and the entry was never dead-lettered."""
    from renderfarm.wire import DeadLetter
    from renderfarm_worker.runtime import WorkerRuntime

    manager = in_process_manager(redis_url, tmp_path)
    rt = WorkerRuntime(settings=manager.settings, credentials=enroll_in_process(manager, "node-1"), pool="default",
                       scratch=tmp_path / "scratch", r=manager.r)
    order = '{"type": "submit", "x": "' + "a" * 10_000 + '"}'
    rt.refuse("fzq-1", "task order: not a field of this message", order)
    assert rt.events.flush(10)
    manager.tick()
    [letter] = letters(manager)
    assert (letter.source, letter.entry, letter.worker) == ("farm.worker.node-1", "fzq-1", "node-1")
    assert letter.raw == DeadLetter.excerpt(order) and letter.raw.endswith("a...")
    manager.engine.dispose()


def test_long_reasons_are_cut_and_their_entries_kept(redis_url: str, tmp_path: Path):
    """A heartbeat naming a 5,000-character field, and a worker's refusal with a reason at its
    4,000-character bound: the dead letter's reason ("heartbeat: kkk...", "refused: rrr...") was
    over its own bound, so making it raised. The heartbeat's raised out of the manager's round (the
    letters of other bad beats in that round were lost, and the manager backed off); the
    refusal's was kept as a fault of the event stream rather than of the worker's queue."""
    from renderfarm.wire import Refused

    manager = in_process_manager(redis_url, tmp_path)
    r = manager.r
    nine, one = ActingNode(enroll_in_process(manager, "node-9")), ActingNode(enroll_in_process(manager, "node-1"))
    r.set(keys.heartbeat_key("node-9"), nine.sealed(json.dumps({"name": "node-9", "pid": 1, "k" * 5000: 1})), ex=30)
    one.post(r, Refused(worker="node-1", rq_id="fzq-7", reason="r" * 4000))
    manager.tick()
    got = sorted((x.source, x.entry, x.reason[:12], len(x.reason)) for x in letters(manager))
    assert got == [
        ("farm.worker.node-1", "fzq-7", "refused: rrr", 4000),
        ("farm:hb:node-9", "node-9", "heartbeat: k", 4000),
    ]
    manager.engine.dispose()


def test_an_id_the_database_cannot_hold_is_refused_by_the_contract(redis_url: str, database_url: str,
                                                                   tmp_path: Path):
    """Attempt ids past PostgreSQL's INTEGER: every query naming one failed there ("integer out
    of range"), so a batch holding such an event was applied again one entry at a time, and a
    heartbeat listing one made every reconciliation sweep raise (the manager backing off up to
    5 s each time). The contract bounds ids to what the database holds: both are refused."""
    from renderfarm.config import load_settings
    from renderfarm.db import upgrade
    from renderfarm.manager import Manager
    from renderfarm.redisconn import connect

    settings = load_settings({
        "FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url, "FARM_DATABASE_URL": database_url,
        "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}"}, cwd=tmp_path)
    manager = Manager(settings, clock=SteppedClock())
    upgrade(manager.engine)
    manager.start(connect(settings))
    r = manager.r
    w, two = ActingNode(enroll_in_process(manager, "w")), ActingNode(enroll_in_process(manager, "node-2"))
    big = 2**31
    streams.send_intent(r, submit("5"))
    w.post(r, json.dumps({"type": "progress", "worker": "w", "attempt_id": big, "progress": 0.5}))
    r.set(keys.heartbeat_key("node-2"), two.sealed(json.dumps({"name": "node-2", "pid": 1, "attempts": [big]})), ex=30)
    manager.tick()
    manager.reconcile()
    assert jobs(manager) == ["5" * 32]
    assert [(x.source, x.reason) for x in letters(manager)] == [
        ("farm:events:w", "event progress: attempt_id: 2147483648 should be less than or equal to 2147483647"),
        ("farm:hb:node-2", "heartbeat: attempts.0: 2147483648 should be less than or equal to 2147483647"),
    ]
    manager.engine.dispose()


def test_a_node_is_at_the_site_and_in_the_pool_it_was_enrolled_in_whatever_it_says(redis_url: str, tmp_path: Path):
    """A node claiming a cheaper site (its energy priced there, `--prefer cheapest` jobs sent to
    it) or another pool: the manager counts where it was enrolled."""
    from renderfarm.models import Worker
    from renderfarm.streams import Entry
    from renderfarm.wire import Failed, Usage

    manager = in_process_manager(redis_url, tmp_path)
    node = ActingNode(enroll_in_process(manager, "w", pool="render"))
    node.beat(manager.r, site="karamay", pool="other")
    manager.tick()
    with session_scope(manager.engine) as s:
        worker = s.get(Worker, "w")
        assert (worker.site, worker.pool) == ("local", "render")
    event = Failed(worker="w", attempt_id=1, error="x", usage=Usage(wall=1.0, site="karamay"))
    entry = Entry(keys.event_stream("w"), "9999999999999-0", node.sealed(event).encode())
    parsed, letter = manager.inbox.parse(entry, 0.0)
    assert letter is None and parsed.usage.site == "local"
    manager.engine.dispose()


def test_a_replay_is_refused_by_a_manager_started_again(redis_url: str, tmp_path: Path):
    """The newest sequence numbers seen from each node are written with the batch that applied
    them (one statement for all the nodes), so a manager started again refuses a replay too."""
    manager = in_process_manager(redis_url, tmp_path)
    nodes_ = [ActingNode(enroll_in_process(manager, name)) for name in ("a1", "a2", "a3")]
    sent = {n.name: n.sealed(Progress(worker=n.name, attempt_id=7, progress=0.5)) for n in nodes_}
    for n in nodes_:
        streams.post(manager.r, keys.event_stream(n.name), sent[n.name])
        n.beat(manager.r)
    manager.tick()
    rows = {n.name: n for n in nodes_of(manager)}
    for name, raw in sent.items():
        assert rows[name].last_event_seq == Sealed.parse(raw).seq < rows[name].last_beat_seq
    manager.engine.dispose()
    before = len(letters(manager))  # (attempt 7 does not exist: each was refused as such)
    again = in_process_manager(redis_url, tmp_path)  # the same database and Valkey
    streams.post(again.r, keys.event_stream("a2"), sent["a2"])
    again.tick()
    assert [(d.worker, d.reason.split(" (")[0]) for d in letters(again)[before:]] == [("a2", "refused: a replayed event")]
    again.engine.dispose()


def test_a_heartbeat_checked_once_is_not_trusted_under_a_new_key(redis_url: str, tmp_path: Path):
    """The manager checks a node's heartbeat again only when its bytes change (200 nodes beat
    every few seconds; checking every beat on every round cost the loop). What it remembers is
    tied to the node's key: once the node is enrolled again (new credentials), the very same
    bytes, still in Valkey or written back by whoever kept them, are refused."""
    from nodekit import stepped_farm

    from renderfarm.wire import NodeAddIntent

    with stepped_farm(redis_url, tmp_path, ("a",)) as farm:
        manager = farm.manager
        farm.beat("a")
        old = manager.r.get(keys.heartbeat_key("a"))
        manager.tick()  # checked once, then remembered
        assert "a" in manager.live
        reply = farm.ask(NodeAddIntent(request_id=farm.request_id(), name="a"))
        assert reply.ok, reply
        manager.r.set(keys.heartbeat_key("a"), old, ex=30)
        manager.tick()
        assert "a" not in manager.live
        assert manager.book.refused["a"] >= 1  # put aside as a dead letter, the node's
