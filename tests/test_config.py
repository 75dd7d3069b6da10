"""Settings: precedence of the environment, ./farm.toml, the state directory's farm.toml, the local
farm and defaults; errors naming the setting and its source; masked secrets; round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renderfarm.config import (
    Settings,
    effective_settings,
    load_settings,
    mask_url,
    read_local_file,
    settings_env,
)
from renderfarm.errors import ConfigError
from renderfarm.storage.s3 import local_credentials

LOCAL = {
    "valkey_port": 7001,
    "valkey_password": "pw-local-valkey",
    "s3_port": 7002,
    "s3_access_key": "RFLOCALKEY",
    "s3_secret_key": "local-s3-secret",
}
LOCAL_REDIS = "redis://:pw-local-valkey@127.0.0.1:7001/0"
LOCAL_S3 = "http://127.0.0.1:7002"


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(state directory, current directory), apart from each other."""
    state, cwd = tmp_path / "state", tmp_path / "project"
    state.mkdir()
    cwd.mkdir()
    return state, cwd


def write_local(state: Path, doc: dict | None = None) -> None:
    (state / "local.json").write_text(json.dumps(LOCAL if doc is None else doc))


def load(state: Path, cwd: Path, **env: str) -> Settings:
    return load_settings({"FARM_STATE_DIR": str(state), **env}, cwd=cwd)


def test_defaults(dirs) -> None:
    state, cwd = dirs
    s = load(state, cwd)
    assert s == Settings(
        state_dir=state,
        redis_url=None,
        database_url=f"sqlite:///{state}/farm.db",
        storage_url="s3://renderfarm/",
        s3_endpoint_url=None,
        s3_region="us-east-1",
        s3_checksums="when_required",
        heartbeat_ttl=30.0,
        max_tasks=100_000,
        max_attempts=3,
        task_timeout=3600.0,
    )
    assert s.sources == {
        "state_dir": "env FARM_STATE_DIR",
        "database_url": "default",
        "storage_url": "default",
    }
    assert s.local_file == state / "local.json" and s.database_file == state / "farm.db"
    assert not any(
        s.configured_elsewhere(name)
        for name in ("redis_url", "storage_url", "s3_endpoint_url", "max_tasks")
    )


def test_default_state_dir_is_under_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = load_settings({}, cwd=tmp_path)
    assert s.state_dir == tmp_path / "home/.local/state/renderfarm"
    assert s.sources["state_dir"] == "default"


def test_relative_state_dir_is_relative_to_cwd(dirs) -> None:
    _state, cwd = dirs
    assert load_settings({"FARM_STATE_DIR": "farm-state"}, cwd=cwd).state_dir == cwd / "farm-state"
    (cwd / "farm.toml").write_text('state_dir = "from-toml"\n')
    s = load_settings({}, cwd=cwd)
    assert (s.state_dir, s.sources["state_dir"]) == (cwd / "from-toml", "./farm.toml")
    s = load_settings({"FARM_STATE_DIR": "from-env"}, cwd=cwd)  # the environment beats ./farm.toml
    assert (s.state_dir, s.sources["state_dir"]) == (cwd / "from-env", "env FARM_STATE_DIR")


@pytest.mark.parametrize(
    ("layers", "redis_url", "redis_source"),
    [
        (["local"], LOCAL_REDIS, "local farm"),
        (["local", "state"], "redis://state-toml:6380/0", "STATE/farm.toml"),
        (["local", "state", "cwd"], "redis://cwd-toml:6381/0", "./farm.toml"),
        (["local", "state", "cwd", "env"], "redis://env:6382/0", "env FARM_REDIS_URL"),
        (["state", "env"], "redis://env:6382/0", "env FARM_REDIS_URL"),
        (["local", "cwd"], "redis://cwd-toml:6381/0", "./farm.toml"),
        ([], None, None),
    ],
)
def test_precedence_env_then_cwd_toml_then_state_toml_then_local_farm(
    dirs, layers, redis_url, redis_source
) -> None:
    state, cwd = dirs
    env = {}
    if "local" in layers:
        write_local(state)
    if "state" in layers:
        (state / "farm.toml").write_text(
            'redis_url = "redis://state-toml:6380/0"\nmax_attempts = 4\nheartbeat_ttl = 20\n'
        )
    if "cwd" in layers:
        (cwd / "farm.toml").write_text('redis_url = "redis://cwd-toml:6381/0"\nmax_attempts = 5\n')
    if "env" in layers:
        env["FARM_REDIS_URL"] = "redis://env:6382/0"
    s = load(state, cwd, **env)
    assert s.redis_url == redis_url
    assert s.sources.get("redis_url") == (
        redis_source.replace("STATE", str(state)) if redis_source else None
    )
    # Other settings come from the highest layer that names them.
    attempts = 5 if "cwd" in layers else 4 if "state" in layers else 3
    assert s.max_attempts == attempts
    assert s.heartbeat_ttl == (20.0 if "state" in layers else 30.0)
    assert s.s3_endpoint_url == (LOCAL_S3 if "local" in layers else None)
    assert s.max_tasks == 100_000 and "max_tasks" not in s.sources


