"""Connecting to the farm's Redis (or Valkey), with errors that say the farm is not running."""

from __future__ import annotations

from typing import TYPE_CHECKING

from renderfarm.config import mask_url
from renderfarm.errors import FarmNotRunningError

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.config import Settings

NOT_RUNNING_HINT = "start it with `farm up -d`"


def connect(settings: Settings, *, check: bool = True, timeout: float = 5.0) -> Redis:
    """A Redis client for the farm; with `check`, ping it and raise FarmNotRunningError if it is down."""
    import redis

    if not settings.redis_url:
        raise FarmNotRunningError(f"the farm is not running: no Redis configured ({NOT_RUNNING_HINT})")
    tls = {}
    if settings.redis_url.startswith("rediss://") and settings.redis_ca:
        tls = {"ssl_ca_certs": settings.redis_ca}
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=max(timeout, 10.0),
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=True,
        **tls,
        **_no_client_setinfo(),
    )
    if check:
        try:
            client.ping()
        except redis.RedisError as e:
            raise FarmNotRunningError(
                f"the farm is not running: Redis at {mask_url(settings.redis_url)} does not answer "
                f"({_why(e)}); {NOT_RUNNING_HINT}"
            ) from None
    return client


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
    from urllib.parse import unquote, urlsplit

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
            if parts.password is not None:
                user = [unquote(parts.username)] if parts.username else []
                commands.append(["AUTH", *user, unquote(parts.password)])
            db = parts.path.strip("/")
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
