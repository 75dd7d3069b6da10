"""Render nodes: who each is (name, node id, signing key), the Valkey rule that confines its user to
its own keys, the sealed envelope every message between a node and the manager travels in, and
the sequence numbers that make a replayed one stale.

A node acts only as itself: it writes only its own queue's RQ keys, its own heartbeat, its own
event stream and its own live logs; it reads task leases; it runs no administrative command and
cannot read or write the manager's control stream. Messages are sealed with HMAC-SHA256 under
the node's own key, which only the node and the manager hold.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from renderfarm.errors import InputError, shown

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
# No '.' in an enrolled name: queue names, RQ ids and ACL globs built from it stay unambiguous.
NODE_ID = re.compile(r"n[0-9a-f]{8}")
REDIS_USER_PREFIX = "node-"


# What a render node's process must not hold in its environment: a renderer (or anyone who may
# read /proc/PID/environ) would find the farm's own passwords there. A node has its credentials file.
SECRET_VARS = ("FARM_REDIS_URL", "FARM_DATABASE_URL", "RQ_REDIS_URL", "REDISCLI_AUTH", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "FARM_WEBHOOK_SECRET")


# How a worker exits when the farm refuses its credentials (revoked, or enrolled again): starting
# it again would only be refused again (the systemd unit's RestartPreventExitStatus, the supervisor).
TURNED_AWAY_EXIT = 78  # EX_CONFIG


def check_node_name(name: str) -> str:
    """An enrolled node's name: letters, digits, '_' and '-', up to 48, starting with a letter or digit."""
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise InputError(f"node: {shown(name)} is not a node name (letters, digits, '_' and '-', up to 48)")
    return name


def new_node_id() -> str:
    """A node's short id, for the RQ ids of its jobs and workers (RQ allows no '.')."""
    return "n" + secrets.token_hex(4)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def redis_user(name: str) -> str:
    return REDIS_USER_PREFIX + name


def node_of_user(user: str) -> str | None:
    """The node a Valkey user is, or None for anyone else (the manager, an admin)."""
    name = user.removeprefix(REDIS_USER_PREFIX)
    return name if user.startswith(REDIS_USER_PREFIX) and NODE_NAME.fullmatch(name) else None


def password_digest(password: str) -> str:
    """Valkey's `#<sha256>` form: the manager keeps no node password, only this."""
    return hashlib.sha256(password.encode()).hexdigest()


# The commands a node needs: RQ's worker loop (lists, hashes, sets, sorted sets, its scripts),
# heartbeats, leases, events, live logs. Everything else is refused, and so are these for keys
# that are not the node's own.
NODE_COMMANDS = (
    "ping", "hello", "auth", "client|setname", "client|setinfo", "client|id", "client|info", "select", "info",
    "get", "set", "del", "unlink", "exists", "expire", "pexpire", "persist", "ttl", "pttl", "type",
    "lpush", "rpush", "lpop", "rpop", "lmove", "blmove", "lrem", "lrange", "llen", "lpos", "lindex",
    "hset", "hget", "hgetall", "hmget", "hdel", "hexists", "hincrby", "hincrbyfloat", "hkeys", "hlen", "hsetnx",
    "sadd", "srem", "smembers", "sismember", "scard",
    "zadd", "zrem", "zrange", "zrangebyscore", "zremrangebyscore", "zcard", "zscore", "zcount",
    "xadd", "multi", "exec", "discard", "watch", "unwatch", "eval", "evalsha", "script|load",
    "subscribe", "unsubscribe",
)


def acl_rule(name: str, node_id: str, digest: str) -> list[str]:
    """The arguments of `ACL SETUSER node-NAME ...` for one node: its own keys and channels, the
    commands a worker runs, nothing else."""
    check_node_name(name)
    if not NODE_ID.fullmatch(node_id):
        raise InputError(f"node id {shown(node_id)} is not n + 8 hex digits")
    queue = f"farm.worker.{name}"
    keys = [
        f"~rq:queue:{queue}", f"~rq:queue:{queue}:intermediate", f"~rq:*:{queue}",
        f"~rq:worker:{node_id}.*", f"~rq:job:{node_id}-*", f"~rq:job::{node_id}-*", f"~rq:executions:{node_id}-*",
        f"~rq:execution:{node_id}-*",
        f"~rq:results:{node_id}-*", "%R~rq:suspended",
        "%R~farm:lease:*", f"~farm:events:{name}", f"~farm:hb:{name}", f"~farm:log:{name}:*",
    ]
    return ["reset", "on", f"#{digest}", "resetkeys", "resetchannels", *keys, f"&rq:pubsub:{node_id}.*",
            "-@all", *(f"+{c}" for c in NODE_COMMANDS), SHARED_SETS]


# RQ's registries every worker shares: a node may add itself and its queue, take itself out and
# list them (what RQ's worker does), never delete, rename or overwrite them (a selector of its own).
SHARED_SETS = "(~rq:queues ~rq:workers -@all +sadd +srem +smembers +sismember +scard)"


# -- sealing --------------------------------------------------------------------------------------


def seal_mac(key: bytes, node: str, seq: int, body: str) -> str:
    """HMAC-SHA256 of one message under a node's key: the node's name, its sequence number and the
    message itself, so that none of the three can be changed or moved to another."""
    return hmac.new(key, f"{node}\n{seq}\n{body}".encode(), hashlib.sha256).hexdigest()


def key_bytes(key: str) -> bytes:
    return key.encode()


@dataclass
class Sequence:
    """Strictly increasing numbers for one node's messages, across its restarts: microseconds of
    the clock, never below the last number handed out (kept in `path`, when given, a second ahead
    at a time), so a replayed message is always older than the newest one seen."""

    path: Path | None = None
    _last: int = 0
    _reserved: int = 0

    def __post_init__(self) -> None:
        if self.path is not None:
            try:
                self._last = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                self._last = 0

    def next(self) -> int:
        value = max(self._last + 1, time.time_ns() // 1000)
        self._last = value
        if self.path is not None and value >= self._reserved:
            self._reserved = value + 1_000_000
            try:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(str(self._reserved))
                os.replace(tmp, self.path)
            except OSError:  # a full disk: the clock alone keeps the numbers rising
                pass
        return value