def test_sources_name_every_layer(dirs) -> None:
    state, cwd = dirs
    write_local(state)
    (state / "farm.toml").write_text(
        'heartbeat_ttl = 20\nmax_attempts = 4\ns3_region = "eu-west-1"\n'
    )
    (cwd / "farm.toml").write_text("max_attempts = 5\nmax_tasks = 900\n")
    s = load(state, cwd, FARM_MAX_TASKS="1000", FARM_TASK_TIMEOUT="60")
    assert s.sources == {
        "state_dir": "env FARM_STATE_DIR",
        "database_url": "default",
        "storage_url": "default",
        "redis_url": "local farm",
        "s3_endpoint_url": "local farm",
        "heartbeat_ttl": f"{state}/farm.toml",
        "max_attempts": "./farm.toml",
        "s3_region": f"{state}/farm.toml",
        "max_tasks": "env FARM_MAX_TASKS",
        "task_timeout": "env FARM_TASK_TIMEOUT",
    }
    assert (s.heartbeat_ttl, s.max_attempts, s.s3_region, s.max_tasks, s.task_timeout) == (
        20.0,
        5,
        "eu-west-1",
        1000,
        60.0,
    )
    assert isinstance(s.heartbeat_ttl, float) and isinstance(s.max_tasks, int)
    assert [
        s.configured_elsewhere(n)
        for n in ("redis_url", "s3_endpoint_url", "heartbeat_ttl", "max_tasks", "storage_url")
    ] == [False, False, True, True, False]


def test_an_empty_environment_variable_is_not_a_setting(dirs) -> None:
    state, cwd = dirs
    write_local(state)
    s = load(state, cwd, FARM_REDIS_URL="", FARM_MAX_TASKS="")
    assert (s.redis_url, s.sources["redis_url"], s.max_tasks) == (
        LOCAL_REDIS,
        "local farm",
        100_000,
    )


def test_farm_table_form(dirs) -> None:
    state, cwd = dirs
    (cwd / "farm.toml").write_text(
        'max_tasks = 10\nmax_attempts = 2\n\n[farm]\nredis_url = "redis://table:6390/1"\nmax_tasks = 20\n'
    )
    s = load(state, cwd)
    # Top-level keys and a [farm] table mix; the table wins where both name a setting.
    assert (s.redis_url, s.max_tasks, s.max_attempts) == ("redis://table:6390/1", 20, 2)
    assert s.sources["redis_url"] == s.sources["max_tasks"] == "./farm.toml"

    (state / "farm.toml").write_text('[farm]\nstorage_url = "file:///shared/renders"\n')
    assert load(state, cwd).storage_url == "file:///shared/renders"


def test_farm_must_be_a_table(dirs) -> None:
    state, cwd = dirs
    (cwd / "farm.toml").write_text("farm = 3\n")
    with pytest.raises(ConfigError) as err:
        load(state, cwd)
    assert str(err.value) == f"{cwd}/farm.toml: [farm] must be a table"


