"""The smoke suite, on SQLite and on PostgreSQL: a local farm whose manager writes the named
database renders a job, answers status, jobs, tasks and workers, and obeys the verbs."""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, postgres_schema, run_farm, wait_for, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def farm(request, tmp_path_factory):
    state = tmp_path_factory.mktemp(f"smoke-{request.param}") / "state"
    with ExitStack() as stack:
        extra = {}
        if request.param == "postgresql":
            extra["FARM_DATABASE_URL"] = stack.enter_context(postgres_schema())
        env = farm_env(state, **extra)
        run_farm("up", "-d", "-w", "2", env=env, timeout=120)
        try:
            yield request.param, env
        finally:
            run_farm("down", env=env, check=False, timeout=120)
        assert not farm_processes(state)


def status(env, job: str) -> dict:
    return json.loads(run_farm("status", job, "--json", env=env).stdout)


def wait_state(env, job: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    wait_job(env, job, states, timeout)
    return status(env, job)


def test_render_status_and_verbs(farm):
    database, env = farm
    job = json.loads(run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-8", "--chunk", "2", "--json",
                              env=env).stdout)["id"]
    done = wait_state(env, job, ("done", "failed"))
    assert (done["state"], done["frames_done"], done["counts"]["done"]) == ("done", 8, 4), (database, done)
    listed = json.loads(run_farm("jobs", "--json", env=env).stdout)
    assert [j["id"] for j in listed] == [job]
    tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
    assert [t["state"] for t in tasks] == ["done"] * 4 and all(t["attempts"][-1]["state"] == "done" for t in tasks)
    workers = json.loads(run_farm("workers", "--json", env=env).stdout)
    assert len(workers) == 2 and all(w["capabilities"]["renderers"] for w in workers)

    # Verbs: a long null job, suspended, reprioritised, resumed, then a second one cancelled.
    slow = json.loads(run_farm("submit", str(EXAMPLES / "orbit.toml"), "--renderer", "null", "--frames", "1-3000",
                               "--json", env=env).stdout)["id"]
    run_farm("suspend", slow, env=env)
    assert wait_state(env, slow, ("suspended",))["state"] == "suspended"
    run_farm("priority", slow, "80", env=env)
    assert status(env, slow)["priority"] == 80
    run_farm("resume", slow, env=env)
    wait_for(lambda: status(env, slow)["frames_done"] > 0, 60, "the resumed job to render")
    run_farm("cancel", slow, env=env)
    cancelled = wait_state(env, slow, ("cancelled",))
    assert cancelled["frames_done"] < 3000
    final = status(env, job)
    assert final["state"] == "done" and final["frames_done"] == 8
