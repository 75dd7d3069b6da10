"""Fuzzing a live farm of 2 enrolled workers: over 2,000 random and mutated-valid entries
(hypothesis) on the control stream, the nodes' own event streams, their heartbeats and the
workers' queues, sealed right, with a wrong key, as another node, with a replayed number, in a
mutated envelope or not at all. Afterwards every invalid entry is in the dead-letter stream, with
the node's name where it came from a node (and nothing else is), the rows of jobs no entry named
are unchanged, and a normal submit is answered at once and rendered.

Entries go where their writer could put them: a node's events and heartbeat as that node (its
own Valkey user), the control stream and the queues as the farm's admin (the test holds its
password: the manager's and the workers' robustness is under test, not Valkey's rules). Besides
the 2 workers, the test enrolls nodes of its own: two to send events as, and two pools of nodes
to beat as. The manager keeps one dead letter per node while its heartbeat stays bad, and
watches the latest beat only: each beat goes to a node that has beaten well since, and each batch
ends once the manager has read all its beats (two intents answered in turn).

Valid entries are applied as any would be: a verb on a made-up job is answered with an error
reply, an event about an attempt of the named job from its own worker is applied (and changes
nothing: the job is done), a valid heartbeat is a live node (in a pool with no work). Valid
entries that would make real work (or name the untouched job, or act on a node the test enrolled)
are not posted; the report counts them."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections import Counter

import pytest
from conftest import EXAMPLES, run_farm, wait_for
from faults.livefarm import LiveFarm, report
from fuzzing import (
    PLACEHOLDER_ATTEMPT,
    PLACEHOLDER_NAME,
    PLACEHOLDER_NODE,
    Expected,
    Real,
    Seal,
    entries,
    judge_beat,
    judge_event,
    judge_intent,
    judge_queued,
    judge_record,
    mutate_envelope,
    sealed_doc,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from renderfarm import keys, presence, streams, wire
from renderfarm.wire.base import INT64

pytestmark = pytest.mark.slow

EXAMPLES_RUN = 45  # hypothesis examples, each a batch of 45 to 60 entries: 2,025 at least
BATCH = (45, 60)
ANSWER_TARGET = 2.0  # seconds: the manager answers a submit intent within this (issue 15.2)
# The whole `farm submit` command: it takes 2-4 s just to start (imports, a storage client) on a
# loaded 2-core machine while the manager answers in 0.01-0.02 s, so only a generous bound here.
COMMAND_GUARD = 30.0
EVENT_NODES = ("fze-1", "fze-2")
BEAT_POOL = 16  # nodes per pool of beating nodes: beats past that in one batch are not posted
WAIT = 60.0  # seconds for the farm to take in what was posted (it takes well under one)


def now_us() -> int:
    return time.time_ns() // 1000


class Poster:
    """Posts entries into the farm's Redis, each as whoever could write it, and notes what the
    farm must make of each."""

    def __init__(self, farm: LiveFarm, r, real: Real, nodes: dict, newest: dict[str, int]) -> None:
        import redis

        self.r, self.real, self.nodes = r, real, nodes
        self.limits = wire.Limits.of(farm.settings())
        self.as_node = {name: redis.Redis.from_url(c.redis_url) for name, c in nodes.items()}
        self.expected = Expected()
        self.last: dict[str, str] = {}  # the last entry posted on each stream the manager reads
        self.numbers = itertools.count(1)
        # The newest sequence number the manager accepted from each node, as far as the test
        # knows (a worker's own refusals may go beyond: a fresh number is the clock's, as theirs).
        self.event_seq = dict(newest)
        self.beat_seq: dict[str, int] = {}
        beating = sorted(n for n in nodes if n.startswith("fzb-"))
        self.pools = (beating[:BEAT_POOL], beating[BEAT_POOL:])
        self.pool = 0
        self.free = list(self.pools[0])
        self.queue_letters: Counter = Counter()  # expected from the workers' refusals
        self.letters = Letters(r)
        self.written: set[str] = set()  # heartbeat keys written
        self.distinct: set[int] = set()  # the entries generated, told apart

    def post(self, entry: tuple) -> None:
        getattr(self, "_" + entry[0].replace(" ", "_"))(*entry[1:])

    def _xadd(self, conn, stream: str, fields: dict) -> str:
        entry_id = conn.xadd(stream, fields).decode()
        self.last[stream] = entry_id
        return entry_id

    def seal(self, body, node: str, seal: Seal, newest: int, seq: int | None = None) -> str | bytes:
        """`body` sealed as `seal` says, for (or by) `node`, whose newest number is `newest`."""
        if seal.how == "none":
            return body
        body = body if isinstance(body, str) else body.decode("utf-8", "replace")
        name, key = node, self.nodes[node].key
        if seal.how == "wrong key":
            key = seal.key
        elif seal.how == "other node":
            others = sorted(n for n in self.nodes if n != node)
            name = others[seal.other % len(others)]
            key = self.nodes[name].key
        if seal.how == "replayed":
            seq = max(1, newest - 1 - seal.back)
        elif seal.how == "future":
            seq = INT64 - seal.back
        elif seq is None:
            seq = max(newest + 1, now_us())
        doc = sealed_doc(body, name, seq, key)
        if seal.how == "envelope":
            doc = mutate_envelope(doc, seal.envelope)
        return json.dumps(doc)

    # -- the control stream --

    def _control(self, raw) -> None:
        verdict = judge_intent(raw, self.limits, self.real)
        if verdict == "skip":
            self.expected.skipped += 1
            return
        entry_id = self._xadd(self.r, keys.CONTROL_STREAM, {"d": raw})
        self.expected.count("control", verdict != "dead")
        if verdict == "dead":
            self.expected.letters.append((keys.CONTROL_STREAM, entry_id, None))
        else:
            self.expected.replies.append(verdict.request_id)

    def _no_d_field(self, node: str | None) -> None:
        stream = keys.CONTROL_STREAM if node is None else keys.event_stream(node)
        entry_id = self._xadd(self.r if node is None else self.as_node[node], stream, {"x": "no d"})
        self.expected.count("control" if node is None else "events", False)
        self.expected.letters.append((stream, entry_id, node))

    # -- events --

    def _event(self, node: str, seal: Seal, body) -> None:
        if seal.how == "future" and node in self.real.workers:
            seal = Seal("own")  # a real worker's own events would be replays ever after
        text = self.seal(body, node, seal, self.event_seq[node])
        key = self.nodes[node].key
        verdict, seq = judge_event(text, node, key, self.event_seq[node], self.real)
        if verdict == "skip":
            self.expected.skipped += 1
            return
        entry_id = self._xadd(self.as_node[node], keys.event_stream(node), {"d": text})
        if seq is not None:
            self.event_seq[node] = seq
        self.expected.count("events", verdict in ("applied", "refusal"))
        if verdict == "dead":
            self.expected.letters.append((keys.event_stream(node), entry_id, node))
        elif verdict == "refusal":  # kept as a dead letter of the node's queue
            self.expected.letters.append((keys.queue_name(node), wire.parse_event(
                wire.Sealed.parse(text).body).rq_id, node))

    def _stranger_event(self, name: str, body) -> None:
        self.r.xadd(keys.event_stream(name), {"d": body})  # read by no one: nothing to keep
        self.expected.count("events", False)

    # -- heartbeats --

    def _beat(self, seal: Seal, body) -> None:
        if not self.free:  # every node of the pool has beaten in this batch
            self.expected.skipped += 1
            return
        node = self.free.pop()
        if isinstance(body, dict):
            if body.get("name") == PLACEHOLDER_NAME:
                body = {**body, "name": node}
            body = json.dumps(body)
        newest = self.beat_seq[node]
        value = self.seal(body, node, seal, newest)
        value = value.encode() if isinstance(value, str) else value
        seq = judge_beat(value, node, self.nodes[node].key, newest)
        self.as_node[node].set(keys.heartbeat_key(node), value, ex=600)
        self.expected.count("heartbeats", seq is not None)
        if seq is None:
            self.expected.letters.append((keys.heartbeat_key(node), node, node))
        else:
            self.beat_seq[node] = seq

    def _stranger_beat(self, name: str, value) -> None:
        self.r.set(keys.heartbeat_key(name), value, ex=600)  # read by no one: nothing to keep
        self.written.add(keys.heartbeat_key(name))
        self.expected.count("heartbeats", False)

    def beat_well(self, names) -> None:
        """A valid heartbeat from each of these nodes (one that had a bad one beats well again)."""
        for name in names:
            seq = min(max(self.beat_seq.get(name, 0) + 1, now_us()), INT64)
            beat = wire.Heartbeat(name=name, pid=1, ttl=600.0, seq=seq)
            self.as_node[name].set(keys.heartbeat_key(name), json.dumps(sealed_doc(
                beat.to_json(), name, seq, self.nodes[name].key)), ex=600)
            self.beat_seq[name] = seq
            self.written.add(keys.heartbeat_key(name))

    # -- the workers' queues --

    def _queue(self, worker, func, args, kwargs, callbacks, pickled, rq_id, record, seal) -> None:
        from rq import Queue
        from rq.job import Callback, Job, JobStatus
        from rq.serializers import JSONSerializer

        number = next(self.numbers)
        node = self.nodes[worker]
        attempt_id = 10**9 + number
        if seal is not None:  # an order's document: its node and attempt filled in, sealed
            doc = args[0]
            if doc.get("attempt_id") == PLACEHOLDER_ATTEMPT:
                doc = {**doc, "attempt_id": attempt_id}
            if doc.get("node") == PLACEHOLDER_NODE:
                doc = {**doc, "node": worker}
            seq = doc.get("attempt_id") if isinstance(doc.get("attempt_id"), int) else 1
            seq = seq if 1 <= seq <= INT64 else 1
            args = (self.seal(json.dumps(doc), worker, seal, seq, seq=seq), *args[1:])
            if isinstance(args[0], bytes):
                args = (args[0].decode("utf-8", "replace"), *args[1:])
        rq_id = {"attempt": f"{node.node_id}-{attempt_id}", "own": f"{node.node_id}-fzq-{number}",
                 "foreign": f"fzq-{number}"}[rq_id]
        serializer = {} if pickled else {"serializer": JSONSerializer}
        queue = Queue(keys.queue_name(worker), connection=self.r, **serializer)
        hostile = Callback("os.system")
        extra = {"on_success": hostile, "on_failure": hostile} if callbacks else {}
        options = {"result_ttl": 0, "failure_ttl": 600, **extra}
        foreign = not rq_id.startswith(f"{node.node_id}-")
        if foreign:  # Valkey refuses the node its record: refused, whatever it holds
            dead = True
            self.expected.letters.append(("acl", Job.key_for(rq_id), worker))
        if record is None:
            if not foreign:
                dead = judge_queued(func, args, kwargs, callbacks, pickled, rq_id, node)
            queue.enqueue_call(func, args=args, kwargs=kwargs, job_id=rq_id, **options)
        else:  # the record RQ would write, with one field rewritten (or deleted) by hand
            job = Job.create(func, args=args, kwargs=kwargs, id=rq_id, connection=self.r,
                             origin=queue.name, status=JobStatus.QUEUED, **serializer, **options)
            # As redis-py writes them: a status (a str enum) as its value, not 'JobStatus.QUEUED'.
            fields = {k: v if isinstance(v, bytes) else (v if isinstance(v, str) else str(v))
                      .encode() for k, v in job.to_dict().items()}
            name, value = record
            fields.pop(name, None)
            if value is not None:
                fields[name] = value.encode() if isinstance(value, str) else value
            if not foreign:
                dead = judge_record({k.encode(): v for k, v in fields.items()}, rq_id, self.r, node)
            if dead == "gone":  # RQ passes over a record with no data: nothing to keep
                self.expected.skipped += 1
                return
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(job.key, mapping=fields)
            pipe.rpush(queue.key, rq_id)
            pipe.execute()
        self.expected.count("queues", not dead)
        if dead:
            self.expected.letters.append((keys.queue_name(worker), rq_id, worker))
            self.queue_letters[(keys.queue_name(worker), rq_id, worker)] += 1

    # -- between batches --

    def settle_batch(self) -> None:
        """Wait until the workers have refused what they must (their refusals are their own
        events, numbered by their clocks: the test's next event must come after them) and the
        manager has read every heartbeat posted; then the pool that beat gives way to the other,
        each of its nodes beating well until it is used again."""
        wait_for(lambda: not self.queue_letters - self.letters.read(), WAIT,
                 "the workers' refusals")
        read_beats(self.r)
        used = self.pools[self.pool]
        self.beat_well(used)
        self.pool = 1 - self.pool
        self.free = list(self.pools[self.pool])


class Letters:
    """The dead letters kept since the fuzz began, counted by (source, entry, node)."""

    def __init__(self, r) -> None:
        self.r = r
        newest = r.xrevrange(keys.DEAD_LETTERS, count=1)
        self.after = newest[0][0].decode() if newest else "0-0"
        self.got: Counter = Counter()
        self.kept: list[wire.DeadLetter] = []

    def read(self) -> Counter:
        for entry_id, fields in self.r.xrange(keys.DEAD_LETTERS, min=f"({self.after}"):
            self.after = entry_id.decode()
            letter = wire.DeadLetter.parse(fields[b"d"])
            self.kept.append(letter)
            self.got[key_of(letter)] += 1
        return self.got


def key_of(letter: wire.DeadLetter) -> tuple[str, str, str | None]:
    """What a dead letter is known by: (source, entry, node); Valkey's refusals by the key refused
    (their entries are numbered by Valkey)."""
    denied = re.search(r" may not touch key (\S+) \(", letter.reason)
    if letter.source == "acl" and denied:
        return ("acl", denied.group(1), letter.worker)
    return (letter.source, letter.entry, letter.worker)


def answered(r) -> float:
    """How long the manager takes to answer an intent (a cancel of a job that never was)."""
    t0 = time.monotonic()
    intent = wire.CancelIntent(request_id=f"{now_us():032x}", job="00000000")
    streams.send_intent(r, intent)
    streams.await_reply(r, intent.request_id, WAIT)
    return time.monotonic() - t0


def read_beats(r) -> None:
    """Return once the manager has read every heartbeat key as it is now: an intent posted now is
    read in a round that reads the keys after it, and a second one is answered only once that
    round is over."""
    answered(r)
    answered(r)


def fuzz(poster: Poster, real: Real) -> None:
    """Post the hypothesis examples' batches of entries (the same ones every run): the queues'
    entries last in each batch, the workers' refusals of them awaited before the next."""

    @settings(max_examples=EXAMPLES_RUN, derandomize=True, database=None, phases=[Phase.generate],
              deadline=None, suppress_health_check=list(HealthCheck))
    # Unique within a batch: hypothesis repeats list items, two-thirds of them without this.
    @given(st.lists(entries(real), min_size=BATCH[0], max_size=BATCH[1], unique_by=repr))
    def post_batch(batch):
        for entry in sorted(batch, key=lambda e: e[0] == "queue"):
            poster.distinct.add(hash(repr(entry)))
            poster.post(entry)
        poster.settle_batch()

    post_batch()


# -- the farm -----------------------------------------------------------------------------------


def submit_answered(farm: LiveFarm, r, name: str) -> tuple[str, float]:
    """A normal submission of the same small job as `timed_submit`'s (its scene already stored),
    handed to the manager as `farm submit` hands it: its id, and how long the manager took to
    answer the intent (from posting it to its reply, as `answered` measures)."""
    import tempfile
    from pathlib import Path

    from renderfarm.client import Submission, check_submission
    from renderfarm.renderers.registry import get_renderer
    from renderfarm.storage.keys import scene_key

    settings = farm.settings()
    sub = Submission(scene=EXAMPLES / "orbit.toml", renderer="null", frames="1-4", name=name)
    spec = check_submission(settings, sub)
    with tempfile.TemporaryDirectory(prefix="fuzz-submit-") as packing:
        scene = get_renderer(spec.renderer).package(sub.scene, Path(packing),
                                                    wire.Limits.of(settings))
        sha = hashlib.sha256(scene.read_bytes()).hexdigest()
        key = scene_key(sha, scene.suffix.lower())
    assert farm.storage().head(key) is not None, "the submits before the fuzz stored the scene"
    intent = wire.SubmitIntent(request_id=f"{now_us():032x}",
                               job=spec.model_copy(update={"scene_key": key, "scene_sha256": sha}))
    t0 = time.monotonic()
    streams.send_intent(r, intent)
    reply = streams.await_reply(r, intent.request_id, WAIT)
    answer_s = time.monotonic() - t0
    assert reply.ok, reply
    return str(reply.job_id), answer_s


def timed_submit(farm: LiveFarm, name: str) -> tuple[str, float]:
    """A normal `farm submit --json` of a small job: its id, and how long the command took."""
    t0 = time.monotonic()
    out = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--renderer", "null", "--frames", "1-4",
                   "--name", name, "--json", env=farm.env, timeout=60)
    return json.loads(out.stdout)["id"], time.monotonic() - t0


