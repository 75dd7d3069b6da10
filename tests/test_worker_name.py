"""A worker refuses to start as a node whose worker is alive already, and only then."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import redis
from renderfarm_worker.daemon import _check_name_free

from renderfarm import presence
from renderfarm.errors import RenderFarmError
from renderfarm.wire import Heartbeat, Sealed

NAME = "name-check"


def _beat(r: redis.Redis, pid: int, host: str | None = None) -> None:
    beat = Heartbeat(name=NAME, host=host or socket.gethostname(), pid=pid)
    presence.beat(r, NAME, Sealed.seal(beat, node=NAME, seq=1, key="k" * 64).to_json(), 30.0)


@pytest.fixture()
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_a_fresh_heartbeat_of_a_live_worker_refuses_the_name(r: redis.Redis) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            _beat(r, alive.pid)
            with pytest.raises(RenderFarmError, match="alive already"):
                _check_name_free(r, NAME)
            _beat(r, alive.pid, host="another-host")  # another host's process cannot be looked at
            with pytest.raises(RenderFarmError, match="alive already on another-host"):
                _check_name_free(r, NAME)
        finally:
            alive.kill()


def test_the_heartbeat_of_a_killed_worker_on_this_host_does_not(r: redis.Redis) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _beat(r, gone.pid)
    _check_name_free(r, NAME)


def test_a_killed_worker_nobody_has_reaped_yet_does_not_either(r: redis.Redis) -> None:
    """kill -9 of a worker whose parent left: it stays a zombie until init reaps it, and a signal
    0 still reaches a zombie (the local farm's worker came back refused, over and over)."""
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        zombie.kill()
        # Not reaped: wait until the kernel shows it as a zombie.
        for _ in range(500):
            with open(f"/proc/{zombie.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        else:
            pytest.fail("the killed child never became a zombie")
        _beat(r, zombie.pid)
        _check_name_free(r, NAME)
    finally:
        zombie.wait()
