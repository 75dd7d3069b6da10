"""worker/deploy/: the systemd units and the example environment stay in step with the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from renderfarm.config import _ENV, load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "worker" / "deploy"
WORKER_ONLY = {"FARM_POOL", "FARM_SITE", "FARM_WORKER_TAGS", "FARM_STATE_DIR"}


def example_env(uncomment: bool, name: str = "farm.env.example") -> dict[str, str]:
    env = {}
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.strip()
        if uncomment and re.match(r"#\s*FARM_", line):
            line = line.lstrip("#").split("  #")[0].strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value.split("  #")[0].strip()
    return env


def test_every_variable_of_the_examples_is_one_the_farm_reads():
    for name in ("farm.env.example", "node.env.example"):
        env = example_env(uncomment=True, name=name)
        unknown = {k for k in env if k.startswith("FARM_")} - set(_ENV.values()) - WORKER_ONLY
        assert not unknown, (name, unknown)


def test_the_node_example_hands_a_node_no_secret_of_the_farm():
    from renderfarm.nodes import SECRET_VARS

    text = (DEPLOY / "node.env.example").read_text()
    env = example_env(uncomment=True, name="node.env.example")
    assert env and not set(env) & {*SECRET_VARS, "FARM_STORAGE_URL", "FARM_S3_ENDPOINT_URL"}
    assert "://" not in text and "CHANGE-ME" not in text


def test_the_example_environment_loads_as_valid_settings(tmp_path):
    env = {**example_env(uncomment=True), "FARM_STATE_DIR": str(tmp_path)}
    env.pop("FARM_REDIS_CA")  # names a file that exists only on a real node
    settings = load_settings(env, cwd=tmp_path)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.storage_url == "s3://renders/farm"


def test_the_worker_unit_runs_farm_worker_with_options_it_takes():
    from renderfarm_worker.daemon import parse_args

    unit = (DEPLOY / "farm-worker.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/farm-worker")
    args = parse_args(argv[1:])
    # Its credentials only, handed over by systemd from root's 0600 file (%d: the unit's copies).
    credential, _, source = re.search(r"^LoadCredential=(.+)$", unit, re.M).group(1).partition(":")
    assert str(args.credentials) == f"%d/{credential}" and source == "/etc/renderfarm/node.farm-node"
    assert (args.pool, args.site, args.name) == (None, None, None)  # as enrolled
    assert re.findall(r"^EnvironmentFile=(.+)$", unit, re.M) == ["-/etc/renderfarm/node.env"]
    manager = (DEPLOY / "farm-manager.service").read_text()
    assert re.search(r"^ExecStart=\S+/farm manager$", manager, re.M)
    assert "EnvironmentFile=/etc/renderfarm/farm.env" in manager
