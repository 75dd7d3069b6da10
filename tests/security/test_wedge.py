"""Nothing anyone writes to Redis wedges the farm or reaches outside a worker's scratch directory
(a real local farm, two workers): hostile intents, events, heartbeats and task orders are refused
or dead-lettered with their reasons while a real job renders on; a submission the stopped manager
cannot answer is sent again without making a second job."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from conftest import run_farm, wait_for
from faults.livefarm import BOUNCING, LiveFarm, report
from nodekit import ActingNode

from renderfarm import keys, streams

pytestmark = pytest.mark.slow

HUGE = "99999999999999999999999"
# The old code built paths from the order's strings; its `../` walked from a worker's scratch
# directory (<state>/scratch/<worker>) up to the test's own directory, next to <state>.
UP_FROM_ATTEMPTS = "../../../../"  # <scratch>/attempts/<job>-<task>-<attempt>
UP_FROM_OUT = "../../../../../../"  # <scratch>/attempts/<dir>/out/<name>.<frame>.png
UP_FROM_SCENES = "../../../../"  # <scratch>/scenes/<sha256>.toml


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = LiveFarm(tmp_path_factory.mktemp("wedge"))
    f.up()
    yield f
    f.down()


def test_hostile_entries_are_refused_while_a_job_renders_on(farm):
    """Hostile intents (as from a buggy or hostile CLI), and everything one node's credentials
    allow: bad events and heartbeats sealed with its own key, crafted task orders in its own queue,
    and orders pushed onto another node's queue."""
    import redis as redis_lib

    from renderfarm.enrollment import read_credentials

    r = farm.redis()
    pids = farm.pids()
    workers = farm.worker_names()
    credentials = read_credentials(farm.state / "nodes" / f"{workers[0]}.farm-node")
    node = ActingNode(credentials)
    as_node = redis_lib.Redis.from_url(credentials.redis_url)
    # The sentinel: where the old code made the workdir of job id '../../../../victim' (after
    # removing what was there). Its name and scene hash attacks wrote next to it.
    sentinel = farm.tmp / "victim-0-1"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("keep me")
    outside = sorted(p.name for p in farm.tmp.iterdir())

    job = farm.submit(BOUNCING, "--frames", "1-24", "--name", "shot")
    wait_for(lambda: farm.done_tasks(job) >= 1, 60, "the job to be rendering")
    [[scene_key, sha]] = farm.query("select scene_key, scene_sha256 from jobs where id = ?", job)
    [[attempt]] = farm.query("select min(id) from attempts where job_id = ? and worker = ?", job, workers[0])
    # (source, entry) -> what its dead letter's reason names, and the worker it names
    expected = {
        **_post_intents(r, scene_key, sha),
        **_post_events(as_node, node, attempt, sha),
        **_post_heartbeat(as_node, node),
        **_enqueue_orders(as_node, node, job, scene_key, sha),
    }
    # Another node's queue is not this node's to write: Valkey refuses, and says who tried.
    with pytest.raises(redis_lib.exceptions.NoPermissionError):
        as_node.lpush(f"rq:queue:{keys.queue_name(workers[1])}", "x")
    assert farm.done_tasks(job) < 24, "the job finished before the attack was over"
    # The CLI's own check, before anything is sent.
    cli = run_farm("submit", str(BOUNCING), "--max-workers", HUGE, env=farm.env, check=False)
    assert cli.returncode != 0 and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and HUGE in cli.stderr, cli.stderr

    def all_came() -> bool:
        came = _letters(farm)
        if not any(x["source"] == keys.heartbeat_key(node.name) for x in came):
            # The real worker beats under the same key: its next beat can replace the bad one
            # before a loaded manager reads it. The bad beat is set again until it is seen (its
            # dead letter is written once per worker, however often it comes).
            _post_heartbeat(as_node, node)
        return len(came) >= len(expected) + 1

    try:
        wait_for(all_came, 60, "every entry's dead letter", interval=1.0)
    except AssertionError:
        pass  # the assertion below shows what came
    everything = _letters(farm)
    acl = [x for x in everything if x["source"] == "acl"]
    letters = {(x["source"], x["entry"]): x for x in everything if x["source"] != "acl"}
    came = [(*key, x["reason"]) for key, x in letters.items()]
    assert letters.keys() == expected.keys(), json.dumps(came, indent=1)
    for (source, entry), (names, worker) in expected.items():
        letter = letters[(source, entry)]
        assert names in letter["reason"] and letter["worker"] == worker, letter
        if source == keys.CONTROL_STREAM and letter["raw"].startswith("{"):
            # Its sender hears at once.
            reply = streams.await_reply(r, json.loads(letter["raw"])["request_id"], 10)
            assert not reply.ok and reply.error == letter["reason"]
    assert [(x["worker"], keys.queue_name(workers[1]) in x["reason"]) for x in acl] == [(workers[0], True)]

    assert farm.wait_job(job, 120) == "done"
    farm.check_frames(job, "shot", list(range(1, 25)), (640, 360))
    assert not farm.query("select id from jobs where name = 'evil'")
    assert farm.pids() == pids and all(os.path.exists(f"/proc/{p}") for p in pids.values())
    assert sorted(p.name for p in farm.tmp.iterdir()) == outside
    assert [p.name for p in sentinel.iterdir()] == ["keep.txt"]
    assert (sentinel / "keep.txt").read_text() == "keep me"
    # Nothing is left for RQ's maintenance to trip on.
    from rq import Queue
    from rq.job import Job

    raw_id = _raw_id(credentials.node_id)
    intermediate = Queue(keys.queue_name(workers[0]), connection=r).intermediate_queue_key
    assert raw_id.encode() not in r.lrange(intermediate, 0, -1)
    assert not r.exists(Job.key_for(raw_id))
    refused = {n["name"]: n["refused"] for n in json.loads(run_farm("node", "list", "--json", env=farm.env).stdout)}
    assert refused[workers[0]] >= 7 and refused[workers[1]] == 0  # counted against the node that sent them