def test_invalid_toml_names_the_file(dirs) -> None:
    state, cwd = dirs
    (state / "farm.toml").write_text("redis_url = \n")
    with pytest.raises(ConfigError) as err:
        load(state, cwd)
    assert str(err.value).startswith(f"{state}/farm.toml: invalid TOML (")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("where", "text", "message"),
    [
        ("cwd", 'redis_uri = "redis://x"\n', "./farm.toml: unknown setting 'redis_uri'"),
        ("cwd", "[farm]\nworkers = 4\n", "./farm.toml: unknown setting 'workers'"),
        ("state", "colour = 'red'\n", "STATE/farm.toml: unknown setting 'colour'"),
        ("state", "[farm]\n[farm.extra]\nx = 1\n", "STATE/farm.toml: unknown setting 'extra'"),
    ],
)
def test_unknown_settings_are_refused(dirs, where, text, message) -> None:
    state, cwd = dirs
    (cwd if where == "cwd" else state).joinpath("farm.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load(state, cwd)
    assert str(err.value) == message.replace("STATE", str(state))


def test_state_dir_in_the_state_dirs_own_toml_is_ignored(dirs) -> None:
    state, cwd = dirs
    (state / "farm.toml").write_text('state_dir = "/elsewhere"\nmax_tasks = 7\n')
    s = load(state, cwd)
    assert (s.state_dir, s.max_tasks) == (state, 7)


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        (
            {"FARM_MAX_TASKS": "abc"},
            "",
            "max_tasks (from env FARM_MAX_TASKS): expected a whole number, got 'abc'",
        ),
        (
            {"FARM_MAX_TASKS": "2.5"},
            "",
            "max_tasks (from env FARM_MAX_TASKS): expected a whole number, got '2.5'",
        ),
        (
            {"FARM_MAX_ATTEMPTS": "1e3"},
            "",
            "max_attempts (from env FARM_MAX_ATTEMPTS): expected a whole number, got '1e3'",
        ),
        (
            {"FARM_HEARTBEAT_TTL": "fast"},
            "",
            "heartbeat_ttl (from env FARM_HEARTBEAT_TTL): expected a number, got 'fast'",
        ),
        (
            {"FARM_HEARTBEAT_TTL": "nan"},
            "",
            "heartbeat_ttl (from env FARM_HEARTBEAT_TTL): expected a number, got 'nan'",
        ),
        (
            {"FARM_TASK_TIMEOUT": "inf"},
            "",
            "task_timeout (from env FARM_TASK_TIMEOUT): expected a number, got 'inf'",
        ),
        (
            {},
            "max_attempts = 2.5\n",
            "max_attempts (from ./farm.toml): expected a whole number, got 2.5",
        ),
        (
            {},
            "max_tasks = true\n",
            "max_tasks (from ./farm.toml): expected a whole number, got True",
        ),
        (
            {},
            "heartbeat_ttl = false\n",
            "heartbeat_ttl (from ./farm.toml): expected a number, got False",
        ),
        (
            {},
            'heartbeat_ttl = "soon"\n',
            "heartbeat_ttl (from ./farm.toml): expected a number, got 'soon'",
        ),
        ({}, "task_timeout = [1]\n", "task_timeout (from ./farm.toml): expected a number, got [1]"),
        (
            {},
            "heartbeat_ttl = 0.5\n",
            "heartbeat_ttl (from ./farm.toml): 0.5 must be at least 1 second",
        ),
        ({"FARM_MAX_TASKS": "0"}, "", "max_tasks (from env FARM_MAX_TASKS): 0 must be at least 1"),
        ({"FARM_VERIFY_PROCESSES": "-1"}, "", "verify_processes (from env FARM_VERIFY_PROCESSES): -1 must be 0 to 64"),
        ({"FARM_VERIFY_PROCESSES": "two"}, "", "verify_processes (from env FARM_VERIFY_PROCESSES): expected a whole number, got 'two'"),
        (
            {"FARM_MAX_ATTEMPTS": "-1"},
            "",
            "max_attempts (from env FARM_MAX_ATTEMPTS): -1 must be at least 1",
        ),
        (
            {"FARM_TASK_TIMEOUT": "-5"},
            "",
            "task_timeout (from env FARM_TASK_TIMEOUT): -5 must be more than 0 seconds",
        ),
        (
            {},
            "task_timeout = 0\n",
            "task_timeout (from ./farm.toml): 0 must be more than 0 seconds",
        ),
    ],
)
def test_bad_numbers_name_the_setting_and_its_source(dirs, env, toml, message) -> None:
    state, cwd = dirs
    if toml:
        (cwd / "farm.toml").write_text(toml)
    with pytest.raises(ConfigError) as err:
        load(state, cwd, **env)
    assert str(err.value) == message


def test_numbers_that_are_accepted(dirs) -> None:
    state, cwd = dirs
    (cwd / "farm.toml").write_text('max_attempts = 4.0\nheartbeat_ttl = 10\nmax_tasks = "250"\n')
    s = load(state, cwd, FARM_TASK_TIMEOUT="0.25")
    assert (s.max_attempts, s.heartbeat_ttl, s.max_tasks, s.task_timeout) == (4, 10.0, 250, 0.25)
    assert type(s.max_attempts) is int and type(s.heartbeat_ttl) is float


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FARM_REDIS_URL": "localhost:6379"},
            "redis_url (from env FARM_REDIS_URL): 'localhost:6379' is not a redis://, rediss:// or unix:// URL",
        ),
        (
            {"FARM_REDIS_URL": "http://:hunter2@127.0.0.1:6379/0"},
            "redis_url (from env FARM_REDIS_URL): 'http://:***@127.0.0.1:6379/0' is not a redis://, rediss:// or unix:// URL",
        ),
        (
            {"FARM_DATABASE_URL": "mysql://farm:hunter2@db/farm"},
            "database_url (from env FARM_DATABASE_URL): 'mysql://farm:***@db/farm' is neither sqlite:/// nor postgresql+psycopg://",
        ),
        (
            {"FARM_STORAGE_URL": "s3:///no-bucket"},
            "storage_url (from env FARM_STORAGE_URL): 's3:///no-bucket' is neither s3://bucket/prefix nor file:///path",
        ),
        (
            {"FARM_STORAGE_URL": "/shared/renders"},
            "storage_url (from env FARM_STORAGE_URL): '/shared/renders' is neither s3://bucket/prefix nor file:///path",
        ),
        (
            {"FARM_STORAGE_URL": "gs://bucket/x"},
            "storage_url (from env FARM_STORAGE_URL): 'gs://bucket/x' is neither s3://bucket/prefix nor file:///path",
        ),
        (
            {"FARM_S3_ENDPOINT_URL": "localhost:8333"},
            "s3_endpoint_url (from env FARM_S3_ENDPOINT_URL): 'localhost:8333' is not an http:// or https:// URL",
        ),
        (
            {"FARM_S3_ENDPOINT_URL": "ftp://s3.example.com"},
            "s3_endpoint_url (from env FARM_S3_ENDPOINT_URL): 'ftp://s3.example.com' is not an http:// or https:// URL",
        ),
        (
            {"FARM_S3_ENDPOINT_URL": "https://"},
            "s3_endpoint_url (from env FARM_S3_ENDPOINT_URL): 'https://' is not an http:// or https:// URL",
        ),
        (
            {"FARM_S3_CHECKSUMS": "always"},
            "s3_checksums (from env FARM_S3_CHECKSUMS): 'always' is neither when_required nor when_supported",
        ),
    ],
)
def test_bad_urls_name_the_setting_and_its_source_without_secrets(dirs, env, message) -> None:
    state, cwd = dirs
    with pytest.raises(ConfigError) as err:
        load(state, cwd, **env)
    assert str(err.value) == message
    assert "hunter2" not in str(err.value)


