"""Hypothesis strategies for fuzzing a live farm's inputs, and what the farm must make of each
entry: random JSON and bytes, deep nesting, huge numbers, valid wire messages with one field
mutated, and seals gone wrong (a wrong key, another node's seal, a replayed sequence number, a
mutated envelope, none at all), for the control stream, the nodes' event streams, their
heartbeats and the workers' queues."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from hypothesis import strategies as st

from renderfarm import keys, wire
from renderfarm.errors import RenderFarmError
from renderfarm.nodes import seal_mac
from renderfarm.queues import RENDER_TASK, rq_job_id
from renderfarm.wire.base import DB_ID_MAX, INT64

NASTY = [
    "../", "../../etc/passwd", "/etc/passwd", "a/../../b", "..", ".", "", " ", "\x00", "\n",
    "x" * 5000, "名前", "$(touch /tmp/pwned)", "%2e%2e%2f", "NaN", "-1", "1e400", "\u202e", "\ufffd",
    "jobs/../scenes/x", "attempt-1", "farm:control",
]
HUGE = [2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 1e308, -1e308, -1, 0, 1e-300, 2**31,
        2**53 + 1, 10**4000]
PLACEHOLDER_NAME = "fzbeatplaceholder"  # a beat's own name: its node's name when posted
PLACEHOLDER_NODE = "fznodeplaceholder"  # a queued order's node: the worker's name when posted
PLACEHOLDER_ATTEMPT = 2_147_000_000  # a queued order's attempt id: a unique one when posted
FUZZ_JOB_POOL, FUZZ_JOB_TAG, FUZZ_NODE_POOL = "fzjobs", "fz-none", "fznodes"
SMALL_FRAMES = ("1", "1-2", "1-4", "-3-3x3")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30),
    st.sampled_from(NASTY), st.sampled_from(HUGE),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=8,
)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
sha256s = st.text("0123456789abcdef", min_size=64, max_size=64)
made_up_ids = st.integers(10**7, DB_ID_MAX)  # no attempt of the test's farm has one
made_up_jobs = st.text("0123456789abcdef", min_size=8, max_size=8)
fuzz_names = st.from_regex(r"fz-[a-z0-9]{1,12}", fullmatch=True)
fuzz_node_names = st.from_regex(r"fzn-[a-z0-9]{1,8}", fullmatch=True)  # nodes intents may enroll
stranger_names = st.from_regex(r"fzs-[a-z0-9]{1,8}", fullmatch=True)  # never enrolled


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _deep_in(doc: str, n: int) -> str:
    return doc[:-1] + ', "x": ' + '{"a": ' * n + "1" + "}" * n + "}"


def _oversized(n: int) -> str:
    return '{"type": "submit", "x": "' + "a" * n + '"}'


def raw_junk() -> st.SearchStrategy:
    """Anything but a message: random JSON, bytes, text, nesting past any parser's depth, and
    entries over every size limit."""
    return st.one_of(
        st.builds(json.dumps, json_values),
        st.binary(max_size=300),
        st.text(max_size=300),
        st.integers(1, 20_000).map(_deep),
        st.builds(_deep_in, st.just('{"type": "progress", "worker": "fz-w", "attempt_id": 1}'),
                  st.integers(50, 5_000)),
        st.sampled_from([70_000, 140_000, 600_000]).map(_oversized),
    )


@st.composite
def mutated(draw, doc: dict) -> dict:
    """A valid message's document with one field (or one field of a field, or one item of a
    list) deleted, replaced by junk or by a value of another type, or with a field added."""
    doc = copy.deepcopy(doc)
    paths = [(k,) for k in doc]
    paths += [(k, k2) for k, v in doc.items() if isinstance(v, dict) for k2 in v]
    paths += [(k, i) for k, v in doc.items() if isinstance(v, list) for i in range(len(v))]
    path = draw(st.sampled_from(paths))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    how = draw(st.sampled_from(["delete", "replace", "replace", "wrong type", "extra"]))
    if how == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "extra" and isinstance(parent, dict):
        names = st.sampled_from(["ts", "extra", "__class__", "type2", "k" * 5000])
        names |= st.text(max_size=8)
        parent[draw(names)] = draw(json_values)
    elif how == "wrong type":
        value = parent[path[-1]]
        parent[path[-1]] = draw(st.sampled_from([str(value), [value], {"v": value}, value is None]))
    else:
        junk = st.one_of(json_values, st.sampled_from(NASTY), st.sampled_from(HUGE))
        parent[path[-1]] = draw(junk)
    return doc


def message_or_mutant(doc: dict) -> st.SearchStrategy:
    return st.one_of(st.just(doc), mutated(doc), mutated(doc))


def serialized(doc: dict, draw) -> str | bytes:
    if draw(st.integers(0, 9)) == 0:  # the odd one as UTF-8 bytes, non-ASCII unescaped
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(doc)


@dataclass(frozen=True)
class Real:
    """What the live farm holds: the job entries may name, its attempts (id -> worker), the job
    no entry names (and its attempt ids), the real workers, the nodes the test enrolled to send
    events as, and every node the test enrolled (no intent may enroll or revoke one again)."""

    named_job: str
    attempts: dict[int, str]
    untouched_job: str
    untouched_attempts: frozenset[int]
    workers: tuple[str, ...]
    event_nodes: tuple[str, ...]
    nodes: frozenset[str]


def _doc(message: wire.Message) -> dict:
    return json.loads(message.to_json())


# -- seals -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seal:
    """How an entry is sealed when it is posted (the keys and numbers are known only then):
    'own' (the node's key and a fresh sequence number), 'wrong key', 'other node' (another
    enrolled node's seal, its own key), 'replayed' (a number already seen), 'future' (the
    largest number there is), 'envelope' (sealed, then one field of the envelope mutated), or
    'none' (the message as it is)."""

    how: str
    key: str = ""  # the wrong key
    other: int = 0  # which other node, taken modulo their count
    back: int = 0  # how far behind the newest number a replayed one is
    envelope: tuple = ()  # (field, how, value): the envelope's mutation


SEALINGS = ["own"] * 8 + ["wrong key", "other node", "replayed", "replayed", "future", "envelope",
                          "envelope", "none"]


@st.composite
def seals(draw) -> Seal:
    how = draw(st.sampled_from(SEALINGS))
    envelope = ()
    if how == "envelope":
        junk = st.one_of(json_values, st.sampled_from(NASTY), st.sampled_from(HUGE),
                         st.sampled_from([0, 1, INT64, INT64 + 1, "0" * 64]))
        envelope = (draw(st.sampled_from(["node", "seq", "body", "mac"])),
                    draw(st.sampled_from(["delete", "replace", "wrong type", "extra"])), draw(junk))
    return Seal(how, key=draw(st.text("0123456789abcdef", min_size=1, max_size=64)),
                other=draw(st.integers(0, 99)), back=draw(st.integers(0, 3)), envelope=envelope)


def sealed_doc(body: str, node: str, seq: int, key: str) -> dict:
    """The envelope as Sealed.seal writes it, built by hand so that any number goes in."""
    return {"node": node, "seq": seq, "body": body, "mac": seal_mac(key.encode(), node, seq, body)}


def mutate_envelope(doc: dict, plan: tuple) -> dict:
    name, how, value = plan
    doc = dict(doc)
    if how == "delete":
        del doc[name]
    elif how == "extra":
        doc["x" + name] = value
    elif how == "wrong type":
        doc[name] = [doc[name]] if isinstance(doc[name], str) else str(doc[name])
    else:
        doc[name] = value
    return doc


def open_seal(raw, node: str, key: str) -> tuple[wire.Sealed, str]:
    """The sealed text's number and body, checked as the manager and the workers check it: sealed
    by `node` under `key`. WireError otherwise."""
    sealed = wire.Sealed.parse(raw)
    if sealed.node != node:
        raise wire.WireError(f"sealed by {sealed.node!r}, not {node!r}")
    return sealed, sealed.check(key)


# -- the control stream ----------------------------------------------------------------------------


@st.composite
def intents(draw, real: Real) -> dict:
    request_id = draw(hex32)
    kinds = ["submit", "submit", "cancel", "suspend", "resume", "retry", "priority", "node-add",
             "node-revoke"]
    kind = draw(st.sampled_from(kinds))
    if kind == "submit":  # a small job on a pool and a tag no worker has: it never runs
        sha = draw(sha256s)
        spec = wire.JobSpec(
            name=draw(st.from_regex(r"fz[a-z0-9_]{0,10}", fullmatch=True)), owner="fuzz",
            renderer="null", scene_name="shot.toml", scene_key=f"scenes/{sha}.toml",
            scene_sha256=sha,
            frames=draw(st.sampled_from(SMALL_FRAMES)), width=64, height=36,
            priority=draw(st.integers(0, 100)), pool=FUZZ_JOB_POOL, requires=(FUZZ_JOB_TAG,),
        )
        return _doc(wire.SubmitIntent(request_id=request_id, job=spec))
    if kind in ("node-add", "node-revoke"):  # a made-up node, or one the test enrolled
        name = draw(fuzz_node_names | st.sampled_from(sorted(real.nodes)))
        if kind == "node-revoke":
            return _doc(wire.NodeRevokeIntent(request_id=request_id, name=name))
        tags = tuple(draw(st.lists(st.sampled_from(["gpu", "linux"]), max_size=2, unique=True)))
        return _doc(wire.NodeAddIntent(request_id=request_id, name=name, pool=FUZZ_NODE_POOL,
                                       tags=tags))
    job = draw(st.sampled_from([real.named_job]) | made_up_jobs)
    extra = {"priority": draw(st.integers(0, 100))} if kind == "priority" else {}
    if kind in ("suspend", "retry"):
        extra = {"kill" if kind == "suspend" else "all": draw(st.booleans())}
    cls = {"cancel": wire.CancelIntent, "suspend": wire.SuspendIntent, "resume": wire.ResumeIntent,
           "retry": wire.RetryIntent, "priority": wire.PriorityIntent}[kind]
    return _doc(cls(request_id=request_id, job=job, **extra))


@st.composite
def control_entries(draw, real: Real) -> tuple:
    if draw(st.integers(0, 2)) == 0:
        return ("control", draw(raw_junk()))
    return ("control", serialized(draw(intents(real).flatmap(message_or_mutant)), draw))


# -- the nodes' event streams ----------------------------------------------------------------------


@st.composite
def events(draw, real: Real, node: str) -> dict:
    """An event on `node`'s stream: mostly in its own name, about an attempt of the named job it
    rendered, one another node rendered, or one that never was."""
    kinds = ["started", "progress", "done", "failed", "released", "refused", "bye"]
    kind = draw(st.sampled_from(kinds))
    own = sorted(a for a, w in real.attempts.items() if w == node)
    others = sorted(a for a, w in real.attempts.items() if w != node)
    target = draw(st.sampled_from(["own", "own", "own", "other", "made-up"]))
    if target == "own" and own:
        attempt_id = draw(st.sampled_from(own))
    elif target == "other" and others:
        attempt_id = draw(st.sampled_from(others))
    else:
        attempt_id = draw(made_up_ids)
    names = [w for w in (*real.workers, *real.event_nodes) if w != node]
    worker = node if draw(st.integers(0, 9)) else draw(st.sampled_from(names) | fuzz_names)
    usage = wire.Usage(wall=draw(st.floats(0, 1e4)), cpu=draw(st.floats(0, 1e4)), site="local")
    common = {"worker": worker, "attempt_id": attempt_id}
    if kind == "started":
        message = wire.Started(**common, elapsed=draw(st.floats(0, 100)))
    elif kind == "progress":
        message = wire.Progress(**common, progress=draw(st.floats(0, 1)))
    elif kind == "done":
        outputs = (wire.Output(frame=draw(st.integers(1, 4)), sha256=draw(sha256s),
                               size=draw(st.integers(1, 10**6))),)
        message = wire.Done(**common, outputs=outputs, usage=usage,
                            log_key=f"jobs/{real.named_job}/attempts/0/1/log.txt")
    elif kind == "failed":
        message = wire.Failed(**common, error=draw(st.text(max_size=50)), usage=usage,
                              bad_tiles=tuple(draw(st.lists(st.integers(0, 4095), max_size=3))))
    elif kind == "released":
        message = wire.Released(**common, reason=draw(st.text(max_size=50)))
    elif kind == "refused":
        message = wire.Refused(worker=worker, rq_id=draw(st.text(max_size=40)),
                               reason=draw(st.sampled_from(["fuzz", "r" * 4000])),
                               raw=draw(st.text(max_size=40)))
    else:
        message = wire.Bye(worker=worker)
    return _doc(message)


@st.composite
def event_entries(draw, real: Real) -> tuple:
    pick = draw(st.integers(0, 19))
    nodes = (*real.workers, *real.event_nodes)
    if pick == 0:  # an entry with no message field, on a node's stream or the control stream
        return ("no d field", draw(st.sampled_from([*nodes, None])))
    if pick == 1:  # on the stream of a node never enrolled: no one reads it
        body = draw(raw_junk() | events(real, real.workers[0]).map(json.dumps))
        return ("stranger event", draw(stranger_names), body)
    node = draw(st.sampled_from(nodes))
    if pick < 7:
        body = draw(raw_junk())
    else:
        body = serialized(draw(events(real, node).flatmap(message_or_mutant)), draw)
    return ("event", node, draw(seals()), body)


# -- heartbeats ------------------------------------------------------------------------------------


@st.composite
def beats(draw, real: Real) -> dict:
    held = st.sampled_from(sorted(real.attempts)) | made_up_ids
    attempts = draw(st.lists(held, max_size=3, unique=True))
    tags = draw(st.lists(st.sampled_from(["gpu", "linux"]), max_size=2, unique=True))
    caps = wire.Capabilities(renderers={"null": "0.1"}, tags=tuple(tags), cores=2)
    beat = wire.Heartbeat(
        name=PLACEHOLDER_NAME, pid=draw(st.integers(1, 2**31)),
        pool=draw(st.sampled_from(["default", "x"])),  # not the pool it was enrolled in: no matter
        cores=draw(st.integers(1, 64)), state=draw(st.sampled_from(["idle", "busy", "stopping"])),
        attempts=tuple(attempts), ttl=draw(st.floats(1, 3600)), seq=draw(st.integers(0, 2**63 - 1)),
        capabilities=caps,
    )
    return _doc(beat)


@st.composite
def beat_entries(draw, real: Real) -> tuple:
    pick = draw(st.integers(0, 9))
    if pick == 0:  # the heartbeat key of a node never enrolled: no one reads it
        value = draw(raw_junk() | beats(real).map(json.dumps))
        return ("stranger beat", draw(stranger_names), value)
    body = draw(raw_junk()) if pick < 4 else draw(beats(real).flatmap(message_or_mutant))
    return ("beat", draw(seals()), body)


# -- the workers' queues ---------------------------------------------------------------------------


@st.composite
def orders(draw) -> dict:
    sha = draw(sha256s)
    order = wire.TaskOrder(
        attempt_id=PLACEHOLDER_ATTEMPT, attempt=draw(st.integers(1, 3)), task_id=draw(made_up_ids),
        task_index=draw(st.integers(0, 100)), node=PLACEHOLDER_NODE, job_id=draw(made_up_jobs),
        name="fz", renderer="null", scene_key=f"scenes/{sha}.toml", scene_sha256=sha,
        frames=(draw(st.integers(1, 4)),), width=64, height=36, timeout=60.0,
    )
    return _doc(order)


RECORD_FIELDS = [
    "created_at", "enqueued_at", "started_at", "last_heartbeat", "timeout", "status",
    "dependency_ids", "result_ttl", "failure_ttl", "ttl", "description", "data", "origin",
    "success_callback_name", "failure_callback_timeout", "meta", "enqueue_at_front",
    "allow_dependency_failures", "webhooks",
]
RECORD_JUNK = [None, "", "yesterday", "-1", "abc", "[[[", "\x80", "1e400", "finished", "os.system",
               "{}", "9" * 30]
HOSTILE_FUNCTIONS = ["os.system", "builtins.eval", "renderfarm_worker.tasks.finish", RENDER_TASK]


@st.composite
def queue_entries(draw, real: Real) -> tuple:
    worker = draw(st.sampled_from(real.workers))
    pick = draw(st.integers(0, 9))
    func, kwargs, callbacks, pickled, seal = RENDER_TASK, {}, False, False, None
    if pick < 5:  # an order's document: sealed (or not) when posted
        args = (draw(orders().flatmap(message_or_mutant)),)
        seal = draw(seals())
    elif pick < 7:
        args = (draw(raw_junk().filter(lambda raw: isinstance(raw, str))),)
    elif pick == 7:
        args = tuple(draw(st.lists(json_values, max_size=3)))
        kwargs = draw(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), json_values,
                                      max_size=2))
    else:
        func = draw(st.sampled_from(HOSTILE_FUNCTIONS))
        args = ("touch /tmp/fuzz-pwned",)
        callbacks = func == RENDER_TASK
        pickled = draw(st.booleans())
    # Its attempt's RQ id, another of the node's own jobs' ids, or one its node may not even read.
    rq_id = "attempt" if pick < 5 and draw(st.integers(0, 3)) else "own"
    rq_id = "foreign" if draw(st.integers(0, 5)) == 0 else rq_id
    record = None  # or a field of the job's record in Redis, rewritten by hand (None: deleted)
    if not pickled and draw(st.integers(0, 3)) == 0:
        junk = st.sampled_from(RECORD_JUNK) | st.binary(max_size=20)
        record = (draw(st.sampled_from(RECORD_FIELDS)), draw(junk))
    return ("queue", worker, func, args, kwargs, callbacks, pickled, rq_id, record, seal)


def entries(real: Real) -> st.SearchStrategy:
    # one_of draws each strategy alike: the streams get more of the entries than keys and queues
    return st.one_of(control_entries(real), control_entries(real), event_entries(real),
                     event_entries(real), event_entries(real), beat_entries(real),
                     queue_entries(real))


# -- what the farm must make of an entry -----------------------------------------------------------


@dataclass
class Expected:
    """The dead letters the farm must write for the posted entries, keyed (source, entry, node
    named), and the request ids of valid intents (each answered with a reply, not dead-lettered)."""

    letters: list[tuple[str, str, str | None]] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    posted: dict[str, int] = field(default_factory=dict)
    valid: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    def count(self, channel: str, valid: bool) -> None:
        self.posted[channel] = self.posted.get(channel, 0) + 1
        if valid:
            self.valid[channel] = self.valid.get(channel, 0) + 1


def judge_intent(raw, limits, real: Real):
    """'dead', 'skip' (a valid intent that would change a job the test keeps untouched, make real
    work, or enroll or revoke a node the test acts as), or the intent."""
    try:
        intent = wire.parse_intent(raw, limits=limits)
    except (wire.WireError, RenderFarmError):
        return "dead"
    if isinstance(intent, wire.SubmitIntent):
        spec = intent.job
        runs_nowhere = spec.pool == FUZZ_JOB_POOL or FUZZ_JOB_TAG in spec.requires
        small = spec.frames in SMALL_FRAMES and spec.tiles is None
        return intent if runs_nowhere and small and spec.after != real.untouched_job else "skip"
    if isinstance(intent, (wire.NodeAddIntent, wire.NodeRevokeIntent)):
        return "skip" if intent.name in real.nodes else intent
    if intent.job == real.untouched_job:
        return "skip"
    if intent.job == real.named_job and intent.type == "retry":
        return "skip"  # it would render the named job again
    return intent


def judge_event(raw, node: str, key: str, newest: int, real: Real) -> tuple[str, int | None]:
    """What the manager makes of an entry on `node`'s stream, whose newest event it accepted had
    sequence number `newest`: ('dead' | 'skip' | 'applied' | 'refusal', the number it accepts
    from the node, or None). A valid event is 'skip'ped where it would change the untouched job
    or take a real worker away; a valid refusal is kept as a dead letter of the node's queue."""
    try:
        sealed, body = open_seal(raw, node, key)
        event = wire.parse_event(body)
        if event.worker != node:
            return "dead", None
    except wire.WireError:
        return "dead", None
    if sealed.seq <= newest:
        return "dead", None  # replayed
    if isinstance(event, wire.Bye):
        return ("skip" if node in real.workers else "applied"), sealed.seq
    if isinstance(event, wire.Refused):
        return "refusal", sealed.seq
    if event.attempt_id in real.untouched_attempts:
        return "skip", sealed.seq
    return ("applied" if real.attempts.get(event.attempt_id) == node else "dead"), sealed.seq


