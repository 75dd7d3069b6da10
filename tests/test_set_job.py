"""`farm set JOB`: a job's settings changed while it runs. Running attempts keep those they
started with; prefetched and new ones get the new ones. The manager runs in-process on a real
Valkey, SQLite and file storage; the nodes are the test acting as enrolled nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import farm_env, run_farm
from nodekit import SPEC, SteppedFarm, stepped_farm
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from renderfarm.db import session_scope
from renderfarm.models import AttemptState, Job
from renderfarm.queues import TIMEOUT_MARGIN
from renderfarm.status import job_status
from renderfarm.wire import CancelIntent, SetIntent, Started, SubmitIntent, WireError


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path) as farm:
        yield farm


def order(farm: SteppedFarm, attempt_id: int, worker: str) -> tuple[dict, int]:
    """The task order a node finds on its queue for an attempt (opened with its key), and the
    timeout RQ was given for it."""
    rq_job = RQJob.fetch(farm.manager.book.rq_id(worker, attempt_id), connection=farm.manager.r,
                         serializer=JSONSerializer)
    return farm.nodes[worker].open(rq_job.args[0]), rq_job.timeout


def setting(farm: SteppedFarm, request: str, **body):
    return farm.ask(SetIntent(request_id=request * 32, job=farm.job_id, **body))


def test_new_settings_reach_the_next_attempts_and_not_the_running_ones(farm: SteppedFarm) -> None:
    farm.beat("a")
    reply = farm.ask(SubmitIntent(request_id="5" * 32, job=SPEC))
    farm.job_id = reply.job_id
    farm.beat("a")
    first, prefetched = [a for a, w, _ in farm.attempts() if w == "a"]
    assert order(farm, first, "a")[0]["timeout"] == 3600
    farm.nodes["a"].post(farm.manager.r, Started(worker="a", attempt_id=first, elapsed=0.1))
    farm.manager.tick()

    reply = setting(farm, "1", timeout=5, max_workers=1, retries=0)
    assert reply.ok and reply.changed, reply
    with session_scope(farm.manager.engine) as s:
        job = s.get(Job, farm.job_id)
        assert (job.timeout, job.max_workers, job.max_attempts) == (5, 1, 1)
        shown = job_status(s, job).to_json()
        assert (shown["timeout"], shown["max_workers"], shown["retries"]) == (5, 1, 0)
    # The running attempt keeps its hour; the prefetched one went back to be handed out again.
    states = {a: s for a, _, s in farm.attempts()}
    assert states[first] == "running" and states[prefetched] == "cancelled", states
    farm.beat("a", "b")
    queued = farm.attempts(AttemptState.QUEUED)
    # --max-workers 1: a renders, b is given nothing.
    assert queued and {w for _, w, _ in queued} == {"a"}, queued
    opened, rq_timeout = order(farm, queued[0][0], "a")
    assert opened["timeout"] == 5 and rq_timeout == 5 + TIMEOUT_MARGIN

    assert setting(farm, "2", timeout=5).changed is False  # the same again: nothing to do
    assert setting(farm, "3", max_workers=0).changed  # the cap lifted: b renders too
    farm.beat("a", "b")
    assert "b" in {w for _, w, _ in farm.attempts(AttemptState.QUEUED)}

    reply = setting(farm, "4", pool="gpu", requires=("fast",))
    with session_scope(farm.manager.engine) as s:
        job = s.get(Job, farm.job_id)
        assert (job.pool, job.requires) == ("gpu", "fast")
    farm.beat("a", "b")
    assert not farm.attempts(AttemptState.QUEUED)  # nobody is in pool gpu
    assert setting(farm, "5", requires=()).changed
    with session_scope(farm.manager.engine) as s:
        assert s.get(Job, farm.job_id).requires is None


def test_a_set_that_makes_no_sense_is_refused_in_one_line(farm: SteppedFarm, tmp_path: Path) -> None:
    farm.job_id = farm.ask(SubmitIntent(request_id="6" * 32, job=SPEC)).job_id
    farm.ask(CancelIntent(request_id="7" * 32, job=farm.job_id))
    reply = setting(farm, "8", timeout=5)
    assert not reply.ok and reply.error.startswith(f"job {farm.job_id} is cancelled: its settings no longer matter")
    with pytest.raises(WireError, match="nothing to change"):
        SetIntent.parse('{"type": "set", "request_id": "' + "9" * 32 + f'", "job": "{farm.job_id}"}}')
    with pytest.raises(WireError, match="timeout"):
        SetIntent.parse('{"type": "set", "request_id": "' + "9" * 32 + f'", "job": "{farm.job_id}", "timeout": 0}}')

    env = farm_env(tmp_path / "state")
    for args, says in ((["--timeout", "soon"], "timeout: 'soon'"), (["--max-workers", "-1"], "max_workers: -1"),
                       (["--require", "a b"], "require"), (["--require", "x", "--any-worker"], "cannot go together"),
                       ([], "nothing to change")):
        bad = run_farm("set", "abcd1234", *args, env=env, check=False)
        assert bad.returncode != 0 and says in bad.stderr and bad.stderr.strip().count("\n") == 0, (args, bad)