def test_a_bad_url_in_a_toml_file_names_that_file(dirs) -> None:
    state, cwd = dirs
    (state / "farm.toml").write_text('database_url = "oracle://x"\n')
    with pytest.raises(ConfigError) as err:
        load(state, cwd)
    assert (
        str(err.value)
        == f"database_url (from {state}/farm.toml): 'oracle://x' is neither sqlite:/// nor postgresql+psycopg://"
    )


def test_good_urls_are_accepted(dirs) -> None:
    state, cwd = dirs
    s = load(
        state,
        cwd,
        FARM_REDIS_URL="rediss://:pw@redis.studio:6380/2",
        FARM_DATABASE_URL="postgresql+psycopg://farm:pw@db.studio:5432/farm",
        FARM_STORAGE_URL="s3://studio-renders/farm/prod",
        FARM_S3_ENDPOINT_URL="https://s3.studio:9000",
    )
    assert (s.redis_url, s.database_url, s.storage_url, s.s3_endpoint_url) == (
        "rediss://:pw@redis.studio:6380/2",
        "postgresql+psycopg://farm:pw@db.studio:5432/farm",
        "s3://studio-renders/farm/prod",
        "https://s3.studio:9000",
    )
    assert (
        load(
            state,
            cwd,
            FARM_REDIS_URL="unix:///run/valkey.sock",
            FARM_STORAGE_URL="file:///shared/renders",
        ).storage_url
        == "file:///shared/renders"
    )


