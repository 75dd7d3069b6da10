"""`farm up --listen ADDR` exposes only endpoints that check credentials: Valkey (ACL users) and the
S3 gateway (signed requests). Every TCP port the farm's processes listen on at ADDR (127.0.0.2
here: a loopback address, so what binds 127.0.0.1 is not on it) is tried without credentials:
HTTP reads, writes and deletes of objects, SeaweedFS's `/dir/assign` and filer listings, Redis
PING and KEYS, and gRPC (HTTP/2 in the clear, or over TLS without a client certificate). None
may answer. The farm still works for a worker given only what `farm env` prints."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_for

pytestmark = pytest.mark.slow

LISTEN = "127.0.0.2"
SECRET = b"listen-probe: only signed requests may read this"
KEY = "listen-probe.txt"  # in the farm's bucket, written with the farm's own keys
TIMEOUT = 3.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)  # and an empty SETTINGS frame
# What an intruder tries on each port: S3 paths, the filer's paths, the master's and volumes'.
HTTP_PROBES = [
    ("GET", "/"),
    ("GET", "/?pretty=y"),
    ("GET", "/dir/assign"),
    ("POST", "/dir/assign"),
    ("GET", "/dir/status"),
    ("GET", "/cluster/status"),
    ("GET", "/status"),
    ("GET", "/renderfarm/"),
    ("GET", f"/renderfarm/{KEY}"),
    ("GET", "/buckets/renderfarm/?pretty=y"),
    ("GET", f"/buckets/renderfarm/{KEY}"),
    ("PUT", "/renderfarm/intruder.txt"),
    ("POST", "/buckets/renderfarm/intruder.txt"),
    ("POST", "/submit"),
    ("DELETE", f"/renderfarm/{KEY}"),
    ("DELETE", f"/buckets/renderfarm/{KEY}"),
]


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    state = tmp_path_factory.mktemp("listen") / "state"
    env = farm_env(state)
    try:
        run_farm("up", "-d", "--workers", "0", "--listen", LISTEN, env=env, timeout=180)
        yield state, env
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)


def farm_pids(state: Path) -> set[int]:
    run = json.loads((state / "run.json").read_text())
    procs = run["processes"] + ([run["supervisor"]] if run.get("supervisor") else [])
    return {p["pid"] for p in procs}


def ports_on(address: str, pids: set[int]) -> list[int]:
    """The TCP ports these processes listen on that `address` reaches: bound to it, or to a
    wildcard (read from /proc/net/tcp*, matched to the processes by socket inode)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    word = socket.inet_aton(address)[::-1].hex().upper()  # /proc/net/tcp writes little-endian words
    reached = {word, "00000000", "0" * 32, "0000000000000000FFFF0000" + word}  # tcp4, wildcards, tcp6
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            host, port = local.split(":")
            if state == "0A" and inode in inodes and host in reached:  # 0A: LISTEN
                ports.add(int(port, 16))
    return sorted(ports)


def http_answer(port: int, method: str, path: str) -> tuple[int, bytes] | None:
    """The status and body of a request without credentials; None if the port did not answer HTTP."""
    conn = http.client.HTTPConnection(LISTEN, port, timeout=TIMEOUT)
    try:
        body = b"intruder" if method in ("PUT", "POST") else None
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read(65536)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def raw_reply(port: int, data: bytes, *, tls: bool = False) -> bytes:
    """The first bytes a port sends back to `data` ('' when it closes, times out or refuses TLS)."""
    try:
        sock = socket.create_connection((LISTEN, port), timeout=TIMEOUT)
    except OSError:
        return b""
    try:
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock)
        sock.sendall(data)
        return sock.recv(64)
    except (OSError, ssl.SSLError):
        return b""
    finally:
        sock.close()


def is_http2_settings(reply: bytes) -> bool:
    return len(reply) >= 9 and reply[3] == 0x4