def _letters(farm) -> list[dict]:
    out = run_farm("dead-letters", "--json", "--limit", "1000", env=farm.env).stdout
    return json.loads(out)


def _raw_id(node_id: str) -> str:
    """An RQ job id RQ itself refuses, in the node's own key space."""
    return f"{node_id}-900100/{UP_FROM_ATTEMPTS}victim"


def _post_intents(r, scene_key: str, sha: str) -> dict:
    """Submissions that failed the manager's batch on every read, and JSON too deep to read."""
    from renderfarm.wire import JobSpec, SubmitIntent

    spec = JobSpec(name="evil", owner="mallory", renderer="builtin", scene_name="x.toml",
                   scene_key=scene_key, scene_sha256=sha, frames="1", width=64, height=36)
    sent = {}
    bad = [("max_workers", int(HUGE)), ("max_workers", 1e30), ("requires", 5)]
    for request, (field, value) in zip("123", bad):
        doc = json.loads(SubmitIntent(request_id=request * 32, job=spec).to_json())
        doc["job"][field] = value
        entry = streams.post(r, keys.CONTROL_STREAM, json.dumps(doc))
        sent[(keys.CONTROL_STREAM, entry)] = (f"job.{field}", None)
    deep = streams.post(r, keys.CONTROL_STREAM, "[" * 10_000 + "]" * 10_000)
    sent[(keys.CONTROL_STREAM, deep)] = ("recursion limit", None)
    return sent


def _post_events(r, node: ActingNode, attempt: int, sha: str) -> dict:
    """Events out of range or of the wrong type, most naming the node's real attempt, sealed with
    its own key on its own stream."""
    ours = {"worker": node.name, "attempt_id": attempt}
    bad = {
        "attempt_id": {"type": "progress", **ours, "attempt_id": 1e30, "progress": 0.5},
        "progress": {"type": "progress", **ours, "progress": "abc"},
        "ts": {"type": "started", **ours, "ts": "x"},
        "outputs": {"type": "done", **ours, "outputs": 5, "usage": {"wall": 1}},
        "usage.wall": {"type": "done", **ours, "usage": {"wall": 1e308},
                       "outputs": [{"frame": 1, "sha256": sha, "size": 3}]},
    }
    sent = {}
    stream = keys.event_stream(node.name)
    for field, doc in bad.items():
        entry = node.post(r, json.dumps(doc))
        sent[(stream, entry)] = (f" {field}: ", node.name)
    return sent


def _post_heartbeat(r, node: ActingNode) -> dict:
    r.set(keys.heartbeat_key(node.name), node.sealed(json.dumps({"name": node.name, "pid": "x"})), ex=3)
    reason = "heartbeat: pid: 'x' should be a valid integer"
    return {(keys.heartbeat_key(node.name), node.name): (reason, node.name)}