def test_unreadable_local_file(dirs) -> None:
    state, cwd = dirs
    (state / "local.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load(state, cwd)
    assert str(err.value).startswith(f"{state}/local.json: unreadable (")
    assert read_local_file(cwd) == {}


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            "postgresql+psycopg://farm:s3cret@db.studio:5432/farm",
            "postgresql+psycopg://farm:***@db.studio:5432/farm",
        ),
        (
            "rediss://admin:s3cret@redis.studio/3?ssl_cert_reqs=none",
            "rediss://admin:***@redis.studio/3?ssl_cert_reqs=none",
        ),
        ("redis://:s3cret@[::1]:6380/0", "redis://:***@[::1]:6380/0"),
        ("redis://:p%40ss@host:1/0", "redis://:***@host:1/0"),
        # Raw characters that end the user info early for urllib: everything up to the last '@'.
        ("redis://:ab/c#d?e@host:6379/0", "redis://***@host:6379/0"),
        ("redis://admin:ab/cd@host:6379/0", "redis://***@host:6379/0"),
        ("redis://:a@b:c@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql+psycopg://farm:a@b@db/farm", "postgresql+psycopg://farm:***@db/farm"),
        (":s3cret@host:6379", ":***@host:6379"),
        # The query form, which redis-py and libpq read too; its value runs to the next `&name=`.
        ("redis://host:6379/0?password=s3cret", "redis://host:6379/0?password=***"),
        ("redis://host/0?username=u&password=a@b/c:d?e&f&db=2", "redis://host/0?username=u&password=***&db=2"),
        ("postgresql://db/f?sslpassword=s3cret&sslmode=require", "postgresql://db/f?sslpassword=***&sslmode=require"),
        ("unix:///run/valkey.sock?db=1&password=s3cret", "unix:///run/valkey.sock?db=1&password=***"),
        ("redis://host:6379/0#s3cret", "redis://host:6379/0#***"),
        ("sqlite:////tmp/a@b/farm.db", "sqlite:////tmp/a@b/farm.db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("sqlite:////tmp/farm.db", "sqlite:////tmp/farm.db"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_url(url, masked) -> None:
    assert mask_url(url) == masked


def test_effective_settings_never_show_a_password(dirs, monkeypatch) -> None:
    state, cwd = dirs
    write_local(state)
    monkeypatch.setenv(
        "FARM_STATE_DIR", "/somewhere/else"
    )  # not the environment these settings came from
    s = load_settings(
        {
            "FARM_STATE_DIR": str(state),
            "FARM_DATABASE_URL": "postgresql+psycopg://farm:db-pass@db:5432/farm",
            "FARM_S3_ENDPOINT_URL": "https://key:endpoint-pass@s3.studio",
        },
        cwd=cwd,
    )
    rows = effective_settings(s)
    assert rows == [
        ("state_dir", str(state), "env FARM_STATE_DIR"),
        ("redis_url", "redis://:***@127.0.0.1:7001/0", "local farm"),
        ("redis_ca", "", "default"),
        ("database_url", "postgresql+psycopg://farm:***@db:5432/farm", "env FARM_DATABASE_URL"),
        ("storage_url", "s3://renderfarm/", "default"),
        ("s3_endpoint_url", "https://key:***@s3.studio", "env FARM_S3_ENDPOINT_URL"),
        ("s3_region", "us-east-1", "default"),
        ("s3_checksums", "when_required", "default"),
        ("heartbeat_ttl", "30.0", "default"),
        ("max_tasks", "100000", "default"),
        ("max_task_frames", "1000", "default"),
        ("max_attempts", "3", "default"),
        ("task_timeout", "3600.0", "default"),
        ("storage_retry", "300.0", "default"),
        ("shutdown_grace", "300.0", "default"),
        ("allow_commands", "False", "default"),
        ("allow_scripts", "False", "default"),
        ("allow_openjd", "False", "default"),
        ("openjd_attributes", "", "default"),
        ("render_user", "", "default"),
        ("blender", "", "default"),
        ("render_threads", "0", "default"),
        ("submit_wait", "60.0", "default"),
        ("max_pixels", "268435456", "default"),
        ("max_samples", "65536", "default"),
        ("max_scene_bytes", "10485760", "default"),
        ("max_scene_objects", "10000", "default"),
        ("max_unpacked_bytes", "21474836480", "default"),
        ("max_pack_entries", "100000", "default"),
        ("webhook_url", "", "default"),
        ("webhook_secret", "", "default"),
        ("webhook_timeout", "5.0", "default"),
        ("webhook_tries", "8", "default"),
        ("sweep_grace", "3600.0", "default"),
        ("verify_processes", "", "default"),
        ("scene_cache_gb", "20.0", "default"),
        ("retention_days", "0.0", "default"),
        ("sleep_after", "0.0", "default"),
        ("sleep_command", "systemctl suspend", "default"),
        ("wake_command", "", "default"),
        ("wake_address", "255.255.255.255", "default"),
        ("wake_port", "9", "default"),
        ("wake_timeout", "300.0", "default"),
        ("worker_mac", "", "default"),
    ]
    text = repr(rows)
    for secret in ("pw-local-valkey", "db-pass", "endpoint-pass", "local-s3-secret"):
        assert secret not in text

    (cwd / "farm.toml").write_text('state_dir = "toml-state"\n')
    assert effective_settings(load_settings({}, cwd=cwd))[0] == (
        "state_dir",
        str(cwd / "toml-state"),
        "./farm.toml",
    )


def test_exported_local_farm_values_stay_the_local_farms(dirs, monkeypatch) -> None:
    """`eval "$(farm env)"` puts the local farm's own values in the environment: still the local farm."""
    state, cwd = dirs
    write_local(state)
    plain = load(state, cwd)
    exported = settings_env(plain)
    assert (
        exported["FARM_REDIS_URL"] == LOCAL_REDIS and exported["FARM_S3_ENDPOINT_URL"] == LOCAL_S3
    )
    again = load_settings(exported, cwd=cwd)
    assert again == plain
    assert (
        again.sources
        == plain.sources
        == {
            "state_dir": "env FARM_STATE_DIR",
            "database_url": "default",
            "storage_url": "default",
            "redis_url": "local farm",
            "s3_endpoint_url": "local farm",
        }
    )
    assert not again.configured_elsewhere("redis_url") and not again.configured_elsewhere(
        "s3_endpoint_url"
    )
    # So the local farm's generated S3 keys still apply, whatever AWS keys the environment holds
    # (those are for other endpoints).
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert local_credentials(again) == ("RFLOCALKEY", "local-s3-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROM-THE-CHAIN")
    assert local_credentials(again) == ("RFLOCALKEY", "local-s3-secret")

    # A different value is the user's own choice: configured elsewhere.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    other = load_settings(
        {
            **exported,
            "FARM_REDIS_URL": "redis://:x@10.0.0.5:6379/0",
            "FARM_S3_ENDPOINT_URL": "http://10.0.0.5:8333",
        },
        cwd=cwd,
    )
    assert other.sources["redis_url"] == "env FARM_REDIS_URL" and other.configured_elsewhere(
        "redis_url"
    )
    assert other.sources[
        "s3_endpoint_url"
    ] == "env FARM_S3_ENDPOINT_URL" and other.configured_elsewhere("s3_endpoint_url")
    assert (
        local_credentials(other) is None
    )  # the local farm's keys are never sent to another endpoint


