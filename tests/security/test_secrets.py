"""Secrets stay secret: a canary Redis password and S3 secret key never reach a log, a task log,
Valkey's data files, the database, a process's command line or a renderer's environment; and the
embedded servers refuse clients without the generated credentials."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_job

from renderfarm.config import load_settings
from renderfarm.localfarm import services
from renderfarm.storage import open_storage

pytestmark = pytest.mark.slow

REDIS_CANARY = "canary-redis-Zq81xKp3"
S3_CANARY = "canary-s3-Wm52rTy9Lq"

DUMP_ENV = """
import json, os, sys
from PIL import Image
frame, out, w, h, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
open(os.path.join(folder, f"env-{frame}.json"), "w").write(json.dumps(dict(os.environ)))
Image.new("RGB", (w, h)).save(out)
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    state = root / "state"
    state.mkdir(mode=0o700)
    ports = services.free_ports(6)
    local = {
        "valkey_password": REDIS_CANARY, "s3_access_key": "RFCANARYKEY", "s3_secret_key": S3_CANARY,
        "valkey_port": ports[0], "s3_port": ports[1], "weed_master": ports[2], "weed_volume": ports[3],
        "weed_filer": ports[4], "weed_admin": ports[5],
    }
    services.write_private(state / "local.json", json.dumps(local))
    env = farm_env(state, FARM_ALLOW_COMMANDS="1")
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    yield root, state, env
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)


def test_canary_secrets_appear_nowhere_they_should_not(farm):
    root, state, env = farm
    job = json.loads(run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-6", "--json", env=env).stdout)["id"]
    script = root / "dump_env.py"
    script.write_text(DUMP_ENV)
    scene = root / "dump.toml"
    argv = [sys.executable, str(script), "{frame}", "{output}", "{width}", "{height}", str(root)]
    scene.write_text(f'[render]\nwidth = 16\nheight = 16\nframes = "1-2"\n\n[command]\nargv = {json.dumps(argv)}\n')
    dump = json.loads(run_farm("submit", str(scene), "--renderer", "command", "--json", env=env).stdout)["id"]
    bad = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "10-1", env=env, check=False)
    for j in (job, dump):
        wait_job(env, j, ("done",), 90)

    # What users see.
    shown = [run_farm(*cmd, env=env) for cmd in (("config",), ("status",), ("jobs",), ("workers",), ("tasks", job))]
    for proc in [*shown, bad]:
        assert REDIS_CANARY not in proc.stdout + proc.stderr and S3_CANARY not in proc.stdout + proc.stderr

    # Command lines of every process, while the farm runs.
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert REDIS_CANARY.encode() not in text and S3_CANARY.encode() not in text, cmdline

    # The renderer's environment: scrubbed of every farm and AWS setting.
    for frame in (1, 2):
        renderer_env = json.loads((root / f"env-{frame}.json").read_text())
        assert not [k for k in renderer_env if k.startswith(("FARM_", "AWS_", "RQ_", "REDIS"))], renderer_env
        assert REDIS_CANARY not in json.dumps(renderer_env) and S3_CANARY not in json.dumps(renderer_env)

    # Task logs in storage.
    storage = open_storage(load_settings(env, cwd=root))
    logs = [o.key for o in storage.list("nodes/") if o.key.endswith("log.txt")
            and o.key.split("/")[3] in (job, dump)]  # nodes/NODE/jobs/JOB/TASK/ATTEMPT/log.txt
    assert len(logs) == 8
    for key in logs:
        text = storage.get_bytes(key)
        assert REDIS_CANARY.encode() not in text and S3_CANARY.encode() not in text, key

    # Files: logs, Valkey's directory (config, ACL, append-only files), the database.
    run_farm("down", env=env, timeout=120)
    files = [*(state / "logs").rglob("*"), *(state / "valkey").rglob("*"), *state.glob("farm.db*")]
    assert any(f.name.startswith("appendonly") or f.suffix == ".aof" for f in (state / "valkey").rglob("*"))
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            assert REDIS_CANARY.encode() not in data and S3_CANARY.encode() not in data, path
    # Only the state directory's secret files hold them, readable by their owner alone.
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    for secret_file in (state / "local.json", state / "s3" / "s3.json", state / "valkey" / "users.acl"):
        assert oct(secret_file.stat().st_mode & 0o777) == "0o600", secret_file
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)


def test_the_embedded_servers_refuse_clients_without_the_credentials(farm):
    import boto3
    import redis
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    root, state, env = farm
    local = json.loads((state / "local.json").read_text())
    port = local["valkey_port"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="not-it").ping()
    assert redis.Redis(port=port, password=REDIS_CANARY).ping()

    endpoint = f"http://127.0.0.1:{local['s3_port']}"
    anonymous = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(signature_version=UNSIGNED))
    wrong = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id="RFCANARYKEY", aws_secret_access_key="not-it")
    for client in (anonymous, wrong):
        with pytest.raises(ClientError) as refused:
            client.list_objects_v2(Bucket="renderfarm")
        assert refused.value.response["Error"]["Code"] in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId")
        with pytest.raises(ClientError):
            client.put_object(Bucket="renderfarm", Key="intruder.txt", Body=b"x")
    right = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id="RFCANARYKEY", aws_secret_access_key=S3_CANARY)
    assert right.list_objects_v2(Bucket="renderfarm")["KeyCount"] > 0
