"""The manager's leader lock in Redis: one manager writes; a second one waits its turn."""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

from renderfarm import keys

if TYPE_CHECKING:
    from redis import Redis

# Renew only if we still hold it; a plain SET could steal a lock that expired and moved on.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaderLock:
    """A Redis lock with a time to live, renewed by its holder while it lives."""

    def __init__(self, r: Redis, ttl: float = 10.0) -> None:
        self.r = r
        self.ttl_ms = int(ttl * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self) -> bool:
        return bool(self.r.set(keys.MANAGER_LEADER, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """Extend our hold; False means we lost the lock (it expired, or Redis was wiped)."""
        if self.r.eval(_RENEW, 1, keys.MANAGER_LEADER, self.token, self.ttl_ms):
            return True
        return self.acquire()

    def release(self) -> None:
        self.r.eval(_RELEASE, 1, keys.MANAGER_LEADER, self.token)

    def holder(self) -> str | None:
        value = self.r.get(keys.MANAGER_LEADER)
        return value.decode() if value is not None else None
