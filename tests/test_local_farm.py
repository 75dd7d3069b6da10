"""End to end on the embedded local farm, through the installed `farm` command: submit, status,
the real AWS CLI against the farm's S3, down and up again, and bad input refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, EXAMPLES, farm_env, farm_processes, run_farm, wait_job

pytestmark = pytest.mark.slow

SHOT = EXAMPLES / "orbit.toml"


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A detached local farm with 2 workers in a state directory of its own."""
    state = tmp_path_factory.mktemp("farm") / "state"
    env = farm_env(state)
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    yield state, env
    run_farm("down", env=env, check=False, timeout=120)
    left = farm_processes(state)
    assert not left, f"processes left after farm down: {left}"


def last_intent(env: dict) -> bytes:
    """The id of the last entry ever added to the control stream (the manager trims what it applied)."""
    from renderfarm.config import load_settings
    from renderfarm.keys import CONTROL_STREAM
    from renderfarm.redisconn import connect

    return connect(load_settings(env)).xinfo_stream(CONTROL_STREAM)["last-generated-id"]


def job_count(state: Path) -> int:
    with sqlite3.connect(state / "farm.db") as db:
        return db.execute("select count(*) from jobs").fetchone()[0]


def test_submit_status_aws_cli_and_restart(farm, tmp_path):
    state, env = farm
    sub = run_farm("submit", str(SHOT), "--frames", "1-48x2", "--chunk", "4", "--json", env=env)
    job = json.loads(sub.stdout)
    job_id = job["id"]
    assert job["frames"] == 24 and job["tasks"] == 6

    wait_job(env, job_id, ("done", "failed"), 120)
    status = json.loads(run_farm("status", job_id[:5], "--json", env=env).stdout)
    assert status["state"] == "done", status
    assert (status["frames"], status["tasks"], status["frames_done"]) == (24, 6, 24)
    assert status["counts"]["done"] == 6

    # The real AWS CLI, pointed at the farm by `farm env`, lists the promoted frames.
    exports = run_farm("env", env=env).stdout
    shell = f'eval "$({BIN / "farm"} env)"; "{BIN / "aws"}" s3 ls --recursive s3://renderfarm/jobs/{job_id}/frames/'
    listing = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    names = sorted(line.split()[-1].rsplit("/", 1)[-1] for line in listing.stdout.splitlines() if line.strip())
    assert names == [f"orbit.{f:04d}.png" for f in range(1, 49, 2)]
    assert "AWS_SECRET_ACCESS_KEY" in exports and "REDISCLI_AUTH" not in exports

    # State survives down and up: the job is still listed as done.
    run_farm("down", env=env, timeout=120)
    assert not farm_processes(state)
    down_jobs = run_farm("jobs", "--json", env=env)
    assert "not running" in down_jobs.stderr
    assert any(j["id"] == job_id and j["state"] == "done" for j in json.loads(down_jobs.stdout))
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    jobs = json.loads(run_farm("jobs", "--json", env=env).stdout)
    assert any(j["id"] == job_id and j["state"] == "done" for j in jobs)

    tasks = json.loads(run_farm("tasks", job_id, "--json", env=env).stdout)
    assert [t["frames"] for t in tasks] == ["1-7x2", "9-15x2", "17-23x2", "25-31x2", "33-39x2", "41-47x2"]
    assert all(t["worker"] and t["state"] == "done" for t in tasks)

    dest = tmp_path / "frames"
    run_farm("download", job_id, str(dest), env=env)
    assert len(list(dest.glob("orbit.*.png"))) == 24


