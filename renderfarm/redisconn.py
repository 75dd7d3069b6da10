"""Connecting to the farm's Redis (or Valkey), with errors that say the farm is not running, and a
socket timeout that suits each command: a blocking one is given as long as it may block."""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from renderfarm.config import mask_url
from renderfarm.errors import FarmNotRunningError

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.config import Settings

NOT_RUNNING_HINT = "start it with `farm up -d`"
# How long an ordinary command's reply may take: more means Redis is gone or stuck (a reply over a
# long link takes a fraction of a second). A blocking command may take its own wait on top.
COMMAND_TIMEOUT = 10.0
# A TCP connection that has heard nothing for 30 s is probed every 5 s and dropped after 3 probes
# go unanswered, or once data it sent has gone unacknowledged for 45 s: a Redis whose host
# vanished is noticed within a minute, even by a call that would block for minutes.
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 45_000}


def connect(settings: Settings, *, check: bool = True, timeout: float = 5.0) -> Redis:
    """A Redis client for the farm; with `check`, ping it and raise FarmNotRunningError if it is down.
    `timeout` bounds connecting; a reply may take COMMAND_TIMEOUT (or `timeout`, if longer), and
    a blocking command's reply as long as the command may block on top of that."""
    import redis

    if not settings.redis_url:
        raise FarmNotRunningError(f"the farm is not running: no Redis configured ({NOT_RUNNING_HINT})")
    scheme = settings.redis_url.split("://", 1)[0].lower()
    tls = {}
    if scheme == "rediss" and settings.redis_ca:
        tls = {"ssl_ca_certs": settings.redis_ca}
    client = redis.Redis.from_url(
        settings.redis_url,
        connection_class=_timed_connection_class(scheme),
        socket_timeout=max(timeout, COMMAND_TIMEOUT),
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=True,
        **_keepalive(scheme),
        **tls,
        **_no_client_setinfo(),
    )
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as e:  # it answers, but not to these credentials
            raise FarmNotRunningError(
                f"Redis at {mask_url(settings.redis_url)} refuses these credentials ({_why(e)}); a render "
                "node revoked or enrolled again needs the credentials file `farm node add NAME` writes"
            ) from None
        except redis.RedisError as e:
            raise FarmNotRunningError(
                f"the farm is not running: Redis at {mask_url(settings.redis_url)} does not answer "
                f"({_why(e)}); {NOT_RUNNING_HINT}"
            ) from None
    return client


# How long a connection waits for its next reply, where it is not `socket_timeout`.
_ORDINARY, _FOREVER = object(), object()


class BlockingCallTimeouts:
    """A Redis connection (mixed into redis-py's own classes) whose socket timeout suits the
    command it waits on. With one timeout for all, either a blocking call outlived it (RQ's
    405 s dequeue on a 10 s socket ended in a TimeoutError that RQ took for a lost Redis, and
    backed off up to a minute while tasks waited) or a Redis that stopped answering went unnoticed
    as long as the longest wait. So an ordinary command waits `socket_timeout` for its reply and
    a blocking one that much more than it may block; one that blocks until it has an answer waits
    without a timeout, TCP keepalive standing guard. A blocking command inside a pipeline (none
    of ours is) waits `socket_timeout` only: redis-py sends a pipeline without `send_command`."""

    _reply_wait: object = _ORDINARY

    def send_command(self, *args, **kwargs):
        super().send_command(*args, **kwargs)
        # Set once sent: sending may first run redis-py's health check, a PING of its own.
        held = blocking_seconds(args)
        if held == 0 or self.socket_timeout is None:
            self._reply_wait = _ORDINARY
        else:
            self._reply_wait = _FOREVER if held is None else held + self.socket_timeout

    def read_response(self, *args, **kwargs):
        wait, self._reply_wait = self._reply_wait, _ORDINARY
        sock = self._sock
        if wait is _ORDINARY or sock is None:
            return super().read_response(*args, **kwargs)
        sock.settimeout(None if wait is _FOREVER else wait)
        try:
            return super().read_response(*args, **kwargs)
        finally:
            if self._sock is sock:  # still connected: back to the ordinary timeout
                sock.settimeout(self.socket_timeout)


# Where each blocking command names its wait: the last argument, the first one, or a BLOCK option.
_WAIT_LAST_SECONDS = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX"})
_WAIT_FIRST_SECONDS = frozenset({"BLMPOP", "BZMPOP"})
_WAIT_LAST_MS = frozenset({"WAIT", "WAITAOF"})