def test_a_configured_storage_url_drops_the_local_farms_s3_endpoint(dirs) -> None:
    state, cwd = dirs
    write_local(state)
    s = load(state, cwd, FARM_STORAGE_URL="file:///shared/renders")
    assert (s.storage_url, s.s3_endpoint_url) == ("file:///shared/renders", None)
    assert "s3_endpoint_url" not in s.sources and s.redis_url == LOCAL_REDIS

    (state / "farm.toml").write_text('storage_url = "s3://studio-renders/farm"\n')
    s = load(state, cwd)
    assert (s.storage_url, s.s3_endpoint_url) == ("s3://studio-renders/farm", None)
    # The local farm's endpoint, even exported by `farm env`, still serves only the local bucket...
    s = load(state, cwd, FARM_S3_ENDPOINT_URL=LOCAL_S3)
    assert s.s3_endpoint_url is None
    # ...while an endpoint the user chose stays with the storage they chose.
    s = load(state, cwd, FARM_S3_ENDPOINT_URL="https://s3.studio")
    assert (s.s3_endpoint_url, s.sources["s3_endpoint_url"]) == (
        "https://s3.studio",
        "env FARM_S3_ENDPOINT_URL",
    )
    # The default bucket, even exported, keeps the local farm's endpoint.
    (state / "farm.toml").unlink()
    assert load(state, cwd, FARM_STORAGE_URL="s3://renderfarm/").s3_endpoint_url == LOCAL_S3


def test_settings_env_round_trips(dirs) -> None:
    state, cwd = dirs
    s = load(
        state,
        cwd,
        FARM_REDIS_URL="rediss://:pw@redis.studio:6380/2",
        FARM_DATABASE_URL="postgresql+psycopg://farm:pw@db:5432/farm",
        FARM_STORAGE_URL="s3://renders/prod",
        FARM_S3_ENDPOINT_URL="https://s3.studio:9000",
        FARM_S3_REGION="eu-west-2",
        FARM_S3_CHECKSUMS="when_supported",
        FARM_HEARTBEAT_TTL="12.5",
        FARM_MAX_TASKS="5000",
        FARM_MAX_TASK_FRAMES="250",
        FARM_MAX_ATTEMPTS="7",
        FARM_TASK_TIMEOUT="123456789.25",
        FARM_STORAGE_RETRY="60",
        FARM_SHUTDOWN_GRACE="0.5",
        FARM_ALLOW_COMMANDS="yes",
        FARM_BLENDER="/opt/blender-4.2/blender",
        FARM_RENDER_THREADS="8",
        FARM_SUBMIT_WAIT="7.5",
        FARM_MAX_PIXELS="1000000",
        FARM_MAX_SAMPLES="64",
        FARM_MAX_SCENE_BYTES="2048",
        FARM_MAX_SCENE_OBJECTS="3",
        FARM_MAX_UNPACKED_BYTES="4096",
        FARM_MAX_PACK_ENTRIES="5",
        FARM_WEBHOOK_URL="https://hooks.example/farm",
        FARM_WEBHOOK_SECRET="hook-secret",
        FARM_WEBHOOK_TIMEOUT="2.5",
        FARM_WEBHOOK_TRIES="4",
        FARM_SWEEP_GRACE="600",
        FARM_SCENE_CACHE_GB="0.25",
        FARM_RETENTION_DAYS="30",
        FARM_SLEEP_AFTER="600",
        FARM_SLEEP_COMMAND="ipmitool power soft",
        FARM_WAKE_COMMAND="ssh waker wakeonlan {mac}",
        FARM_WAKE_ADDRESS="192.168.1.255",
        FARM_WAKE_PORT="7",
        FARM_WAKE_TIMEOUT="90",
        FARM_WORKER_MAC="52:54:00:12:34:56",
    )
    env = settings_env(s)
    assert env == {
        "FARM_STATE_DIR": str(state),
        "FARM_REDIS_URL": "rediss://:pw@redis.studio:6380/2",
        "FARM_DATABASE_URL": "postgresql+psycopg://farm:pw@db:5432/farm",
        "FARM_STORAGE_URL": "s3://renders/prod",
        "FARM_S3_ENDPOINT_URL": "https://s3.studio:9000",
        "FARM_S3_REGION": "eu-west-2",
        "FARM_S3_CHECKSUMS": "when_supported",
        "FARM_HEARTBEAT_TTL": "12.5",
        "FARM_MAX_TASKS": "5000",
        "FARM_MAX_TASK_FRAMES": "250",
        "FARM_MAX_ATTEMPTS": "7",
        "FARM_TASK_TIMEOUT": "123456789.25",
        "FARM_STORAGE_RETRY": "60",
        "FARM_SHUTDOWN_GRACE": "0.5",
        "FARM_ALLOW_COMMANDS": "1",
        "FARM_ALLOW_SCRIPTS": "0",
        "FARM_ALLOW_OPENJD": "0",
        "FARM_BLENDER": "/opt/blender-4.2/blender",
        "FARM_RENDER_THREADS": "8",
        "FARM_SUBMIT_WAIT": "7.5",
        "FARM_MAX_PIXELS": "1000000",
        "FARM_MAX_SAMPLES": "64",
        "FARM_MAX_SCENE_BYTES": "2048",
        "FARM_MAX_SCENE_OBJECTS": "3",
        "FARM_MAX_UNPACKED_BYTES": "4096",
        "FARM_MAX_PACK_ENTRIES": "5",
        "FARM_WEBHOOK_URL": "https://hooks.example/farm",
        "FARM_WEBHOOK_SECRET": "hook-secret",
        "FARM_WEBHOOK_TIMEOUT": "2.5",
        "FARM_WEBHOOK_TRIES": "4",
        "FARM_SWEEP_GRACE": "600",
        "FARM_SCENE_CACHE_GB": "0.25",
        "FARM_RETENTION_DAYS": "30",
        "FARM_SLEEP_AFTER": "600",
        "FARM_SLEEP_COMMAND": "ipmitool power soft",
        "FARM_WAKE_COMMAND": "ssh waker wakeonlan {mac}",
        "FARM_WAKE_ADDRESS": "192.168.1.255",
        "FARM_WAKE_PORT": "7",
        "FARM_WAKE_TIMEOUT": "90",
        "FARM_WORKER_MAC": "52:54:00:12:34:56",
    }
    assert load_settings(env, cwd=cwd) == s

    # Values from files and defaults round-trip too; whole floats are written without ".0".
    (state / "farm.toml").write_text("task_timeout = 86400000.0\nheartbeat_ttl = 1.0000001\n")
    s = load(state, cwd)
    env = settings_env(s)
    assert (env["FARM_TASK_TIMEOUT"], env["FARM_HEARTBEAT_TTL"], env["FARM_MAX_TASKS"]) == (
        "86400000",
        "1.0000001",
        "100000",
    )
    assert "FARM_REDIS_URL" not in env and "FARM_S3_ENDPOINT_URL" not in env
    assert load_settings(env, cwd=cwd) == s
    assert settings_env(load(state, cwd)) == env