BAD_INPUTS = [
    (["--frames", "10-1"], "frames: '10-1' runs backwards"),
    (["--frames", "abc"], "frames: 'abc' is not a frame spec"),
    (["--frames", "1-100000000"], "frames: '1-100000000'"),
    (["--chunk", "0"], "chunk: 0 should be greater than or equal to 1"),
    (["--frames", "1-10000000", "--chunk", "1000000000"],
     "chunk: 1000000000 frames a task is over the farm's cap of 1000 (set FARM_MAX_TASK_FRAMES or max_task_frames in "
     "farm.toml to raise it)"),
    (["--max-workers", "99999999999999999999999"],
     "max_workers: 99999999999999999999999 should be less than or equal to 10000"),
    (["--priority", "lots"], "priority: 'lots'"),
    (["--renderer", "maya"], "renderer: 'maya' is not one of"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[a[1] for a, _ in BAD_INPUTS])
def test_bad_submissions_are_one_line_and_enqueue_nothing(farm, args, message):
    state, env = farm
    before, sent = job_count(state), last_intent(env)
    proc = run_farm("submit", str(SHOT), *args, env=env, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr
    assert job_count(state) == before
    assert last_intent(env) == sent  # refused before anything was sent


def test_bad_scene_files_name_the_problem(farm, tmp_path):
    state, env = farm
    before = job_count(state)
    missing = run_farm("submit", str(tmp_path / "nope.toml"), env=env, check=False)
    assert missing.returncode != 0 and "nope.toml does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    broken = tmp_path / "broken.toml"
    text = SHOT.read_text().replace("width = 320", "width = \"wide\"")
    assert text != SHOT.read_text()
    broken.write_text(text)
    proc = run_farm("submit", str(broken), env=env, check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "width" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert job_count(state) == before


def test_submit_without_a_farm_says_how_to_start_it(tmp_path):
    env = farm_env(tmp_path / "nowhere")
    proc = run_farm("submit", str(SHOT), env=env, check=False)
    assert proc.returncode != 0
    assert "farm up" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    shutil.rmtree(tmp_path / "nowhere", ignore_errors=True)


def test_no_port_is_another_servers_grpc_port(tmp_path):
    """SeaweedFS opens each port's gRPC twin at port + 10000: a volume port that is the S3 port's
    twin left S3 unstarted (seen here). Ports recorded that way are chosen again at start."""
    from renderfarm.config import load_settings
    from renderfarm.localfarm import LocalFarm

    state = tmp_path / "state"
    state.mkdir()
    taken = {"valkey_port": 31001, "s3_port": 31002, "weed_master": 31003, "weed_volume": 41002,
             "weed_filer": 31005, "weed_admin": 31006}
    (state / "local.json").write_text(json.dumps(taken))
    farm = LocalFarm(load_settings(farm_env(state), cwd=tmp_path))
    local = farm._local_settings({"valkey", "seaweedfs"}, "127.0.0.1")
    ports = [local[k] for k in taken]
    assert len(set(ports) | {p + 10000 for p in ports}) == 2 * len(ports), local
    assert local["valkey_port"] == 31001 and local["weed_master"] == 31003  # the others are kept


def test_chosen_ports_lie_outside_the_kernels_ephemeral_range(tmp_path):
    """A port from the ephemeral range can be taken by any outgoing connection between our choice
    and the server's bind: CI's SeaweedFS once failed to start, "port 54111 for Filer is not
    available". Fresh ports, and their gRPC twins, come from outside that range."""
    from renderfarm.config import load_settings
    from renderfarm.localfarm import LocalFarm, services

    low, high = services.ephemeral_range()
    state = tmp_path / "state"
    state.mkdir()
    local = LocalFarm(load_settings(farm_env(state), cwd=tmp_path))._local_settings({"valkey", "seaweedfs"}, "127.0.0.1")
    ports = [v for k, v in local.items() if k.endswith("_port") or k.startswith("weed_")]
    assert len(ports) == 6 and len(set(ports)) == 6, local
    assert not [p for p in ports for q in (p, p + 10000) if low <= q <= high], (low, high, local)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("farmhost", "--listen: 'farmhost' is not an IP address"),
        ("0.0.0.0", "--listen: 0.0.0.0 is a wildcard"),
        ("192.0.2.77", "--listen: 192.0.2.77 is not an address of this host"),
    ],
)
def test_listen_must_be_one_address_of_this_host(tmp_path, listen, message):
    state = tmp_path / "state"
    proc = run_farm("up", "-d", "--listen", listen, env=farm_env(state), check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not state.exists()


def test_listen_on_another_address_with_no_workers(tmp_path):
    """127.0.0.2 stands in for the address other hosts reach (any 127/8 address is this host's):
    the farm's URLs name it, Valkey answers there and on loopback, S3 there, and no worker runs."""
    import redis

    from renderfarm.config import load_settings
    from renderfarm.storage import open_storage

    state = tmp_path / "state"
    env = farm_env(state)
    try:
        run_farm("up", "-d", "--workers", "0", "--listen", "127.0.0.2", env=env, timeout=120)
        exports = run_farm("env", env=env).stdout
        settings = load_settings(env, cwd=tmp_path)
        assert "@127.0.0.2:" in settings.redis_url and settings.s3_endpoint_url.startswith("http://127.0.0.2:")
        assert f"FARM_S3_ENDPOINT_URL={settings.s3_endpoint_url}" in exports
        local = json.loads((state / "local.json").read_text())
        for host in ("127.0.0.2", "127.0.0.1"):
            assert redis.Redis(host=host, port=local["valkey_port"], password=local["valkey_password"]).ping()
        storage = open_storage(settings)
        storage.put_bytes("listen-probe", b"ok")
        assert storage.get_bytes("listen-probe") == b"ok"
        roles = [p["role"] for p in json.loads((state / "run.json").read_text())["processes"]]
        assert sorted(roles) == ["manager", "valkey", "weed", "weed"]  # weed mini on loopback, its S3 gateway
        moved = run_farm("up", "-d", "--workers", "1", "--listen", "127.0.0.3", env=env, check=False)
        assert moved.returncode != 0 and "already listen on 127.0.0.2" in moved.stderr
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)