def judge_beat(raw: bytes, node: str, key: str, newest: int) -> int | None:
    """The sequence number of a heartbeat the manager takes from `node` (it took one numbered
    `newest` last), or None: it must be dead-lettered."""
    try:
        sealed, body = open_seal(raw, node, key)
        beat = wire.Heartbeat.parse(body)
    except wire.WireError:
        return None
    return sealed.seq if beat.name == node and sealed.seq >= newest else None


def judge_record(record: dict[bytes, bytes], rq_id: str, connection, node) -> str | bool:
    """What a worker must make of a job record in Redis, read by RQ's own restore: 'gone' (RQ
    passes over a record with no data), or whether it must be refused."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    job = Job(rq_id, connection=connection, serializer=JSONSerializer)
    try:
        job.restore(record)
    except NoSuchJobError:
        return "gone"
    except Exception:  # noqa: BLE001 - RQ cannot read it
        return True
    try:
        func, args, kwargs = job.func_name, job.args, job.kwargs
    except Exception:  # noqa: BLE001 - its data is not our JSON
        return True
    names = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    callbacks = any(names)
    if job.origin != keys.queue_name(node.name):  # RQ would file it under that queue's keys
        return True
    return judge_queued(func, args, kwargs, callbacks, False, rq_id, node)


def judge_queued(func, args, kwargs, callbacks: bool, pickled: bool, rq_id: str, node) -> bool:
    """Whether a worker (`node`: its credentials) must refuse the job, and report it to be
    dead-lettered: anything but our task with one order, sealed by the manager for this node
    under the number of its attempt, queued under that attempt's RQ id."""
    if pickled or callbacks or func != RENDER_TASK or kwargs:
        return True
    if len(args) != 1 or not isinstance(args[0], str):
        return True
    try:
        sealed, body = open_seal(args[0], node.name, node.key)
        order = wire.TaskOrder.parse(body)
    except wire.WireError:
        return True
    if order.node != node.name or sealed.seq != order.attempt_id:
        return True
    return rq_id != rq_job_id(node.node_id, order.attempt_id)
