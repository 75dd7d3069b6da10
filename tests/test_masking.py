"""Secrets in the farm's URLs: `farm config` masks them whatever characters they hold, the
`?password=` form too; `farm env` exports a password only with the place it is for, so a plain
`redis-cli` never hands it to whatever listens on port 6379; the probe reads `?password=` as
redis-py does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from urllib.parse import quote, urlsplit

import pytest
from conftest import BIN, farm_env, run_farm

from renderfarm.config import load_settings
from renderfarm.redisconn import probe

PIECES = ("zulu7", "yankee8")
SECRET = "zulu7/#?@:yankee8"  # every character a URL gives a meaning to, between two pieces
ENCODED = quote(SECRET, safe="")
LOCAL = {
    "valkey_port": 7001,
    "valkey_password": "pw-local-valkey",
    "s3_port": 7002,
    "s3_access_key": "RFLOCALKEY",
    "s3_secret_key": "local-s3-secret",
}


def test_farm_config_masks_every_password_and_refuses_a_raw_one_in_one_line(tmp_path):
    env = farm_env(
        tmp_path / "state",
        FARM_REDIS_URL=f"redis://127.0.0.1:7001/0?password={ENCODED}",
        FARM_DATABASE_URL=f"postgresql+psycopg://farm:{ENCODED}@db.studio:5432/farm",
        FARM_S3_ENDPOINT_URL=f"https://key:{ENCODED}@s3.studio",
    )
    shown = json.loads(run_farm("config", "--json", env=env).stdout)
    assert shown["redis_url"]["value"] == "redis://127.0.0.1:7001/0?password=***"
    assert shown["database_url"]["value"] == "postgresql+psycopg://farm:***@db.studio:5432/farm"
    assert shown["s3_endpoint_url"]["value"] == "https://key:***@s3.studio"
    table = run_farm("config", env=env).stdout
    assert "password=***" in table and not any(piece in table for piece in PIECES)

    raw = run_farm("config", env={**env, "FARM_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:7001/0"}, check=False)
    assert raw.returncode == 1 and raw.stdout == ""
    assert raw.stderr.strip().splitlines() == [(
        "farm: redis_url (from env FARM_REDIS_URL): 'redis://***@127.0.0.1:7001/0' has a '#', as a password "
        "with a raw '#' does: percent-encode the password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)"
    )]


def exported(env: dict[str, str]) -> dict[str, str]:
    """The environment a shell has after `eval "$(farm env)"` (bash does the unquoting)."""
    shell = f'eval "$("{BIN / "farm"}" env)" && env -0'
    done = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, timeout=60, check=True)
    pairs = (entry.decode().partition("=") for entry in done.stdout.split(b"\0") if entry)
    return {key: value for key, _, value in pairs}


def test_farm_env_exports_a_password_only_with_its_place(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.json").write_text(json.dumps(LOCAL))
    after = exported(farm_env(state))
    assert "REDISCLI_AUTH" not in after
    assert after["AWS_ENDPOINT_URL"] == "http://127.0.0.1:7002"
    for key, value in after.items():
        if "pw-local-valkey" in value:  # a Redis URL naming the farm's own host and port
            assert key in ("FARM_REDIS_URL", "RQ_REDIS_URL"), key
            assert urlsplit(value).netloc.endswith("@127.0.0.1:7001"), key
        if "local-s3-secret" in value:  # for the AWS CLI, which AWS_ENDPOINT_URL points at the farm
            assert key == "AWS_SECRET_ACCESS_KEY", key

    # A password holding / # ? @ : survives the shell, percent-encoded as it was given.
    given = f"redis://:{ENCODED}@127.0.0.1:7001/0"
    after = exported(farm_env(state, FARM_REDIS_URL=given))
    assert (after["FARM_REDIS_URL"], after["RQ_REDIS_URL"]) == (given, given)
    assert "REDISCLI_AUTH" not in after


# Run in a network namespace of its own (`unshare -rn`): listens on 127.0.0.1:6379 there, runs
# the shell line given, and prints every byte the port was sent.
ON_6379 = r"""
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
server = socket.create_server(("127.0.0.1", 6379))
server.settimeout(30)
shell = subprocess.Popen(["bash", "-c", sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
conn, _ = server.accept()
conn.settimeout(30)
heard = b""
with conn:
    while data := conn.recv(65536):
        heard += data
        commands = sum(1 for line in data.split(b"\r\n") if line.startswith(b"*"))
        conn.sendall(b"+PONG\r\n" * commands)  # +PONG to AUTH too: any status reply will do
shell.wait(30)
sys.stdout.buffer.write(heard)
"""


def _no_namespaces() -> str | None:
    if shutil.which("redis-cli") is None:
        return "redis-cli is not installed"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode != 0:
        return "unshare -rn is not permitted here"
    return None


@pytest.mark.skipif(_no_namespaces() is not None, reason=f"{_no_namespaces()}")
def test_a_plain_redis_cli_after_farm_env_sends_port_6379_no_password(tmp_path):
    """The machine's own 6379 is never touched: a listener of this test takes its place in a
    network namespace, and hears what `eval "$(farm env)"; redis-cli ping` sends it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.json").write_text(json.dumps(LOCAL))
    shell = f'eval "$("{BIN / "farm"}" env)" && redis-cli ping'
    done = subprocess.run(["unshare", "-rn", sys.executable, "-c", ON_6379, shell], env=farm_env(state),
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    heard = done.stdout.lower()
    assert b"ping" in heard  # redis-cli did reach port 6379...
    assert b"auth" not in heard and b"pw-local-valkey" not in heard  # ...and sent it no password


def test_redis_cli_reaches_the_farm_through_the_exported_url(valkey, tmp_path):
    """What `farm env`'s help says to run instead: `redis-cli -u "$FARM_REDIS_URL"`, here with an
    ACL user whose password holds / # ? @ :; the probe reads the same password from ?password=."""
    import redis

    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    admin = redis.Redis(port=valkey.port, password=valkey.password)
    admin.acl_setuser("rf-secrets", enabled=True, passwords=[f"+{SECRET}"], commands=["+ping", "+exists"],
                      keys=["*"])
    try:
        url = f"redis://rf-secrets:{ENCODED}@127.0.0.1:{valkey.port}/0"
        shell = f'eval "$("{BIN / "farm"}" env)" && redis-cli -u "$FARM_REDIS_URL" ping'
        env = farm_env(tmp_path / "state", FARM_REDIS_URL=url)
        done = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.stdout.strip() == "PONG", done.stderr

        query_form = f"redis://127.0.0.1:{valkey.port}/0?username=rf-secrets&password={ENCODED}"
        settings = load_settings(farm_env(tmp_path / "state", FARM_REDIS_URL=query_form), cwd=tmp_path)
        assert probe(settings) == (True, False)
        assert probe(load_settings(farm_env(tmp_path / "state", FARM_REDIS_URL=url), cwd=tmp_path)) == (True, False)
    finally:
        admin.acl_deluser("rf-secrets")
        admin.close()


def test_url_secrets_lists_a_query_form_password_for_the_doctor_to_scrub():
    from renderfarm.urls import url_secrets

    assert url_secrets(f"redis://h:1/0?password={ENCODED}") == {ENCODED, SECRET}
    assert url_secrets(f"postgresql://u:{ENCODED}@h/d?sslpassword=x%40y") == {ENCODED, SECRET, "x%40y", "x@y"}
    assert url_secrets("sqlite:////tmp/a@b/farm.db") == set()