def enroll(farm: LiveFarm, r, names: list[str], pool: str) -> dict:
    """Enroll nodes through the running manager, all in one go; their credentials by name."""
    from renderfarm.client import new_request_id
    from renderfarm.enrollment import credentials_for

    intents = [wire.NodeAddIntent(request_id=new_request_id(), name=n, pool=pool) for n in names]
    for intent in intents:
        streams.send_intent(r, intent)
    out = {}
    for intent in intents:
        reply = streams.await_reply(r, intent.request_id, WAIT)
        assert reply.ok, reply
        out[intent.name] = credentials_for(farm.settings(), reply.node, site="local", pool=pool,
                                           tags=())
    return out


def real_farm(farm: LiveFarm, r) -> tuple[Real, dict, float]:
    """Two small jobs rendered before the fuzz, one the entries may name, one they never do;
    the nodes the test acts as, enrolled. Returns them, their credentials, and how long the
    second submit took."""
    from renderfarm.enrollment import read_credentials

    named, _ = timed_submit(farm, "named")
    untouched, answer_s = timed_submit(farm, "untouched")
    assert farm.wait_job(named, 60) == "done" and farm.wait_job(untouched, 60) == "done"
    query = "select id, worker from attempts where job_id = ?"
    attempts = {a["id"]: a["worker"] for a in farm.query(query, named)}
    kept = frozenset(a["id"] for a in farm.query(query, untouched))
    workers = tuple(sorted(presence.live_workers(r)))
    assert len(workers) == 2
    nodes = {w: read_credentials(farm.state / "nodes" / f"{w}.farm-node") for w in workers}
    nodes |= enroll(farm, r, list(EVENT_NODES), "fzevents")
    nodes |= enroll(farm, r, [f"fzb-{i:02d}" for i in range(2 * BEAT_POOL)], "fzbeats")
    real = Real(named, attempts, untouched, kept, workers, EVENT_NODES, frozenset(nodes))
    return real, nodes, answer_s


