"""worker/deploy/: the systemd units and the example environment stay in step with the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from renderfarm.config import _ENV, load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "worker" / "deploy"
WORKER_ONLY = {"FARM_POOL", "FARM_SITE", "FARM_WORKER_TAGS", "FARM_STATE_DIR"}


def example_env(uncomment: bool) -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "farm.env.example").read_text().splitlines():
        line = line.strip()
        if uncomment and re.match(r"#\s*FARM_", line):
            line = line.lstrip("#").split("  #")[0].strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value.split("  #")[0].strip()
    return env


def test_every_variable_of_the_example_is_one_the_farm_reads():
    env = example_env(uncomment=True)
    unknown = {k for k in env if k.startswith("FARM_")} - set(_ENV.values()) - WORKER_ONLY
    assert not unknown


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
    env = example_env(uncomment=False)
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start))
    assert argv[0].endswith("/farm-worker")
    args = parse_args(argv[1:])
    assert (args.pool, args.site) == ("default", "local")
    manager = (DEPLOY / "farm-manager.service").read_text()
    assert re.search(r"^ExecStart=\S+/farm manager$", manager, re.M)
    for text in (unit, manager):
        assert "EnvironmentFile=/etc/renderfarm/farm.env" in text