def blocking_seconds(command: Sequence) -> float | None:
    """How long Redis may hold its reply to `command` (name, then arguments) before answering:
    0 for a command that does not block, None for one that blocks until it has an answer."""
    if not command:
        return 0.0
    name = _word(command[0])
    try:
        if name in _WAIT_LAST_SECONDS:
            held = float(command[-1])
        elif name in _WAIT_FIRST_SECONDS:
            held = float(command[1])
        elif name in _WAIT_LAST_MS:
            held = float(command[-1]) / 1000
        elif name in ("XREAD", "XREADGROUP"):
            block = _block_option(command[4:] if name == "XREADGROUP" else command[1:])  # past GROUP g c
            if block is None:
                return 0.0
            held = float(block) / 1000
        else:
            return 0.0
    except (IndexError, TypeError, ValueError):  # Redis refuses such a command at once
        return 0.0
    if held == 0:
        return None
    return held if 0 < held < 1e9 else 0.0  # negative, NaN or endless: refused at once


def _block_option(options: Sequence) -> object | None:
    """XREAD's BLOCK value (milliseconds), None without one; its options end at STREAMS."""
    for i, option in enumerate(options):
        word = _word(option)
        if word == "STREAMS":
            return None
        if word == "BLOCK":
            return options[i + 1]
    return None


def _word(arg: object) -> str:
    return (arg.decode(errors="replace") if isinstance(arg, (bytes, bytearray)) else str(arg)).upper()


@functools.cache
def _timed_connection_class(scheme: str) -> type:
    """redis-py's connection class for this URL scheme, with BlockingCallTimeouts mixed in."""
    import redis

    base = {"rediss": redis.SSLConnection, "unix": redis.UnixDomainSocketConnection}.get(scheme, redis.Connection)
    return type(f"Timed{base.__name__}", (BlockingCallTimeouts, base), {"__module__": __name__})


def times_blocking_calls(client: Redis) -> bool:
    """Whether `client`'s connections give each blocking call its own timeout (made by connect)."""
    return issubclass(client.connection_pool.connection_class, BlockingCallTimeouts)


def _keepalive(scheme: str) -> dict:
    """TCP keepalive for TCP connections (a Unix socket has none, and needs none)."""
    if scheme == "unix":
        return {}
    options = {getattr(socket, name): value for name, value in KEEPALIVE.items() if hasattr(socket, name)}
    return {"socket_keepalive": True, "socket_keepalive_options": options}


def _no_client_setinfo() -> dict:
    """redis-py names itself with two CLIENT SETINFO round trips on every new connection, one
    after the other: on a long link that is 400 ms more each time a pool grows. Nothing reads it."""
    try:
        import redis.driver_info  # noqa: F401  (redis >= 7: driver_info=None turns it off)
    except ImportError:
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


def _why(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def probe(settings: Settings, timeout: float = 1.0) -> tuple[bool, bool]:
    """(Redis answers, a manager holds the leader lock), asked over a bare socket: the CLI's
    read-only commands say whether the farm runs without importing a Redis client."""
    import socket
    from urllib.parse import parse_qs, unquote, urlsplit

    from renderfarm.keys import MANAGER_LEADER

    url = settings.redis_url
    if not url:
        return False, False
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
        else:
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout)
            if parts.scheme == "rediss":
                import ssl

                context = ssl.create_default_context(cafile=settings.redis_ca)
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        with sock:
            commands = []
            # As redis-py reads them: the user info's user and password, else ?username= and
            # ?password=; the database from ?db=, else the path.
            query = {name: values[0] for name, values in parse_qs(parts.query).items()}
            user = unquote(parts.username) if parts.username else query.get("username")
            password = unquote(parts.password) if parts.password else query.get("password")
            if password is not None:
                commands.append(["AUTH", *([user] if user else []), password])
            db = query.get("db") or ("" if parts.scheme == "unix" else unquote(parts.path).strip("/"))
            if db and db != "0":
                commands.append(["SELECT", db])
            commands.append(["EXISTS", MANAGER_LEADER])
            sock.sendall(b"".join(_resp(c) for c in commands))
            replies = _read_replies(sock, len(commands))
    except (OSError, ValueError):
        return False, False
    if any(r.startswith(b"-") for r in replies):
        return False, False
    return True, replies[-1] == b":1"


def _resp(args: list[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        data = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_replies(sock, count: int) -> list[bytes]:
    """`count` one-line RESP replies (+OK, :1, -ERR...)."""
    buffer = b""
    while buffer.count(b"\r\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("connection closed")
        buffer += chunk
    return buffer.split(b"\r\n")[:count]