@pytest.mark.parametrize(
    ("listen", "redis_host", "s3_host"),
    [("10.231.0.1", "10.231.0.1", "10.231.0.1"), ("fd00::1", "[fd00::1]", "[fd00::1]")],
)
def test_the_local_farm_urls_name_its_listen_address(dirs, listen, redis_host, s3_host) -> None:
    state, cwd = dirs
    write_local(state, {**LOCAL, "listen": listen})
    s = load(state, cwd)
    assert s.redis_url == f"redis://:pw-local-valkey@{redis_host}:7001/0"
    assert s.s3_endpoint_url == f"http://{s3_host}:7002"
    assert s.sources["redis_url"] == "local farm"


# -- what `farm up` recorded (up.json) ----------------------------------------------------------


PG = "postgresql+psycopg://farm:pg-secret@db.example:5432/farm"


def record(state: Path, cwd: Path, **env: str) -> None:
    """What `farm up` writes, from the settings of a shell with `env`."""
    from renderfarm.config import RECORD_FILE, recorded_settings

    (state / RECORD_FILE).write_text(json.dumps(recorded_settings(load(state, cwd, **env))))


def test_every_shell_uses_what_farm_up_was_told(dirs) -> None:
    """A shell without FARM_DATABASE_URL reads the database `farm up` ran with, not the default SQLite."""
    state, cwd = dirs
    write_local(state)
    record(state, cwd, FARM_DATABASE_URL=PG, FARM_STORAGE_URL="file:///srv/frames")
    s = load(state, cwd)
    assert (s.database_url, s.storage_url) == (PG, "file:///srv/frames")
    assert s.sources["database_url"] == f"{state / 'up.json'} (farm up)"
    assert s.configured_elsewhere("database_url")
    # What the local farm generates or defaults to is derived afresh, never frozen by the record.
    assert (s.redis_url, s.sources["redis_url"]) == (LOCAL_REDIS, "local farm")
    assert s.s3_endpoint_url is None  # the local S3 serves only the local bucket
    # A second `farm up` from that shell records the same again.
    record(state, cwd)
    assert load(state, cwd).database_url == PG


def test_environment_and_farm_toml_beat_the_record(dirs) -> None:
    state, cwd = dirs
    record(state, cwd, FARM_DATABASE_URL=PG)
    other = f"sqlite:///{state}/other.db"
    assert load(state, cwd, FARM_DATABASE_URL=other).database_url == other
    (cwd / "farm.toml").write_text(f'database_url = "{other}"\n')
    assert load(state, cwd).sources["database_url"] == "./farm.toml"


def test_differing_settings_name_the_running_farms_database_masked(dirs) -> None:
    from renderfarm.config import differing_settings

    state, cwd = dirs
    record(state, cwd, FARM_DATABASE_URL=PG)
    assert differing_settings(load(state, cwd)) == []
    other = f"sqlite:///{state}/other.db"
    assert differing_settings(load(state, cwd, FARM_DATABASE_URL=other)) == [
        ("database_url", "postgresql+psycopg://farm:***@db.example:5432/farm", other)
    ]


