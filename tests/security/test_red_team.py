"""The red team of issue 16 on a real local farm (`farm up -d`, two workers enrolled as the farm
enrolls them): a node enrolled with `farm node add`, using only what its credentials file holds
(its Valkey user, its key, its S3 identity), tries to act as another node, or as the farm, while a
job renders on the honest workers. Every try is refused and recorded with the node's name, and the
job still completes with every frame valid. Then `farm node revoke`: the revoked node's next event
and S3 request are refused (and recorded with its name), its running attempt renders elsewhere, and
its worker process ends."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from conftest import BIN, run_farm, wait_for
from faults.livefarm import BOUNCING, HEARTBEAT_TTL, LiveFarm
from nodekit import ActingNode
from renderfarm_worker.daemon import EXIT_TURNED_AWAY

from renderfarm import keys, presence
from renderfarm.enrollment import NodeCredentials, read_credentials
from renderfarm.frames import frame_name
from renderfarm.localfarm.services import node_env
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import Bye, Done, Failed, Heartbeat, Output, Released, Sealed, Started, Usage

pytestmark = pytest.mark.slow

ATTACKER = "mallory"
NEVER_ENROLLED = "evil-node"
SIZE = (640, 360)  # BOUNCING's


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = LiveFarm(tmp_path_factory.mktemp("redteam"))
    f.up()
    yield f
    f.down()


def enroll(farm: LiveFarm, name: str, folder: Path) -> tuple[NodeCredentials, Path]:
    """`farm node add NAME -o FILE`, as an admin enrolls a node; its credentials file."""
    path = folder / f"{name}.farm-node"
    run_farm("node", "add", name, "-o", str(path), env=farm.env)
    return read_credentials(path), path


def s3_as(credentials: NodeCredentials):
    """An S3 client with the node's own S3 identity, and nothing else; its bucket and prefix."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    client = boto3.client("s3", endpoint_url=credentials.s3_endpoint_url, region_name=credentials.s3_region,
                          aws_access_key_id=credentials.s3_access_key,
                          aws_secret_access_key=credentials.s3_secret_key, config=config)
    url = urlsplit(credentials.storage_url)
    prefix = url.path.strip("/")
    return client, url.netloc, prefix + "/" if prefix else ""


def http_status(call) -> int:
    """The HTTP status an S3 call ends with (200 when it succeeds)."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    return 200


def valkey_refuses(call) -> str:
    """'refused' when Valkey refuses the node this command, else what came back."""
    try:
        got = call()
    except redis.exceptions.NoPermissionError:
        return "refused"
    except redis.RedisError as e:  # not refused by the node's rule (Valkey may be wrecked by an earlier try)
        return f"not refused: {type(e).__name__}: {e}"[:200]
    return f"allowed: {got!r}"[:200]


def dead_letters(farm: LiveFarm) -> list[dict]:
    return json.loads(run_farm("dead-letters", "--json", "--limit", "1000", env=farm.env).stdout)


def s3_recorded(letters: list[dict], node: str, method: str, key: str) -> bool:
    """Whether SeaweedFS's refusal of this request is a dead letter naming the node."""
    return any(x["source"] == "s3" and x["worker"] == node and f" {node} {method} {key}: " in x["reason"]
               for x in letters)


def refused_counts(farm: LiveFarm) -> dict[str, int]:
    return {n["name"]: n["refused"] for n in json.loads(run_farm("node", "list", "--json", env=farm.env).stdout)}


def live_attempts(farm: LiveFarm, job: str) -> list:
    """The job's unfinished attempts, running ones first."""
    return farm.query("select a.id, a.worker, a.number, t.[index] task from attempts a join tasks t "
                      "on t.id = a.task_id where a.job_id = ? and a.state in ('queued', 'running') "
                      "order by a.state = 'queued', a.id", job)