def _enqueue_orders(r, node: ActingNode, job: str, scene_key: str, sha: str) -> dict:
    """Task orders for our own function in the node's own queue, sealed with its own key (it has
    it), each with a lease it may not set itself, and one written into RQ's keys by hand past RQ's
    own check of job ids."""
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from renderfarm.queues import RENDER_TASK

    node_id = node.credentials.node_id
    base = {"v": 2, "kind": "render", "attempt": 1, "task_index": 0, "node": node.name, "job_id": job,
            "name": "evil", "renderer": "builtin", "scene_key": scene_key, "scene_sha256": sha, "frames": [1],
            "format": "png", "width": 64, "height": 36, "timeout": 60}
    crafted = [
        ("task order: job_id: ", {"job_id": UP_FROM_ATTEMPTS + "victim"}),
        ("task order: name: ", {"name": UP_FROM_OUT + "pwned"}),
        ("task order: scene_sha256: ", {"scene_sha256": UP_FROM_SCENES + "pwned-scene/x"}),
        ("carries the order of attempt", {}),  # a valid order, under another attempt's RQ job id
    ]
    sent = {}
    queue = Queue(keys.queue_name(node.name), connection=r, serializer=JSONSerializer)
    for i, (names, fields) in enumerate(crafted):
        attempt_id = task_id = 900_001 + i
        rq_id = f"{node_id}-{attempt_id + (1000 if names.startswith('carries') else 0)}"
        order = node.sealed(json.dumps({**base, "attempt_id": attempt_id, "task_id": task_id, **fields}),
                            seq=attempt_id)
        queue.enqueue_call(RENDER_TASK, args=(order,), job_id=rq_id, result_ttl=0)
        sent[(queue.name, rq_id)] = (names, node.name)

    order = node.sealed(json.dumps({**base, "attempt_id": 900_100, "task_id": 900_100,
                                    "job_id": UP_FROM_ATTEMPTS + "victim"}), seq=900_100)
    made = Job.create(RENDER_TASK, args=(order,), connection=r, serializer=JSONSerializer,
                      id=f"{node_id}-900100", origin=queue.name, result_ttl=0)
    raw_id = _raw_id(node_id)
    r.hset(Job.key_for(raw_id), mapping={**made.to_dict(), "status": "queued"})
    r.lpush(queue.key, raw_id)
    sent[(queue.name, raw_id)] = ("RQ cannot read it", node.name)
    return sent


def test_a_submission_the_stopped_manager_did_not_answer_is_sent_again_without_a_second_job(farm):
    env = {**farm.env, "FARM_SUBMIT_WAIT": "5"}
    manager = farm.pids()["manager"]
    [[before]] = farm.query("select count(*) from jobs")
    submit = ("submit", str(BOUNCING), "--frames", "1", "--name", "held", "--json")
    os.kill(manager, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # Within the leader lock's life: the intent is sent, and the CLI gives up waiting.
        timed_out = run_farm(*submit, env=env, check=False)
        assert timed_out.returncode != 0 and "Traceback" not in timed_out.stderr
        assert len(timed_out.stderr.strip().splitlines()) == 1, timed_out.stderr
        request_id = re.search(r"--request-id ([0-9a-f]{32})", timed_out.stderr).group(1)
        # Past it: the CLI sends nothing, and says why.
        wait_for(lambda: not farm.redis().exists(keys.MANAGER_LEADER), 20,
                 "the stopped manager's lock to expire")
        refused = run_farm(*submit, env=env, check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "manager is not running" in refused.stderr
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))  # the stop the acceptance names
    finally:
        os.kill(manager, signal.SIGCONT)
    report("submit to a stopped manager", first=timed_out.stderr.strip(),
           past_the_lock=refused.stderr.strip())
    wait_for(lambda: farm.redis().exists(keys.MANAGER_LEADER), 20, "the manager to lead again")
    again = run_farm(*submit, "--request-id", request_id, env=env)
    job = json.loads(again.stdout)["id"]
    rows = farm.query("select id, request_id from jobs where name = 'held'")
    assert [tuple(row) for row in rows] == [(job, request_id)]
    assert farm.query("select count(*) from jobs")[0][0] == before + 1
    assert farm.wait_job(job, 60) == "done"
    assert farm.pids()["manager"] == manager
