"""`farm doctor`: each broken part named with a fix (Redis down, bucket missing, Blender absent,
old schema), against a private Valkey and SeaweedFS; the verdicts' pure parts on exact inputs."""

from __future__ import annotations

import json
import re
import secrets
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from conftest import farm_env, run_farm, valkey_url

from renderfarm import doctor
from renderfarm.renderers.blender import blender_version
from renderfarm.config import load_settings
from renderfarm.db import head_revision, make_engine, upgrade
from renderfarm.doctor import Check, CheckStatus
from renderfarm.localfarm import services

OK, WARN, FAIL = CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL
PARTS = ["redis", "redis persistence", "dead letters", "database", "storage", "webhooks",
         "renderer builtin", "renderer null", "renderer command", "renderer blender"]
NO_BLENDER_PATH = str(Path(sys.executable).parent)  # this environment's bin: python, no blender


def fake_blender(folder: Path, body: str = "echo 'Blender 3.4.1'\necho '\tbuild date: 2022-12-20'") -> Path:
    """A stand-in that prints what `blender --version` prints: tests our parsing, not Blender."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "blender"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture()
def healthy(tmp_path: Path, redis_url, seaweed) -> dict[str, str]:
    """The environment of a farm whose every part works: private Valkey (emptied: no dead letters)
    and SeaweedFS, an upgraded SQLite database, and a (fake) Blender."""
    state = tmp_path / "state"
    engine = make_engine(f"sqlite:///{state / 'farm.db'}")
    upgrade(engine)
    engine.dispose()
    return farm_env(
        state,
        FARM_REDIS_URL=redis_url,
        FARM_STORAGE_URL="s3://renderfarm/doctor-tests",
        FARM_S3_ENDPOINT_URL=seaweed.endpoint,
        AWS_ACCESS_KEY_ID=seaweed.access_key,
        AWS_SECRET_ACCESS_KEY=seaweed.secret_key,
        FARM_BLENDER=str(fake_blender(tmp_path / "bin")),
    )


def doctor_json(env: dict[str, str]) -> tuple[int, dict[str, dict]]:
    proc = run_farm("doctor", "--json", env=env, timeout=60, check=False)
    rows = json.loads(proc.stdout)
    assert all(set(r) == {"part", "status", "detail", "fix"} for r in rows), rows
    return proc.returncode, {r["part"]: r for r in rows}


def free_port() -> int:
    return services.free_ports(1)[0]


# The whole command, as an admin runs it.

def test_healthy_farm_passes_every_check(healthy):
    proc = run_farm("doctor", env=healthy, timeout=60)
    assert "FAIL" not in proc.stdout and "warn" not in proc.stdout, proc.stdout
    assert f"all {len(PARTS)} checks passed" in proc.stdout
    code, rows = doctor_json(healthy)
    assert code == 0
    assert list(rows) == PARTS
    assert {part: r["status"] for part, r in rows.items()} == dict.fromkeys(PARTS, "ok")
    assert rows["redis"]["detail"].startswith("Valkey ")
    assert rows["redis persistence"]["detail"] == "append-only file (AOF) on"
    assert rows["database"]["detail"].endswith(f"schema at revision {head_revision()} (current)")
    assert rows["renderer blender"]["detail"].startswith("Blender 3.4.1 at ")


def test_json_has_the_rows_of_the_table(healthy):
    env = {**healthy, "FARM_REDIS_URL": f"redis://:pw@127.0.0.1:{free_port()}/0", "PATH": NO_BLENDER_PATH}
    del env["FARM_BLENDER"]
    table = run_farm("doctor", env=env, timeout=60, check=False)
    code, rows = doctor_json(env)
    assert table.returncode == code == 1
    labels = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
    for part, row in rows.items():
        assert re.search(rf"^ *{re.escape(part)} +{labels[row['status']]} ", table.stdout, re.MULTILINE), (part, table.stdout)
    assert len(table.stdout.strip().splitlines()) >= len(rows) + 2  # header, rows, summary


def test_redis_down_fails_with_a_fix_and_no_password(healthy):
    port = free_port()
    env = {**healthy, "FARM_REDIS_URL": f"redis://:hunter2secret@127.0.0.1:{port}/0"}
    started = time.monotonic()
    code, rows = doctor_json(env)
    assert time.monotonic() - started < 10
    assert code == 1
    redis = rows["redis"]
    assert redis["status"] == "fail"
    assert redis["detail"].startswith(f"redis://:***@127.0.0.1:{port}/0 does not answer (")
    assert redis["fix"] == (f"start the Redis or Valkey server at 127.0.0.1:{port}, "
                            "or point redis_url (now from env FARM_REDIS_URL) at one that runs")
    assert "redis persistence" not in rows
    assert [p for p, r in rows.items() if r["status"] != "ok"] == ["redis"]
    table = run_farm("doctor", env=env, timeout=60, check=False)
    assert "hunter2secret" not in table.stdout + table.stderr + json.dumps(rows)


def test_missing_bucket_is_named_with_a_fix_and_not_created(healthy, seaweed):
    bucket = f"doctor-missing-{secrets.token_hex(4)}"
    code, rows = doctor_json({**healthy, "FARM_STORAGE_URL": f"s3://{bucket}/renders"})
    assert code == 1
    assert rows["storage"] == {
        "part": "storage", "status": "fail",
        "detail": f"bucket {bucket!r} does not exist at {seaweed.endpoint}",
        "fix": f"create it: `aws s3 mb s3://{bucket} --endpoint-url {seaweed.endpoint}`",
    }
    assert seaweed.secret_key not in json.dumps(rows)
    settings = load_settings({**healthy, "FARM_STORAGE_URL": f"s3://{bucket}/"})
    assert doctor.check_storage(settings)[0].status is FAIL  # the doctor made no bucket


def test_blender_absent_is_a_warning_with_a_fix(healthy):
    env = {**healthy, "PATH": NO_BLENDER_PATH}
    del env["FARM_BLENDER"]
    code, rows = doctor_json(env)
    assert code == 0  # the farm renders without Blender
    assert rows["renderer blender"] == {
        "part": "renderer blender", "status": "warn",
        "detail": "blender is not on PATH and FARM_BLENDER is unset",
        "fix": "install Blender (apt-get install -y blender) or set FARM_BLENDER=/path/to/blender",
    }


def test_blender_configured_but_missing_fails(healthy, tmp_path):
    missing = tmp_path / "nowhere" / "blender"
    code, rows = doctor_json({**healthy, "FARM_BLENDER": str(missing)})
    assert code == 1
    assert rows["renderer blender"]["status"] == "fail"
    assert rows["renderer blender"]["detail"] == f"FARM_BLENDER={missing} is not an executable file"
    assert "FARM_BLENDER=/path/to/blender" in rows["renderer blender"]["fix"]


def test_old_schema_says_farm_db_upgrade(healthy, tmp_path):
    db = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine, "0003")
    engine.dispose()
    code, rows = doctor_json({**healthy, "FARM_DATABASE_URL": f"sqlite:///{db}"})
    assert code == 1
    assert rows["database"] == {
        "part": "database", "status": "fail",
        "detail": f"SQLite {db} is at schema revision 0003; this farm needs {head_revision()}",
        "fix": "run `farm db upgrade`",
    }


def test_invalid_setting_is_one_config_row(tmp_path):
    code, rows = doctor_json(farm_env(tmp_path, FARM_HEARTBEAT_TTL="soon"))
    assert code == 1
    assert list(rows) == ["config"]
    assert rows["config"]["detail"] == "heartbeat_ttl (from env FARM_HEARTBEAT_TTL): expected a number, got 'soon'"


# The checks one by one, in process.

def test_database_schema_on_each_database(database_url):
    settings = load_settings({"FARM_STATE_DIR": "/nonexistent", "FARM_DATABASE_URL": database_url})
    engine = make_engine(database_url)
    with engine.connect():  # SQLite: an empty database file
        pass
    [empty] = doctor.check_database(settings)
    assert empty.status is FAIL and "has no renderfarm schema" in empty.detail
    assert empty.fix == "run `farm db upgrade`"
    upgrade(engine, "0004")
    [old] = doctor.check_database(settings)
    assert (old.status, old.fix) == (FAIL, "run `farm db upgrade`")
    assert "at schema revision 0004; this farm needs" in old.detail
    upgrade(engine)
    engine.dispose()
    [current] = doctor.check_database(settings)
    assert current.status is OK, current


def test_database_missing_or_unreadable(tmp_path):
    missing = tmp_path / "farm.db"
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path)})
    assert doctor.check_database(settings) == [Check(
        "database", FAIL, f"SQLite database {missing} does not exist",
        "create it: `farm db upgrade` (or start the farm: `farm up -d`)")]
    assert not missing.exists()  # looking made no database
    missing.write_bytes(b"not a database at all, " * 100)
    [garbage] = doctor.check_database(settings)
    assert garbage.status is FAIL and garbage.detail.startswith(f"SQLite {missing} cannot be read (")
    assert garbage.fix == f"check that {missing} is a SQLite database this user can read"


def test_database_unreachable_postgresql_hides_the_password():
    url = f"postgresql+psycopg://farm:pgsecret99@127.0.0.1:{free_port()}/farm"
    [check] = doctor.check_database(load_settings({"FARM_STATE_DIR": "/nonexistent", "FARM_DATABASE_URL": url}))
    assert check.status is FAIL
    assert check.detail.startswith(f"PostgreSQL {url.replace('pgsecret99', '***')} cannot be read (")
    assert "pgsecret99" not in check.detail + check.fix


def test_schema_verdicts():
    known = {"0001", "0002", "0003"}
    assert doctor.schema_verdict("SQLite x", "0003", "0003", known) == Check(
        "database", OK, "SQLite x, schema at revision 0003 (current)")
    assert doctor.schema_verdict("SQLite x", "0002", "0003", known) == Check(
        "database", FAIL, "SQLite x is at schema revision 0002; this farm needs 0003", "run `farm db upgrade`")
    assert doctor.schema_verdict("SQLite x", None, "0003", known) == Check(
        "database", FAIL, "SQLite x has no renderfarm schema (this farm needs revision 0003)", "run `farm db upgrade`")
    assert doctor.schema_verdict("SQLite x", "0009", "0003", known) == Check(
        "database", FAIL, "SQLite x is at schema revision '0009', which this renderfarm does not know (a newer one wrote it)",
        "upgrade renderfarm here to the version the manager runs")


def test_local_farm_valkey_counts_and_its_absence_says_farm_up(tmp_path, redis_url, valkey):
    state = tmp_path / "state"
    state.mkdir()
    local = state / "local.json"
    local.write_text(json.dumps({"valkey_port": valkey.port, "valkey_password": valkey.password}))
    settings = load_settings({"FARM_STATE_DIR": str(state)})
    assert [(c.part, c.status) for c in doctor.check_redis(settings)] == [
        ("redis", OK), ("redis persistence", OK), ("dead letters", OK)]
    local.write_text(json.dumps({"valkey_port": free_port(), "valkey_password": "localsecret42"}))
    checks = doctor.run_checks(load_settings({"FARM_STATE_DIR": str(state)}), {"PATH": NO_BLENDER_PATH})
    redis = checks[0]
    assert (redis.part, redis.status, redis.fix) == ("redis", FAIL, "start the local farm: `farm up -d`")
    assert "localsecret42" not in " ".join(f"{c.detail} {c.fix}" for c in checks)


def test_wrong_redis_password_is_named(valkey):
    settings = load_settings({"FARM_STATE_DIR": "/nonexistent", "FARM_REDIS_URL": f"redis://:wrongpass@127.0.0.1:{valkey.port}/0"})
    [check] = doctor.check_redis(settings)
    assert check.status is FAIL and "refused the password" in check.detail
    assert check.fix == "put the server's password in FARM_REDIS_URL: redis://:PASSWORD@host:port/0"


def test_a_silent_redis_does_not_hang_the_doctor(monkeypatch):
    monkeypatch.setattr(doctor, "CONNECT_TIMEOUT", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        settings = load_settings({"FARM_STATE_DIR": "/nonexistent", "FARM_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        started = time.monotonic()
        [check] = doctor.check_redis(settings)
    assert time.monotonic() - started < 3
    assert check.status is FAIL and "does not answer" in check.detail


def test_a_hanging_check_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setattr(doctor, "CHECK_DEADLINE", 0.2)
    started = time.monotonic()
    [check] = doctor._bounded("storage", lambda: time.sleep(5) or [])
    assert time.monotonic() - started < 1
    assert (check.part, check.status, check.detail) == ("storage", FAIL, "no answer within 0.2 s")


def test_persistence_verdicts():
    fix = "enable AOF: appendonly yes in the server's configuration (or CONFIG SET appendonly yes now)"
    assert doctor.persistence_verdict({"aof_enabled": 1}, "") == Check(
        "redis persistence", OK, "append-only file (AOF) on")
    assert doctor.persistence_verdict({"aof_enabled": 0}, "3600 1 300 100") == Check(
        "redis persistence", OK, "RDB snapshots (save 3600 1 300 100); AOF off")
    assert doctor.persistence_verdict({"aof_enabled": 0}, "") == Check(
        "redis persistence", WARN, "neither AOF nor RDB snapshots: a restart loses queued work and intents", fix)
    assert doctor.persistence_verdict({"aof_enabled": 0}, None) == Check(
        "redis persistence", WARN, "AOF off, and CONFIG GET save was refused: RDB snapshots unknown", fix)


def test_redis_version_verdicts():
    assert doctor.version_verdict({"redis_version": "7.2.4", "valkey_version": "8.1.1"}, "r") == Check(
        "redis", OK, "Valkey 8.1.1 at r")
    assert doctor.version_verdict({"redis_version": "6.0.16"}, "r") == Check(
        "redis", FAIL, "Redis 6.0.16 at r: the farm needs Redis 6.2 or later", "upgrade the server to Redis 6.2+ or Valkey 7+")


def test_file_storage_probe(tmp_path):
    root = tmp_path / "shared"
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_STORAGE_URL": f"file://{root}"})
    assert doctor.check_storage(settings) == [Check(
        "storage", FAIL, f"file://{root}: directory {root} does not exist",
        f"mount the shared filesystem at {root}, or create it: mkdir -p {root}")]
    root.mkdir()
    assert doctor.check_storage(settings) == [Check("storage", OK, f"file://{root}: wrote, read and deleted a probe object")]
    assert list(root.rglob("*")) == []  # the probe object is gone, and no empty doctor/ is left


def test_the_storage_probe_leaves_nothing_in_the_bucket(seaweed, tmp_path):
    """A doctor run used to leave an empty doctor/ in the bucket (SeaweedFS keeps the folder of a
    deleted object)."""
    import boto3
    from conftest import s3_settings

    from renderfarm.storage import open_storage

    bucket = f"probe-{secrets.token_hex(4)}"
    settings = s3_settings(seaweed, tmp_path / "state", bucket)
    open_storage(settings).check()  # makes the bucket
    assert doctor.check_storage(settings)[0].status == OK
    client = boto3.client("s3", endpoint_url=seaweed.endpoint, region_name="us-east-1",
                          aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key)
    listing = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert listing.get("Contents", []) == [] and listing.get("CommonPrefixes", []) == [], listing


def test_blender_found_on_path_and_through_farm_blender(tmp_path):
    path = fake_blender(tmp_path / "bin")
    on_path = doctor.check_blender({"PATH": f"{tmp_path / 'bin'}:{NO_BLENDER_PATH}"})
    assert on_path == Check("renderer blender", OK, f"Blender 3.4.1 at {path} (from PATH)")
    configured = doctor.check_blender({"PATH": NO_BLENDER_PATH, "FARM_BLENDER": str(path)})
    assert configured == Check("renderer blender", OK, f"Blender 3.4.1 at {path} (from FARM_BLENDER)")


def test_blender_that_fails_or_hangs(tmp_path, monkeypatch):
    broken = fake_blender(tmp_path / "broken", "echo 'error while loading shared libraries: libGL.so.1' >&2\nexit 127")
    check = doctor.check_blender({"FARM_BLENDER": str(broken)})
    assert check.status is FAIL
    assert check.detail == (f"`{broken} --version` exited 127 without a Blender version "
                            "(said: error while loading shared libraries: libGL.so.1)")
    import renderfarm.renderers.blender as blender

    monkeypatch.setattr(blender, "VERSION_TIMEOUT", 0.3)
    hung = fake_blender(tmp_path / "hung", "sleep 30")
    started = time.monotonic()
    check = doctor.check_blender({"FARM_BLENDER": str(hung)})
    assert time.monotonic() - started < 3
    assert (check.status, check.detail) == (FAIL, f"`{hung} --version` did not finish within 0.3 s")


def test_blender_version_parsing():
    assert blender_version("Blender 3.4.1\n\tbuild date: 2022-12-20\n") == "3.4.1"
    assert blender_version("Color management: using fallback mode\nBlender 4.2\n") == "4.2"
    assert blender_version("Blender 5.0.0 Alpha\n") == "5.0.0"
    assert blender_version("blender: command not found\n") is None
    assert blender_version("") is None


def test_scrubbed_hides_every_secret():
    checks = [Check("redis", FAIL, "AUTH s3cret failed for s3cret", "use s3cretlonger"), Check("x", OK, "fine")]
    assert doctor.scrubbed(checks, {"s3cret", "s3cretlonger"}) == [
        Check("redis", FAIL, "AUTH *** failed for ***", "use ***"), Check("x", OK, "fine")]
