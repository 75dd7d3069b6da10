"""Workers on other hosts: two network namespaces reach the farm's Valkey and SeaweedFS only over a
bridge (`farm up --listen`), first directly, then through a proxy adding 100 ms each way. Both
render a 16-frame job of 2 s frames at chunk 4; the delay must cost little (target under 10 %)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import farm_env, farm_processes, run_farm, wait_for
from netns import HOST_ADDR, DelayProxy, Hosts, built, unavailable

from renderfarm.config import load_settings

WHY_NOT = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}")]

DELAY = 0.100  # seconds each way
FRAME_SECONDS = 2.0
FRAMES, CHUNK = 16, 4
TASKS = FRAMES // CHUNK
PROXY_SOURCE = "127.0.0.9"  # the proxy's connections come from here: Valkey tells them apart
OVERHEAD_BOUND = 0.20  # twice the 10 % target

# The renderer: sleeps, then writes a small PNG (zlib only, so it starts fast). Passed with -c,
# it lives in the scene: the worker hosts read nothing from this host's disk but the interpreter.
RENDER = f"""
import struct, sys, time, zlib
time.sleep({FRAME_SECONDS})
frame, out, w, h = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\\0" + bytes([frame * 15 % 256, 80, 160]) * w for _ in range(h))
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
open(out, "wb").write(png)
"""


@dataclass
class Round:
    label: str
    wall: float  # seconds from submission to the job's end, as the manager recorded them
    commands: int  # Valkey commands from every client (INFO commandstats) during the job
    worker_commands: int  # of which from the two workers (CLIENT LIST tot-cmds)
    top: list[tuple[str, int]]  # the most called commands

    @property
    def commands_per_task(self) -> float:
        return self.commands / TASKS

    @property
    def worker_commands_per_task(self) -> float:
        return self.worker_commands / TASKS


def report(test: str, **figures) -> None:
    """Print a test's measured figures on one line (shown with -s, and in CI's log on failure)."""
    text = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[network figures] {test}: {text}", file=sys.stderr)


@pytest.fixture()
def hosts():
    with built(Hosts(2)) as h:
        yield h


@pytest.fixture()
def farm(tmp_path, hosts):
    """The farm's servers and manager on this host, serving the bridge; no workers of its own."""
    state = tmp_path / "state"
    env = farm_env(state)
    try:
        run_farm("up", "-d", "--workers", "0", "--listen", HOST_ADDR, env=env, timeout=120)
        yield state, env
    finally:
        run_farm("down", env=env, check=False, timeout=120)
        left = farm_processes(state)
        assert not left, f"processes left after farm down: {left}"


def enroll_node(env: dict[str, str], name: str, folder: Path, redis_url: str, s3_url: str) -> list[str]:
    """A render node on another host: enrolled with `farm node add` (its own Valkey user, S3 keys
    and key), reaching the farm at `redis_url` and `s3_url` (directly, or through the proxy that
    delays its link); returns its worker's command line."""
    from nodekit import cli_node

    from renderfarm.enrollment import read_credentials, write_credentials

    argv = cli_node(env, name, folder)
    path = Path(argv[-1])
    credentials = read_credentials(path)
    there = urlsplit(redis_url)
    url = urlsplit(credentials.redis_url)
    credentials = credentials.model_copy(update={
        "redis_url": urlunsplit(url._replace(netloc=f"{url.netloc.rpartition('@')[0]}@{there.netloc.rpartition('@')[2]}")),
        "s3_endpoint_url": s3_url})
    write_credentials(path, credentials)
    return argv


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition(":")[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def command_scene(folder: Path) -> Path:
    scene = folder / "shot.toml"
    argv = [sys.executable, "-c", RENDER, "{frame}", "{output}", "{width}", "{height}"]
    scene.write_text(f'[render]\nwidth = 64\nheight = 36\nframes = "1-{FRAMES}"\n\n[command]\nargv = {json.dumps(argv)}\n')
    return scene


def command_calls(r) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in r.info("commandstats").items()}


def client_commands(r, addresses: set[str]) -> dict[int, int]:
    """Commands so far of each connected client whose address is one of `addresses`."""
    found = {}
    for client in r.client_list():
        if client["addr"].rpartition(":")[0] in addresses:
            found[int(client["id"])] = int(client["tot-cmds"])
    return found


def waiting(r, addresses: set[str]) -> int:
    """How many clients from `addresses` are blocked waiting on a queue (RQ's BLMOVE)."""
    return sum(1 for c in r.client_list() if c["addr"].rpartition(":")[0] in addresses and "b" in c["flags"])


