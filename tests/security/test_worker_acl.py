"""The README's least-privilege Redis ACL for workers is enough to render, and keeps a worker's
credentials away from the manager's control stream and from server administration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from conftest import EXAMPLES, ROOT, s3_settings, wait_for

from renderfarm import keys, presence
from renderfarm.client import Submission, submit
from renderfarm.config import settings_env, with_overrides
from renderfarm.db import make_engine, session_scope
from renderfarm.manager import Manager
from renderfarm.redisconn import connect
from renderfarm.status import job_status, resolve_job

pytestmark = pytest.mark.slow


def readme_worker_acl() -> str:
    """The ACL rule for workers, exactly as the README gives it."""
    text = (ROOT / "README.md").read_text()
    rule = re.search(r"^ACL SETUSER farm-worker (.+)$", text, re.M)
    assert rule, "the README has no `ACL SETUSER farm-worker ...` line"
    return rule.group(1)


def test_a_worker_renders_with_the_readme_acl(tmp_path, valkey, seaweed):
    admin = redis.Redis(port=valkey.port, password=valkey.password)
    admin.flushall()
    rule = readme_worker_acl().replace("<password>", "worker-pw")
    admin.execute_command("ACL", "SETUSER", "farm-worker", "reset", *rule.split())
    try:
        manager_url = f"redis://:{valkey.password}@127.0.0.1:{valkey.port}/0"
        settings = s3_settings(seaweed, tmp_path / "state", "acl" + os.urandom(4).hex(), FARM_REDIS_URL=manager_url,
                               FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.db'}", FARM_HEARTBEAT_TTL="3")
        worker_settings = with_overrides(settings, redis_url=f"redis://farm-worker:worker-pw@127.0.0.1:{valkey.port}/0")
        limited = connect(worker_settings)
        for forbidden in (lambda: limited.xadd(keys.CONTROL_STREAM, {"d": "{}"}), limited.flushall,
                          lambda: limited.set(keys.MANAGER_LEADER, "me"), lambda: limited.config_get("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()

        stop = threading.Event()
        thread = threading.Thread(target=Manager(settings, poll_ms=50).run, args=(stop,), daemon=True)
        thread.start()
        env = {**os.environ, **settings_env(worker_settings)}
        log = Path(tmp_path / "worker.log")
        worker = subprocess.Popen([sys.executable, "-m", "renderfarm_worker", "--name=acl-w1"], env=env,
                                  stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            r = connect(settings)
            wait_for(lambda: "acl-w1" in presence.live_workers(r), 30, "the worker to beat")
            job = submit(settings, Submission(scene=EXAMPLES / "orbit.toml", frames="1-3"))
            engine = make_engine(settings.database_url)

            def done():
                with session_scope(engine) as s:
                    return job_status(s, resolve_job(s, job)).state == "done"

            wait_for(done, 60, "the job")
            engine.dispose()
            assert "NOPERM" not in log.read_text() and "NoPermission" not in log.read_text(), log.read_text()[-2000:]
        finally:
            worker.terminate()
            worker.wait(30)
            stop.set()
            thread.join(30)
    finally:
        admin.execute_command("ACL", "DELUSER", "farm-worker")
