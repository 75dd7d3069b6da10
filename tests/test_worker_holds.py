"""`farm worker drain|disable|enable`: a held worker finishes what it renders and is given nothing
new; a drain ends when the worker leaves the farm, a disable lasts across its restarts and the
manager's. The manager runs in-process on a real Valkey, SQLite and file storage, its clock
stepped by the test; the nodes are the test acting as enrolled nodes, uploading real PNGs that
the manager checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import farm_env, run_farm
from nodekit import SPEC, SteppedFarm, stepped_farm
from test_manager_loop import in_process_manager

from renderfarm.models import AttemptState
from renderfarm.wire import (
    Bye,
    Started,
    SubmitIntent,
    WireError,
    WorkerHoldIntent,
)


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path) as farm:
        yield farm


def test_a_drained_worker_finishes_its_render_takes_nothing_new_and_shows_drained(farm: SteppedFarm) -> None:
    farm.beat("a")  # only a is there yet: it is given a render and a prefetch
    assert farm.ask(SubmitIntent(request_id="5" * 32, job=SPEC)).ok
    farm.beat("a")
    mine = [a for a, w, _ in farm.attempts() if w == "a"]
    assert len(mine) == 2, farm.attempts()
    farm.nodes["a"].post(farm.manager.r, Started(worker="a", attempt_id=mine[0], elapsed=0.1))
    farm.manager.tick()

    reply = farm.hold("a", "drain")
    assert reply.ok and reply.changed and reply.state == "draining", reply
    # Its prefetched attempt went back; the one it renders is still its own.
    assert [(a, s) for a, w, s in farm.attempts() if w == "a"] == [(mine[0], "running"), (mine[1], "cancelled")]
    assert farm.shown()["a"] == "draining"
    assert farm.hold("a", "drain").changed is False  # safe to repeat

    farm.beat("a", "b")  # b arrives: the rest goes to b only
    farm.render(mine[0])
    assert farm.shown() == {"a": "drained", "b": "idle"}
    while farm.job_state() != "done":
        queued = farm.attempts(AttemptState.QUEUED)
        assert queued, farm.attempts()
        for attempt_id, worker, _ in queued:
            assert worker == "b", f"the drained worker was given attempt {attempt_id}"
            farm.render(attempt_id)
        farm.beat()
    assert [w for _, w, s in farm.attempts() if s == "done"].count("a") == 1

    assert farm.hold("a", "enable").state == "enabled"
    assert farm.shown()["a"] == "idle"


def test_a_disable_lasts_across_restarts_and_a_drain_ends_when_its_worker_leaves(
        farm: SteppedFarm, redis_url: str, tmp_path: Path) -> None:
    assert farm.hold("a", "disable").state == "disabled"
    assert farm.hold("b", "drain").state == "drained"
    for name in ("a", "b"):  # both workers stop and start again
        farm.nodes[name].post(farm.manager.r, Bye(worker=name))
    farm.manager.tick()
    farm.beat()
    assert farm.shown() == {"a": "disabled", "b": "idle"}
    assert farm.ask(SubmitIntent(request_id="6" * 32, job=SPEC)).ok
    farm.beat()
    assert {w for _, w, _ in farm.attempts()} == {"b"}

    # The manager starts again: the disable is in the database.
    farm.manager.engine.dispose()
    again = in_process_manager(redis_url, tmp_path)
    farm.manager = again
    farm.render(farm.attempts(AttemptState.QUEUED)[0][0])
    farm.beat()
    assert {w for _, w, _ in farm.attempts()} == {"b"}
    assert farm.shown()["a"] == "disabled"
    assert farm.hold("a", "enable").changed
    farm.beat()
    assert "a" in {w for _, w, _ in farm.attempts(AttemptState.QUEUED)}


def test_a_hold_of_a_node_that_is_not_enrolled_is_refused_in_one_line(farm: SteppedFarm) -> None:
    reply = farm.hold("nobody", "drain")
    assert not reply.ok and reply.error == "worker 'nobody': no such enrolled node (`farm node list` shows them)"
    with pytest.raises(WireError, match="hold"):
        WorkerHoldIntent.parse('{"type": "worker", "request_id": "' + "1" * 32 + '", "name": "a", "hold": "nap"}')


def test_the_cli_names_a_bad_worker_in_one_line(tmp_path: Path) -> None:
    env = farm_env(tmp_path / "state")
    bad = run_farm("worker", "drain", "no/such", env=env, check=False)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "no/such" in bad.stderr, bad
    down = run_farm("worker", "disable", "a", env=env, check=False)
    assert down.returncode != 0 and "not running" in down.stderr, down