def render_round(label: str, *, hosts: Hosts, farm, tmp: Path, redis_url: str, s3_url: str, sources: set[str]) -> Round:
    """Start the two workers in their namespaces, render the job, stop them; return the figures."""
    import redis

    from renderfarm import presence
    from renderfarm.config import load_settings

    state, env = farm
    settings = load_settings(env, cwd=tmp)
    r = redis.Redis.from_url(settings.redis_url)
    procs, names = [], [f"w{i + 1}" for i in range(hosts.count)]
    for i in range(hosts.count):
        node = tmp / label / f"w{i + 1}"
        node.mkdir(parents=True)
        argv = enroll_node(env, f"w{i + 1}", node, redis_url, s3_url)
        # A state directory of its own, none of the farm's settings or secrets: its credentials.
        wenv = farm_env(node / "state", FARM_ALLOW_COMMANDS="1")
        procs.append(hosts.spawn(i, argv, env=wenv, log_path=node / "worker.log", cwd=node))
    try:
        def live() -> bool:
            for i, p in enumerate(procs):
                assert p.poll() is None, f"worker w{i + 1} exited: {(tmp / label / f'w{i + 1}' / 'worker.log').read_text()[-2000:]}"
            return set(names) <= set(presence.live_workers(r)) and waiting(r, sources) == len(names)

        # Measured from when both wait on their queues: RQ's start-up takes many round trips.
        wait_for(live, 60, f"{label}: both workers waiting for work")
        time.sleep(1.0)  # the manager's next tick sees them
        before, clients_before = command_calls(r), client_commands(r, sources)
        sub = run_farm("submit", str(command_scene(tmp / label)), "--chunk", str(CHUNK), "--name", "shot",
                       "--renderer", "command", "--json", env=env, timeout=120)
        job = json.loads(sub.stdout)["id"]

        db = sqlite3.connect(f"file:{state / 'farm.db'}?mode=ro", uri=True, timeout=30)

        def row() -> tuple[str, float, float | None]:
            return db.execute("select state, submitted_at, finished_at from jobs where id = ?", (job,)).fetchone()

        wait_for(lambda: row()[0] in ("done", "failed", "cancelled"), 180, f"{label}: job {job} to finish", interval=0.1)
        after, clients_after = command_calls(r), client_commands(r, sources)
        job_state, submitted_at, finished_at = row()
        db.close()
        assert job_state == "done", f"{label}: job {job} ended {job_state}"
        check_frames(settings, job)
    finally:
        hosts.stop(procs)
        r.close()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v > 0}
    top = sorted(delta.items(), key=lambda kv: -kv[1])[:8]
    workers = sum(n - clients_before.get(cid, 0) for cid, n in clients_after.items())
    return Round(label, finished_at - submitted_at, sum(delta.values()), workers, top)


def check_frames(settings, job: str) -> None:
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    keys = sorted(o.key for o in storage.list(f"jobs/{job}/frames/"))
    assert keys == [f"jobs/{job}/frames/shot.{f:04d}.png" for f in range(1, FRAMES + 1)]
    assert storage.get_bytes(keys[-1]).startswith(b"\x89PNG")


def test_two_worker_hosts_with_and_without_100ms_each_way(hosts, farm, tmp_path):
    state, env = farm
    local = json.loads((state / "local.json").read_text())
    assert local["listen"] == HOST_ADDR
    settings = load_settings(env, cwd=tmp_path)  # nodes take only the address from the Redis URL
    redis_url, s3_url = settings.redis_url, settings.s3_endpoint_url
    assert urlsplit(redis_url).hostname == HOST_ADDR and urlsplit(s3_url).hostname == HOST_ADDR

    direct = render_round("direct", hosts=hosts, farm=farm, tmp=tmp_path, redis_url=redis_url, s3_url=s3_url,
                          sources={hosts.address(0), hosts.address(1)})

    # Valkey is reached on loopback (it binds both), so the proxy's clients stand apart from the manager's.
    valkey, s3 = ("127.0.0.1", local["valkey_port"]), (HOST_ADDR, local["s3_port"])
    proxy = DelayProxy(DELAY, HOST_ADDR, [valkey, s3], source=PROXY_SOURCE).start()
    try:
        delayed = render_round(
            "delayed", hosts=hosts, farm=farm, tmp=tmp_path, redis_url=with_port(redis_url, proxy.ports[valkey]),
            s3_url=with_port(s3_url, proxy.ports[s3]), sources={PROXY_SOURCE},
        )
    finally:
        proxy.close()

    overhead = delayed.wall / direct.wall - 1
    report(
        "2 worker hosts, 16 x 2 s frames at chunk 4",
        wall_direct_s=direct.wall, wall_100ms_s=delayed.wall, overhead_pct=overhead * 100,
        valkey_cmds_per_task_direct=direct.commands_per_task, valkey_cmds_per_task_100ms=delayed.commands_per_task,
        worker_cmds_per_task_direct=direct.worker_commands_per_task,
        worker_cmds_per_task_100ms=delayed.worker_commands_per_task,
        top_commands_100ms=" ".join(f"{k.removeprefix('cmdstat_')}:{v}" for k, v in delayed.top),
    )
    assert overhead < OVERHEAD_BOUND, f"100 ms each way cost {overhead:.1%} (direct {direct.wall:.2f} s, delayed {delayed.wall:.2f} s)"
