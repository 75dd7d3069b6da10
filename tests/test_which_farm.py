"""Which farm am I talking to? `farm up` records the Redis, database and storage it runs with;
every command of its state directory uses them in any shell unless the environment says
otherwise, and one whose settings point elsewhere than the running farm says so."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, postgres_schema, run_farm

pytestmark = pytest.mark.slow


def test_a_shell_without_the_variable_talks_to_the_running_farm(tmp_path):
    state = tmp_path / "state"
    plain = farm_env(state)  # a new shell: no FARM_DATABASE_URL
    with postgres_schema() as pg:
        try:
            up = run_farm("up", "-d", "-w", "0", env=farm_env(state, FARM_DATABASE_URL=pg), timeout=120)
            assert "every command of this state directory uses them" in up.stdout
            sub = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-2", "--json", env=plain)
            job = json.loads(sub.stdout)["id"]
            listed = run_farm("jobs", "--json", env=plain)
            assert [j["id"] for j in json.loads(listed.stdout)] == [job]
            assert not (state / "farm.db").exists()
            assert listed.stderr == ""
            config = json.loads(run_farm("config", "--json", env=plain).stdout)
            assert config["database_url"]["source"] == f"{state / 'up.json'} (farm up)"

            # A shell still pointing at the old SQLite database is told so, on stderr.
            other = farm_env(state, FARM_DATABASE_URL=f"sqlite:///{tmp_path}/old.db")
            old = run_farm("jobs", "--json", env=other)
            assert json.loads(old.stdout) == []
            assert f"the local farm running in {state} uses database_url postgresql+psycopg://" in old.stderr
            assert "unset FARM_DATABASE_URL to talk to it" in old.stderr
            # And `farm up` from it would split the farm in two: refused.
            split = run_farm("up", "-d", "-w", "1", env=other, check=False)
            assert split.returncode != 0 and "database_url: the local farm" in split.stderr
            assert len(split.stderr.strip().splitlines()) == 1, split.stderr
        finally:
            run_farm("down", env=plain, check=False, timeout=120)
        assert not farm_processes(state), farm_processes(state)
        # Down, the farm's jobs are still where it kept them.
        after = run_farm("jobs", "--json", env=plain)
        assert [j["id"] for j in json.loads(after.stdout)] == [job]