def open_doors(port: int) -> list[str]:
    """What this port does for someone with no credentials."""
    found = []
    for method, path in HTTP_PROBES:
        answer = http_answer(port, method, path)
        if answer is None:
            continue
        status, body = answer
        health_check = method == "GET" and status == 200 and not body  # S3's /status: tells nothing
        if (status < 400 and not health_check) or SECRET in body:
            found.append(f"{method} {path} -> {status} {body[:80]!r}")
    for command in (b"*1\r\n$4\r\nPING\r\n", b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n"):
        reply = raw_reply(port, command)
        if reply.startswith((b"+", b"*", b"$", b"%")):  # RESP success, array, string or map
            found.append(f"redis {command.split()[-1].decode()} -> {reply[:40]!r}")
    if is_http2_settings(raw_reply(port, HTTP2_PREFACE)):
        found.append("gRPC (HTTP/2) in the clear")
    if is_http2_settings(raw_reply(port, HTTP2_PREFACE, tls=True)):
        found.append("gRPC (HTTP/2) over TLS without a client certificate")
    return found


def test_listen_exposes_only_authenticated_endpoints(farm):
    import redis

    from renderfarm.config import load_settings
    from renderfarm.storage import open_storage

    state, env = farm
    settings = load_settings(env, cwd=state.parent)
    storage = open_storage(settings)
    storage.put_bytes(KEY, SECRET)  # signed: the farm's own keys work at ADDR
    local = json.loads((state / "local.json").read_text())
    ports = ports_on(LISTEN, farm_pids(state))
    assert local["valkey_port"] in ports and local["s3_port"] in ports, ports

    print(f"\nports the farm listens on at {LISTEN}: {ports}", file=sys.stderr)
    doors = {port: found for port in ports if (found := open_doors(port))}
    assert not doors, "ports on 127.0.0.2 that answer without credentials:\n" + "\n".join(
        f"  {port}: {'; '.join(found)}" for port, found in doors.items())

    assert storage.get_bytes(KEY) == SECRET, "the object was changed or deleted without credentials"
    valkey = {"host": LISTEN, "port": local["valkey_port"]}
    assert redis.Redis(**valkey, password=local["valkey_password"]).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(**valkey, password="guessed").ping()
    assert forged_read(local["s3_port"], local["s3_access_key"]) == 403


def forged_read(port: int, access_key: str) -> int:
    """The status of an S3 read signed with the farm's access key and a wrong secret."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=f"http://{LISTEN}:{port}", region_name="us-east-1",
                          aws_access_key_id=access_key, aws_secret_access_key="guessed" * 5,
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    try:
        client.get_object(Bucket="renderfarm", Key=KEY)
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    return 200


def test_an_enrolled_node_renders_through_the_gateway(farm, tmp_path):
    """`farm node add` gives the node the --listen address, its own Valkey user and S3 keys."""
    from nodekit import cli_node

    _, env = farm
    node = tmp_path / "node"
    node.mkdir()
    argv = [*cli_node(env, "listen-node", node), f"--scratch={node / 'scr'}"]
    node_only = farm_env(node / "state")  # a state directory of its own, none of the farm's settings
    with (node / "worker.log").open("wb") as log:
        worker = subprocess.Popen(argv, env=node_only, cwd=node, stdout=log, stderr=subprocess.STDOUT)
    def joined_or_exited() -> bool:
        return worker.poll() is not None or "listen-node" in run_farm("workers", env=env).stdout

    try:
        wait_for(joined_or_exited, 30, "the worker to join")
        assert worker.poll() is None, (node / "worker.log").read_text()
        submitted = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-2", "--wait",
                             "--json", env=env, timeout=120)
        job = json.loads(submitted.stdout)
        assert job["state"] == "done", submitted.stdout + (node / "worker.log").read_text()
        tasks = json.loads(run_farm("tasks", job["id"], "--json", env=env).stdout)
        assert {t["worker"] for t in tasks} == {"listen-node"}
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