def test_an_unreadable_record_names_the_file(dirs) -> None:
    state, cwd = dirs
    (state / "up.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"up\.json: unreadable .*delete it and run `farm up` again"):
        load(state, cwd)


# A password holding one character that URLs give a meaning to, between two pieces no output may
# show: `farm config` masks it, or the URL is refused in one line that quotes no piece of it.
PIECES = ("zulu7", "yankee8")
CHARS = ("/", "#", "?", "@", ":")
REFUSAL = ": percent-encode the password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)"
AFTER_HOST = "has an '@' after its host, as a password with a raw '/' or '?' does" + REFUSAL
FRAGMENT = "has a '#', as a password with a raw '#' does" + REFUSAL
TWO_AT = "has two '@', as a password with a raw '@' does" + REFUSAL


def secret(char: str) -> str:
    return char.join(PIECES)


def shown(state: Path, cwd: Path, var: str, url: str) -> str:
    """What `farm config` shows of `url` as `var`, or the error it refuses it with."""
    name = var.removeprefix("FARM_").lower()
    try:
        rows = effective_settings(load(state, cwd, **{var: url}))
    except ConfigError as e:
        text = str(e)
    else:
        text = next(value for key, value, _ in rows if key == name)
    assert not any(piece in text for piece in PIECES), text
    return text


@pytest.mark.parametrize("char", CHARS)
def test_config_masks_an_encoded_password_holding_each_character(dirs, char) -> None:
    from urllib.parse import quote

    state, cwd = dirs
    encoded = quote(secret(char), safe="")
    assert shown(state, cwd, "FARM_REDIS_URL", f"redis://:{encoded}@redis.studio:6379/0") == (
        "redis://:***@redis.studio:6379/0"
    )
    assert shown(state, cwd, "FARM_REDIS_URL", f"redis://redis.studio:6379/0?password={encoded}&db=1") == (
        "redis://redis.studio:6379/0?password=***&db=1"
    )
    assert shown(state, cwd, "FARM_DATABASE_URL", f"postgresql+psycopg://farm:{encoded}@db:5432/farm") == (
        "postgresql+psycopg://farm:***@db:5432/farm"
    )


# What the farm does with each raw character: masks it where every client of that URL reads the
# password as written (redis-py and urllib take the user info to the last '@', SQLAlchemy and libpq
# to the first), refuses the URL where a client would read part of it as the host, port or path.
RAW = {  # char: what redis://:PW@h:1/0, postgresql://u:PW@h:1/d and redis://h:1/0?password=PW show
    "/": (AFTER_HOST, AFTER_HOST, "redis://h:1/0?password=***"),
    "#": (FRAGMENT, FRAGMENT, FRAGMENT),
    "?": (AFTER_HOST, AFTER_HOST, "redis://h:1/0?password=***"),
    "@": ("redis://:***@h:1/0", TWO_AT, "redis://h:1/0?password=***"),
    ":": ("redis://:***@h:1/0", "postgresql://u:***@h:1/d", "redis://h:1/0?password=***"),
}


@pytest.mark.parametrize("char", CHARS)
def test_config_masks_or_refuses_a_raw_password_holding_each_character(dirs, char) -> None:
    state, cwd = dirs
    redis_shows, database_shows, query_shows = RAW[char]
    for var, url, expected in (
        ("FARM_REDIS_URL", f"redis://:{secret(char)}@h:1/0", redis_shows),
        ("FARM_DATABASE_URL", f"postgresql://u:{secret(char)}@h:1/d", database_shows),
        ("FARM_REDIS_URL", f"redis://h:1/0?password={secret(char)}", query_shows),
    ):
        text = shown(state, cwd, var, url)
        assert text == expected or text.endswith(expected), (url, text)
        if text != expected:  # refused: the setting, its source and the URL masked come first
            name = var.removeprefix("FARM_").lower()
            assert text.startswith(f"{name} (from env {var}): '"), text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FARM_REDIS_URL": "redis://:zulu7/yankee8@redis.studio:6379/0"},
            "redis_url (from env FARM_REDIS_URL): 'redis://***@redis.studio:6379/0' " + AFTER_HOST,
        ),
        (
            {"FARM_REDIS_URL": "http://:zulu7?yankee8@redis.studio:6379/0"},
            "redis_url (from env FARM_REDIS_URL): 'http://***@redis.studio:6379/0' " + AFTER_HOST,
        ),
        (
            {"FARM_DATABASE_URL": "mysql://farm:zulu7#yankee8@db/farm"},
            "database_url (from env FARM_DATABASE_URL): 'mysql://***@db/farm' " + FRAGMENT,
        ),
        (
            {"FARM_S3_ENDPOINT_URL": "https://key:zulu7/yankee8@s3.studio"},
            "s3_endpoint_url (from env FARM_S3_ENDPOINT_URL): 'https://***@s3.studio' " + AFTER_HOST,
        ),
        (
            {"FARM_REDIS_URL": "redis://:zulu7@redis.studio:63x9/0"},
            ("redis_url (from env FARM_REDIS_URL): 'redis://:***@redis.studio:63x9/0' is not a valid URL "
             "(Port could not be cast to integer value as '63x9')"),
        ),
    ],
)
def test_bad_urls_quote_no_part_of_a_password(dirs, env, message) -> None:
    """urllib reads `redis://:zulu7/yankee8@host` as host '' and port 'zulu7', and says so."""
    state, cwd = dirs
    with pytest.raises(ConfigError) as err:
        load(state, cwd, **env)
    assert str(err.value) == message