def test_a_node_acts_only_as_itself_while_a_job_renders_on(farm, tmp_path):
    honest = farm.worker_names()
    me_creds, _ = enroll(farm, ATTACKER, tmp_path)
    me = ActingNode(me_creds)
    valkey = redis.Redis.from_url(me_creds.redis_url)  # its own Valkey user: all it has
    s3, bucket, prefix = s3_as(me_creds)
    assert valkey.ping()

    job = farm.submit(BOUNCING, "--frames", "1-16", "--chunk", "2", "--name", "shot")
    # A frame promoted (to try on) and attempts of the honest workers still live (to forge events for).
    wait_for(lambda: farm.done_tasks(job) >= 1 and live_attempts(farm, job), 90, "the job to be rendering")
    victim = live_attempts(farm, job)[0]
    owner, attempt_id = victim["worker"], victim["id"]
    [[scene_key]] = farm.query("select scene_key from jobs where id = ?", job)
    frame_key = _a_frame_key(farm, job)
    nodes = {row["name"]: row["node_id"] for row in farm.query("select name, node_id from nodes")}
    outcome: dict[str, str] = {}
    posted: dict[str, str] = {}  # what -> entry id of what went onto the attacker's own stream

    # (g) first: a valid event of its own is accepted; the same sealed text again is a replay.
    bye = me.sealed(Bye(worker=ATTACKER))
    applied = Sealed.parse(bye).seq
    valkey.xadd(keys.event_stream(ATTACKER), {"d": bye})
    wait_for(lambda: farm.query("select last_event_seq from nodes where name = ?", ATTACKER)[0][0] >= applied, 20,
             "the attacker's own bye to be accepted")
    posted["(g) a replay of its own earlier valid event"] = valkey.xadd(keys.event_stream(ATTACKER),
                                                                        {"d": bye}).decode()

    # (a) done, failed, released and bye for another node's attempt, sealed with its own key on its own stream...
    planted = b"\x89PNG forged frame"
    frame = _first_frame(farm, job, victim["task"])
    own_copy = prefix + attempt_prefix(ATTACKER, job, victim["task"], victim["number"]) + frame_name("shot", frame,
                                                                                                      "png")
    assert http_status(lambda: s3.put_object(Bucket=bucket, Key=own_copy, Body=planted)) == 200  # its own prefix
    outputs = (Output(frame=frame, sha256=hashlib.sha256(planted).hexdigest(), size=len(planted)),)
    usage = Usage(wall=1.0)
    forged = {}
    for as_who, worker in (("as itself", ATTACKER), (f"in {owner}'s name", owner)):
        forged |= {
            f"(a) done {as_who} for {owner}'s attempt": Done(worker=worker, attempt_id=attempt_id, outputs=outputs,
                                                             usage=usage),
            f"(a) failed {as_who} for {owner}'s attempt": Failed(worker=worker, attempt_id=attempt_id,
                                                                 error="forged"),
            f"(a) released {as_who} for {owner}'s attempt": Released(worker=worker, attempt_id=attempt_id,
                                                                     reason="forged"),
        }
    forged[f"(a) bye in {owner}'s name"] = Bye(worker=owner)
    forged[f"(f) an event in the name of {NEVER_ENROLLED}, never enrolled"] = Started(worker=NEVER_ENROLLED,
                                                                                      attempt_id=attempt_id)
    for what, event in forged.items():
        posted[what] = me.post(valkey, event)
    # ...and sealed as if by the other node (with the attacker's key: it has no other).
    posted[f"(a) failed sealed as {owner}"] = valkey.xadd(keys.event_stream(ATTACKER), {"d": Sealed.seal(
        Failed(worker=owner, attempt_id=attempt_id, error="forged"), node=owner, seq=me.sequence.next(),
        key=me_creds.key).to_json()}).decode()

    # ...and written onto the other node's own stream: Valkey refuses.
    theirs = keys.event_stream(owner)
    for kind, event in (("done", forged[f"(a) done in {owner}'s name for {owner}'s attempt"]),
                        ("failed", Failed(worker=owner, attempt_id=attempt_id, error="forged")),
                        ("released", Released(worker=owner, attempt_id=attempt_id, reason="forged")),
                        ("bye", Bye(worker=owner))):
        outcome[f"(a) {kind} on {owner}'s stream"] = valkey_refuses(
            lambda e=event: valkey.xadd(theirs, {"d": me.sealed(e)}))

    # (b) a task order onto another node's queue.
    from rq import Queue
    from rq.serializers import JSONSerializer

    from renderfarm.queues import RENDER_TASK

    their_queue = Queue(keys.queue_name(owner), connection=valkey, serializer=JSONSerializer)
    outcome[f"(b) an RQ order onto {owner}'s queue"] = valkey_refuses(lambda: their_queue.enqueue_call(
        RENDER_TASK, args=(me.sealed('{"v": 2}'),), job_id=f"{nodes[owner]}-999999", result_ttl=0))
    outcome[f"(b) LPUSH onto {owner}'s queue"] = valkey_refuses(
        lambda: valkey.lpush(their_queue.key, f"{me_creds.node_id}-999998"))

    # (c) another job's frames and a scene, with its own S3 identity.
    # Each with what SeaweedFS records of it: the method and key of the request it refused.
    s3_tries = {
        "(c) GET of a frame": (lambda: s3.get_object(Bucket=bucket, Key=prefix + frame_key),
                               ("GET", prefix + frame_key)),
        "(c) PUT over a frame": (lambda: s3.put_object(Bucket=bucket, Key=prefix + frame_key, Body=planted),
                                 ("PUT", prefix + frame_key)),
        "(c) DELETE of a frame": (lambda: s3.delete_object(Bucket=bucket, Key=prefix + frame_key),
                                  ("DELETE", prefix + frame_key)),
        "(c) PUT over a scene": (lambda: s3.put_object(Bucket=bucket, Key=prefix + scene_key, Body=b"[render]\n"),
                                 ("PUT", prefix + scene_key)),
        "(c) copy of a frame into its own prefix": (lambda: s3.copy_object(
            Bucket=bucket, Key=own_copy + ".stolen", CopySource={"Bucket": bucket, "Key": prefix + frame_key}),
            ("PUT", own_copy + ".stolen")),
    }
    for what, (call, _) in s3_tries.items():
        code = http_status(call)
        outcome[what] = "refused" if code == 403 else f"HTTP {code}"

    # (f) heartbeats under another node's name and under a name never enrolled.
    for name in (owner, NEVER_ENROLLED):
        beat = Sealed.seal(Heartbeat(name=name, pid=1, ttl=30), node=name, seq=me.sequence.next(), key=me_creds.key)
        outcome[f"(f) a heartbeat at {name}'s key"] = valkey_refuses(
            lambda b=beat, n=name: presence.beat(valkey, n, b.to_json(), 30))
    outcome[f"(f) an event stream for {NEVER_ENROLLED}"] = valkey_refuses(
        lambda: valkey.xadd(keys.event_stream(NEVER_ENROLLED), {"d": me.sealed(Bye(worker=NEVER_ENROLLED))}))
    # At its own key, naming another node: the manager refuses it.
    presence.beat(valkey, ATTACKER, me.sealed(Heartbeat(name=owner, pid=1, ttl=HEARTBEAT_TTL)), HEARTBEAT_TTL)

    # (d) the control stream; (e) administration (last: without the defence, these wreck Valkey).
    cancel = json.dumps({"type": "cancel", "request_id": "f" * 32, "job_id": job})
    outcome["(d) XADD to the control stream"] = valkey_refuses(lambda: valkey.xadd(keys.CONTROL_STREAM, {"d": cancel}))
    outcome["(e) ACL SETUSER"] = valkey_refuses(
        lambda: valkey.execute_command("ACL", "SETUSER", "backdoor", "on", ">pw", "~*", "+@all"))
    outcome["(e) CONFIG SET"] = valkey_refuses(lambda: valkey.config_set("maxmemory", "1mb"))
    outcome["(e) FLUSHALL"] = valkey_refuses(valkey.flushall)
    outcome["(e) XTRIM of its own stream"] = valkey_refuses(lambda: valkey.xtrim(keys.event_stream(ATTACKER), maxlen=0))
    outcome["(e) XTRIM of the control stream"] = valkey_refuses(lambda: valkey.xtrim(keys.CONTROL_STREAM, maxlen=0))
    valkey_tries = [w for w, o in outcome.items() if not w.startswith("(c)")]
    assert farm.done_tasks(job) < 8, "the job finished before the attack was over"

    # Every refusal that reaches the manager is a dead letter with the attacker's name; what
    # Valkey refused comes from its ACL LOG, also with the attacker's name.
    def recorded():
        letters = dead_letters(farm)
        mine = {x["entry"] for x in letters if x["source"] == keys.event_stream(ATTACKER) and x["worker"] == ATTACKER}
        acl = sum(x["deliveries"] for x in letters if x["source"] == "acl" and x["worker"] == ATTACKER)
        beat = any(x["source"] == keys.heartbeat_key(ATTACKER) for x in letters)
        s3_seen = all(s3_recorded(letters, ATTACKER, *request) for _, request in s3_tries.values())
        return letters if set(posted.values()) <= mine and acl >= len(valkey_tries) and beat and s3_seen else None

    try:
        wait_for(recorded, 20, "every refusal to be recorded")
    except AssertionError:
        pass  # the comparison below shows what is missing
    letters = dead_letters(farm)
    by_entry = {x["entry"]: x for x in letters if x["source"] == keys.event_stream(ATTACKER)}
    for what, entry in posted.items():
        letter = by_entry.get(entry)
        outcome[what] = "refused" if letter and letter["worker"] == ATTACKER else "accepted"
    beats = [x for x in letters if x["source"] == keys.heartbeat_key(ATTACKER)]
    outcome[f"(f) a heartbeat naming {owner} at its own key"] = "refused" if beats and all(
        x["worker"] == ATTACKER and owner in x["reason"] for x in beats) else "accepted"
    acl = [x for x in letters if x["source"] == "acl"]
    for what in valkey_tries:
        if outcome[what] == "refused" and not any(x["worker"] == ATTACKER for x in acl):
            outcome[what] = "refused but not recorded"
    for what, (_, request) in s3_tries.items():
        if outcome[what] == "refused" and not s3_recorded(letters, ATTACKER, *request):
            outcome[what] = "refused but not recorded"
    print("\n[red team] " + "\n[red team] ".join(
        f"{x['source']} {x['worker']}: {x['reason'][:160]}" for x in letters if x["worker"] == ATTACKER))
    print("\n[red team] " + "\n[red team] ".join(f"{what}: {how}" for what, how in outcome.items()))
    assert outcome == {what: "refused" for what in outcome}
    assert {x["worker"] for x in acl} == {ATTACKER}
    assert sum(x["deliveries"] for x in acl) >= len(valkey_tries)
    for needle in (f"farm:events:{owner}", f"rq:job:{nodes[owner]}", f"rq:queue:{keys.queue_name(owner)}", keys.CONTROL_STREAM, "acl|setuser",
                   "config|set", "flushall", "xtrim", keys.heartbeat_key(owner), keys.heartbeat_key(NEVER_ENROLLED),
                   keys.event_stream(NEVER_ENROLLED)):
        assert any(needle in x["reason"] for x in acl), (needle, [x["reason"] for x in acl])

    # Nothing of it took: the job completes on the honest workers, every frame valid.
    assert farm.wait_job(job, 120) == "done"
    attempts = farm.attempts(job)
    assert {a["worker"] for a in attempts} <= set(honest)
    assert {a["state"] for a in attempts} == {"done"}, [dict(a) for a in attempts]
    farm.check_frames(job, "shot", list(range(1, 17)), SIZE)
    dest = tmp_path / "frames"
    run_farm("download", job, str(dest), env=farm.env)
    _check_downloaded(dest, "shot", range(1, 17))
    workers = {w["name"] for w in json.loads(run_farm("workers", "--json", env=farm.env).stdout)}
    assert NEVER_ENROLLED not in workers and owner in workers
    tries = len(posted) + len(valkey_tries) + len(s3_tries) + 1
    refused = wait_for(lambda: (c := refused_counts(farm))[ATTACKER] >= tries and c, 15, "the refusals to be counted")
    assert all(refused[w] == 0 for w in honest), refused  # never counted against the node it posed as
    print(f"\n[figures] red team: {len(outcome)} tries, all refused; {refused[ATTACKER]} refusals counted "
          f"against {ATTACKER}")


