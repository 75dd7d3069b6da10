"""A node's own Valkey user, made by the manager when the node is enrolled, is enough to render,
and confines the node to its own keys: no other node's queue, heartbeat or events, no control
stream, no administration. Every refusal is recorded as a dead letter with the node's name."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
import redis
from conftest import EXAMPLES, s3_settings, wait_for
from nodekit import enrolled_worker_argv, worker_env

from renderfarm import keys, streams
from renderfarm.client import Submission, submit
from renderfarm.db import make_engine, session_scope
from renderfarm.enrollment import read_credentials
from renderfarm.manager import Manager
from renderfarm.redisconn import connect
from renderfarm.status import job_status, resolve_job

pytestmark = pytest.mark.slow


def test_a_node_renders_with_its_own_user_and_may_touch_nothing_else(tmp_path, valkey, seaweed):
    admin = redis.Redis(port=valkey.port, password=valkey.password)
    admin.flushall()
    manager_url = f"redis://:{valkey.password}@127.0.0.1:{valkey.port}/0"
    settings = s3_settings(seaweed, tmp_path / "state", "acl" + os.urandom(4).hex(), FARM_REDIS_URL=manager_url,
                           FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.db'}", FARM_HEARTBEAT_TTL="3")
    stop = threading.Event()
    thread = threading.Thread(target=Manager(settings, poll_ms=50).run, args=(stop,), daemon=True)
    thread.start()
    r = connect(settings)
    wait_for(lambda: r.exists(keys.MANAGER_LEADER), 30, "the manager to lead")
    argv = enrolled_worker_argv(settings, "acl-w1", tmp_path)
    enrolled_worker_argv(settings, "other", tmp_path)
    node = redis.Redis.from_url(read_credentials(tmp_path / "acl-w1.farm-node").redis_url)
    log = Path(tmp_path / "worker.log")
    worker = subprocess.Popen(argv, env=worker_env(settings), stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        job = submit(settings, Submission(scene=EXAMPLES / "orbit.toml", frames="1-3"))
        engine = make_engine(settings.database_url)

        def done():
            with session_scope(engine) as s:
                return job_status(s, resolve_job(s, job)).state == "done"

        wait_for(done, 60, "the job")
        engine.dispose()
        assert "NOPERM" not in log.read_text() and "NoPermission" not in log.read_text(), log.read_text()[-2000:]
        assert admin.sismember("rq:queues", f"rq:queue:{keys.queue_name('acl-w1')}")  # RQ's own registries...
        assert any(m.startswith(b"rq:worker:") for m in admin.smembers("rq:workers"))  # ...as a node may use them
        assert node.smembers("rq:workers")
        assert node.ping()
        node.get(keys.lease_key(1))  # it may read leases (a finished one's is gone or marked taken back)

        forbidden = {
            "XADD to the control stream": lambda: node.xadd(keys.CONTROL_STREAM, {"d": "{}"}),
            "XADD to another node's events": lambda: node.xadd(keys.event_stream("other"), {"d": "{}"}),
            "XTRIM of its own events": lambda: node.xtrim(keys.event_stream("acl-w1"), maxlen=0),
            "XACK": lambda: node.xack(keys.event_stream("acl-w1"), keys.MANAGER_GROUP, "0-1"),
            "a heartbeat under another node's name": lambda: node.set(keys.heartbeat_key("other"), "{}"),
            "a heartbeat under a name never enrolled": lambda: node.set(keys.heartbeat_key("nobody"), "{}"),
            "an order onto another node's queue": lambda: node.lpush(f"rq:queue:{keys.queue_name('other')}", "x"),
            "the leader lock": lambda: node.set(keys.MANAGER_LEADER, "me"),
            "a lease": lambda: node.set(keys.lease_key(1), "5"),
            "FLUSHALL": node.flushall,
            "CONFIG SET": lambda: node.config_set("maxmemory", "1mb"),
            "ACL SETUSER": lambda: node.execute_command("ACL", "SETUSER", "backdoor", "on", ">pw", "+@all", "~*"),
            "KEYS": lambda: node.keys("*"),
            "SCAN": lambda: node.scan(0),
            "a reply": lambda: node.rpush(keys.reply_key("0" * 32), "{}"),
            "the dead letters": lambda: node.xrange(keys.DEAD_LETTERS),
            # RQ's shared registries: a node adds and removes itself, never deletes or replaces them.
            "DEL of RQ's queue registry": lambda: node.delete("rq:queues"),
            "DEL of RQ's worker registry": lambda: node.delete("rq:workers"),
            "RENAME of RQ's worker registry": lambda: node.rename("rq:workers", "rq:gone"),
            "SET over RQ's queue registry": lambda: node.set("rq:queues", "x"),
        }
        for what, call in forbidden.items():
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
                pytest.fail(f"{what} was allowed")
        # Valkey kept a record of each refusal; the manager makes dead letters of them, with the node's name.
        def recorded():
            letters = [x for _id, x in streams.dead_letters(r, count=100) if x.source == "acl"]
            return letters if sum(x.deliveries for x in letters) >= len(forbidden) else None

        letters = wait_for(recorded, 15, "the refusals to be recorded")
        assert {x.worker for x in letters} == {"acl-w1"}
        assert any("control" in x.reason for x in letters) and any("flushall" in x.reason for x in letters)
    finally:
        worker.terminate()
        worker.wait(30)
        stop.set()
        thread.join(30)