def rows(farm: LiveFarm) -> dict[str, dict]:
    """Every job's rows (job, tasks, attempts) as plain values, by job id."""
    out: dict[str, dict] = {}
    for job in farm.query("select * from jobs"):
        out[job["id"]] = {"job": dict(job), "tasks": [], "attempts": []}
    for table in ("tasks", "attempts"):
        for row in farm.query(f"select * from {table} order by id"):
            out.setdefault(row["job_id"], {"tasks": [], "attempts": []})[table].append(dict(row))
    return out


def consumed(r, last: dict[str, str]) -> bool:
    """Whether the manager has read and acknowledged every entry up to `last` on each stream."""
    for stream, last_id in last.items():
        [group] = [g for g in r.xinfo_groups(stream) if g["name"] in (b"manager", "manager")]
        delivered = group["last-delivered-id"]
        delivered = delivered.decode() if isinstance(delivered, bytes) else delivered
        if streams.entry_order(delivered) < streams.entry_order(last_id) or group["pending"]:
            return False
    return True


def settle(r, poster: Poster, real: Real, want: Counter, timeout: float) -> Counter:
    """Wait until the workers have taken every queued entry, the manager has read and
    acknowledged every stream entry and every expected dead letter is kept (or `timeout` passes);
    returns the dead letters kept since the fuzz began."""
    queues = [f"rq:queue:{keys.queue_name(w)}" for w in real.workers]
    deadline = time.monotonic() + timeout
    while True:
        got = poster.letters.read()
        taken = not any(r.llen(q) for q in queues)
        if (taken and consumed(r, poster.last) and not want - got) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_fuzzed_entries_are_dead_lettered_and_the_farm_renders_on(tmp_path):
    farm = LiveFarm(tmp_path, workers=2)
    farm.up()
    try:
        r = farm.redis()
        real, nodes, answer_before_s = real_farm(farm, r)
        before = rows(farm)
        newest = {n["name"]: n["last_event_seq"]
                  for n in farm.query("select name, last_event_seq from nodes")}
        intent_before_s = answered(r)
        poster = Poster(farm, r, real, nodes, newest)
        poster.beat_well(poster.pools[0] + poster.pools[1])
        read_beats(r)
        started = time.monotonic()
        fuzz(poster, real)
        expected, fuzz_s = poster.expected, time.monotonic() - started
        posted = sum(expected.posted.values())
        assert posted >= 2000, expected.posted

        want = Counter(expected.letters)
        got = settle(r, poster, real, want, timeout=WAIT)
        settle_s = time.monotonic() - started - fuzz_s
        missing, extra = want - got, got - want
        assert not missing, f"{missing.total()} invalid entries not kept, e.g. {list(missing)[:5]}"
        assert not extra, f"{extra.total()} unexpected dead letters, e.g. " + str(
            [d for d in poster.letters.kept if key_of(d) in extra][:5])
        unanswered = [rid for rid in expected.replies if not r.exists(keys.reply_key(rid))]
        assert not unanswered, f"{len(unanswered)} valid intents got no reply: {unanswered[:3]}"
        strangers = [k for k in r.scan_iter(match=keys.EVENT_PREFIX + "fzs-*") if r.xinfo_groups(k)]
        assert not strangers, f"the manager read streams of nodes never enrolled: {strangers[:3]}"
        assert not farm.query("select name from workers where name like 'fzs-%'")

        after = rows(farm)
        changed = [job for job, held in before.items()
                   if job != real.named_job and after.get(job) != held]
        assert not changed, f"rows of jobs no entry named changed: {changed}"
        assert farm.job_state(real.named_job) == "done"

        # The farm renders on: the fuzzed beats gone, a normal submit answered at once, rendered.
        r.delete(*poster.written)
        wait_for(lambda: sorted(presence.live_workers(r)) == list(real.workers), 30,
                 "only the real workers to beat")
        intent_s = answered(r)
        job, submit_s = submit_answered(farm, r, "after")
        cli_job, command_s = timed_submit(farm, "after-cli")
        for done, name in ((job, "after"), (cli_job, "after-cli")):
            assert farm.wait_job(done, 60) == "done"
            farm.check_frames(done, name, [1, 2, 3, 4], (320, 180))
        print(f"\n[figures] submit intent answered in {submit_s:.3f} s; `farm submit` took "
              f"{command_s:.2f} s (before fuzzing {answer_before_s:.2f} s)")
        report("fuzz", entries=posted, distinct=len(poster.distinct),
               **{f"posted_{k}": v for k, v in expected.posted.items()},
               **{f"valid_{k}": v for k, v in expected.valid.items()}, skipped=expected.skipped,
               dead_letters=want.total(), fuzz_s=fuzz_s, settle_s=settle_s,
               submit_intent_answered_s=submit_s, submit_command_s=command_s,
               submit_command_before_fuzz_s=answer_before_s,
               intent_answered_s=intent_s, intent_before_fuzz_s=intent_before_s)
        # Issue 15.2's "a normal submit is answered in under 2 s" is the manager's answer: the
        # time from the submit intent being posted to its reply. The command around it spends
        # 2-4 s starting on a loaded 2-core machine (as the submit before the fuzz shows), which
        # says nothing about the farm, so it only gets a generous bound.
        assert submit_s < ANSWER_TARGET, f"the manager answered a submit in {submit_s:.2f} s"
        assert intent_s < ANSWER_TARGET, f"the manager answered an intent in {intent_s:.2f} s"
        assert command_s < COMMAND_GUARD, f"`farm submit` took {command_s:.2f} s"
    finally:
        farm.down()