def _a_frame_key(farm: LiveFarm, job: str) -> str:
    """A promoted frame of the job (its storage key)."""
    return min(o.key for o in farm.storage().list(f"jobs/{job}/frames/"))


def _first_frame(farm: LiveFarm, job: str, task_index: int) -> int:
    [[first]] = farm.query("select first_frame from tasks where job_id = ? and [index] = ?", job, task_index)
    return first


def _check_downloaded(dest: Path, name: str, frames) -> None:
    from PIL import Image

    got = sorted(p.name for p in dest.iterdir())
    assert got == sorted(frame_name(name, f, "png") for f in frames)
    for path in dest.iterdir():
        with Image.open(path) as img:
            img.load()
            assert img.size == SIZE, path


def test_a_revoked_node_is_refused_at_once_and_its_attempt_renders_elsewhere(farm, tmp_path):
    honest = farm.worker_names()
    # Idle workers are handed work in name order: this one sorts first, so it is given one of
    # the job's two tasks and one honest worker stays idle, free to take its task at once.
    name = "0mole"
    creds, path = enroll(farm, name, tmp_path)
    log = tmp_path / "mole.log"
    worker = subprocess.Popen([str(BIN / "farm-worker"), "--credentials", str(path)], env=node_env(farm.env),
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        r = farm.redis()
        wait_for(lambda: name in presence.live_workers(r), 30, "the node's worker to beat")
        wait_for(lambda: name in {w["name"] for w in json.loads(run_farm("workers", "--json", env=farm.env).stdout)},
                 30, "the manager to see the node")
        job = farm.submit(BOUNCING, "--frames", "1-8", "--chunk", "4", "--name", "rev")

        def running_on_node():
            rows = farm.query("select a.id, a.task_id from attempts a where a.job_id = ? and a.worker = ? "
                              "and a.state = 'running'", job, name)
            return rows[0] if rows else None

        attempt = wait_for(running_on_node, 60, f"{name} to be rendering")
        start, revoked_at = time.monotonic(), time.time()
        run_farm("node", "revoke", name, env=farm.env)
        revoke_took = time.monotonic() - start

        outcome = {}
        # Its next event: Valkey no longer knows its user.
        me = ActingNode(creds)
        try:
            me.post(redis.Redis.from_url(creds.redis_url), Started(worker=name, attempt_id=attempt["id"]))
            outcome["its next event"] = "accepted"
        except redis.exceptions.AuthenticationError:
            outcome["its next event"] = "refused"
        event_refused = time.monotonic() - start
        # Its next S3 request.
        s3, bucket, prefix = s3_as(creds)
        key = prefix + attempt_prefix(name, job, 0, 1) + "late.png"
        code = http_status(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"late"))
        outcome["its next S3 request"] = "refused" if code == 403 else f"HTTP {code}"
        s3_refused = time.monotonic() - start
        if code == 403:
            try:
                wait_for(lambda: s3_recorded(dead_letters(farm), name, "PUT", key), 20, "the S3 refusal to be recorded")
            except AssertionError:
                outcome["its next S3 request"] = "refused but not recorded"

        # Its attempt goes to another node at once, which renders it.
        def elsewhere():
            rows = farm.query("select worker, queued_at, started_at, finished_at from attempts where task_id = ? "
                              "and id != ? and state = 'done'", attempt["task_id"], attempt["id"])
            return rows[0] if rows else None

        try:
            other = wait_for(elsewhere, 30, "its task to be rendered elsewhere")
            outcome["its attempt"] = "rendered elsewhere" if other["worker"] in honest else f"on {other['worker']}"
        except AssertionError:
            other = None
            outcome["its attempt"] = "not rendered elsewhere"
        # Its worker stops by itself, saying why, rather than retrying forever.
        code = _wait_exit(worker, 30)
        exited = time.monotonic() - start
        outcome["its worker"] = "ended" if code == EXIT_TURNED_AWAY else f"exit {code}"
        assert outcome == {"its next event": "refused", "its next S3 request": "refused",
                           "its attempt": "rendered elsewhere", "its worker": "ended"}, log.read_text()[-3000:]
        assert "refuses this node's credentials" in log.read_text()
        handed, rendered = other["queued_at"] - revoked_at, other["finished_at"] - revoked_at
        [[applied_at]] = farm.query("select revoked_at from nodes where name = ?", name)
        print(f"\n[figures] revocation (heartbeat TTL {HEARTBEAT_TTL:g} s), from `farm node revoke` (it took "
              f"{revoke_took:.2f} s): next event refused at {event_refused:.2f} s, next S3 request at "
              f"{s3_refused:.2f} s; its attempt handed to {other['worker']} at {handed:.2f} s "
              f"({other['queued_at'] - applied_at:.2f} s after the manager revoked it) and rendered there by "
              f"{rendered:.2f} s (4 frames); its worker exited ({code}) at {exited:.2f} s")
        # Handed on by the revocation itself, not by the reaper a heartbeat TTL later (that took
        # 2.9 s here when the revocation released nothing).
        assert other["queued_at"] - applied_at < HEARTBEAT_TTL / 2

        assert farm.wait_job(job, 120) == "done"
        farm.check_frames(job, "rev", list(range(1, 9)), SIZE)
        assert not [a for a in farm.attempts(job) if a["worker"] == name and a["state"] == "done"]
        letters = [x for x in dead_letters(farm) if x["source"] == "acl" and x["worker"] == name]
        assert any("auth" in x["reason"] for x in letters), letters
        assert refused_counts(farm)[name] >= 1
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
