"""OpenJD jobs in a manager in this process (real Valkey, SQLite and file storage, its clock
stepped by the test), the test acting as the nodes: every task of every step becomes a farm task;
a step's tasks are dispatched only once every task of the steps it depends on is done (decided
from the database, also after a Redis wipe); host requirements and FARM_ALLOW_OPENJD decide who
may run them, and a job nobody may run is unschedulable with the reason; deadline:* settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nodekit import SteppedFarm, stepped_farm
from openjdkit import OPENJD_NODE, TWO_STEPS, beat, finish, queued_orders, run, submit, with_host
from sqlalchemy import select

from renderfarm.db import session_scope
from renderfarm.models import Attempt, AttemptState, Job, Task
from renderfarm.openjd import template_sha256
from renderfarm.status import job_status
from renderfarm.wire import Capabilities


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path) as farm:
        yield farm


def steps_of(farm: SteppedFarm, attempts) -> list[str]:
    """The step of each attempt's task."""
    with session_scope(farm.manager.engine) as s:
        return [s.get(Task, s.get(Attempt, a).task_id).step for a, _, _ in attempts]


def test_every_task_of_every_step_is_a_farm_task_with_its_step_and_parameters(farm: SteppedFarm) -> None:
    job_id = submit(farm, parameters={"Frames": "1-100"})
    with session_scope(farm.manager.engine) as s:
        job = s.get(Job, job_id)
        rows = s.execute(select(Task.index, Task.kind, Task.step, Task.parameters).order_by(Task.index)).all()
        assert (job.renderer, job.task_count, job.frame_count, job.state) == ("openjd", 20, 20, "queued")
        assert job.scene_key == f"scenes/{template_sha256(TWO_STEPS)}.json"
        assert json.loads(job.openjd_steps) == {"Render": {"after": []}, "Sheet": {"after": ["Render"]}}
        assert json.loads(job.openjd_template)["job_parameters"] == {"Frames": "1-100", "Quality": "3"}
    assert [r.index for r in rows] == list(range(20)) and {r.kind for r in rows} == {"openjd"}
    assert [r.step for r in rows] == ["Render"] * 10 + ["Sheet"] * 10
    assert [json.loads(r.parameters)["Frame"]["value"] for r in rows[:10]] == [
        f"{a}-{a + 9}" for a in range(1, 100, 10)]
    assert json.loads(rows[10].parameters) == {"Page": {"type": "INT", "value": "1"},
                                               "Side": {"type": "STRING", "value": "left"},
                                               "Tile": {"type": "INT", "value": "7"}}


def test_a_step_waits_until_every_task_of_the_step_it_depends_on_is_done(farm: SteppedFarm) -> None:
    nodes = {"a": OPENJD_NODE, "b": OPENJD_NODE}
    beat(farm, nodes)
    submit(farm)
    beat(farm, nodes)
    queued = farm.attempts(AttemptState.QUEUED)
    # Four free slots (two nodes, two deep), three Render tasks: the Sheet step waits.
    assert steps_of(farm, queued) == ["Render"] * 3
    order = next(o for w in nodes for o in queued_orders(farm, w) if o["attempt_id"] == queued[0][0])
    assert order["kind"] == "openjd"
    assert order["openjd"] == {
        "template": json.loads(json.dumps(TWO_STEPS, sort_keys=True)),
        "job_parameters": {"Frames": "1-25", "Quality": "3"},
        "step": "Render",
        "task_parameters": {"Frame": {"type": "CHUNK[INT]", "value": "1-9"}},
    }
    finish(farm, queued[0][0])
    farm.fail(queued[1][0])  # failed once: retried, and the Sheet step still waits for it
    beat(farm, nodes)
    assert steps_of(farm, farm.attempts(AttemptState.QUEUED)) == ["Render", "Render"]
    farm.manager.r.flushall()  # the decision is the database's: a Redis wipe changes nothing
    for _ in range(3):
        beat(farm, nodes)
    def render_done() -> bool:
        return all(state == "done" for i, state in farm.tasks().items() if i < 3)

    while not render_done():
        assert set(steps_of(farm, farm.attempts())) == {"Render"}  # never a Sheet task before
        finish(farm, farm.attempts(AttemptState.QUEUED)[0][0])
        beat(farm, nodes)
    queued = farm.attempts(AttemptState.QUEUED)
    assert steps_of(farm, queued) == ["Sheet"] * 4
    while queued := farm.attempts(AttemptState.QUEUED):
        for attempt_id, _, _ in queued:
            finish(farm, attempt_id)
        beat(farm, nodes)
    assert set(farm.tasks().values()) == {"done"} and farm.job_state() == "done"


def test_a_step_whose_host_requirements_no_live_worker_meets_is_unschedulable_with_the_reason(
        farm: SteppedFarm) -> None:
    needs = with_host(TWO_STEPS, 1, amounts=[{"name": "amount.worker.gpu", "min": 1}],
                      attributes=[{"name": "attr.worker.os.family", "anyOf": ["linux"]}])
    beat(farm, {"a": OPENJD_NODE, "b": OPENJD_NODE})
    job_id = submit(farm, needs)
    with session_scope(farm.manager.engine) as s:
        why = job_status(s, s.get(Job, job_id)).unschedulable
    assert why == "step 'Sheet': no live worker of pool 'default' has amount.worker.gpu >= 1"
    gpu = OPENJD_NODE.model_copy(update={"gpus": 1})
    farm.manager.clock.advance(10)  # the manager writes a worker's row (its capabilities) every 5 s
    beat(farm, {"a": OPENJD_NODE, "b": gpu})
    with session_scope(farm.manager.engine) as s:
        assert job_status(s, s.get(Job, job_id)).unschedulable is None
    # The Sheet step, once runnable, goes to the node with the GPU alone.
    while farm.attempts(AttemptState.QUEUED):
        for attempt_id, _, _ in farm.attempts(AttemptState.QUEUED):
            finish(farm, attempt_id)
        beat(farm, {"a": OPENJD_NODE, "b": gpu})
    with session_scope(farm.manager.engine) as s:
        sheet = s.execute(select(Attempt.worker).join(Task, Task.id == Attempt.task_id)
                          .where(Task.step == "Sheet")).scalars().all()
    assert len(sheet) == 10 and set(sheet) == {"b"}
    assert farm.job_state() == "done"


def test_only_workers_that_opt_in_take_openjd_tasks(farm: SteppedFarm) -> None:
    plain = Capabilities(renderers={"builtin": "1", "null": "1"}, cores=8, os_family="linux")
    beat(farm, {"a": plain, "b": plain})
    job_id = submit(farm)
    beat(farm, {"a": plain, "b": plain})
    assert farm.attempts() == []
    with session_scope(farm.manager.engine) as s:
        why = job_status(s, s.get(Job, job_id)).unschedulable
    assert why == ("no live worker of pool 'default' with the needed tags runs OpenJD tasks "
                   "(a node opts in with FARM_ALLOW_OPENJD=1)")
    farm.manager.clock.advance(10)  # the next periodic dispatch round
    beat(farm, {"a": plain, "b": OPENJD_NODE})
    assert {w for _, w, _ in farm.attempts()} == {"b"}


def test_deadline_settings_reach_the_job(farm: SteppedFarm) -> None:
    beat(farm, {"a": OPENJD_NODE})
    job_id = submit(farm, priority=70, max_attempts=6, suspended=True, max_workers=2)
    beat(farm, {"a": OPENJD_NODE})
    with session_scope(farm.manager.engine) as s:
        job = s.get(Job, job_id)
        assert (job.priority, job.max_attempts, job.max_workers, job.state) == (70, 6, 2, "suspended")
    assert farm.attempts() == []  # suspended: nothing starts until it is resumed


def test_a_job_fails_once_its_failed_tasks_reach_its_limit_and_its_other_tasks_are_not_run(
        farm: SteppedFarm) -> None:
    from renderfarm.wire import RetryIntent

    nodes = {"a": OPENJD_NODE, "b": OPENJD_NODE}
    beat(farm, nodes)
    # deadline:maxRetriesPerTask 0 and deadline:maxFailedTasksCount 2: the second failed task fails the job.
    job_id = submit(farm, max_attempts=1, max_failed_tasks=2)
    beat(farm, nodes)
    first, second, third = (a for a, _, _ in farm.attempts(AttemptState.QUEUED))
    farm.fail(first)  # one task failed for good: under the limit, the job goes on
    beat(farm, nodes)
    assert farm.job_state() == "running" and farm.attempts(AttemptState.QUEUED)[-1][0] == third
    farm.fail(second)
    with session_scope(farm.manager.engine) as s:
        job = s.get(Job, job_id)
        assert (job.state, job.error) == ("failed", f"2 tasks failed: {job_id}:0, {job_id}:1; the limit is 2 failed "
                                                    "tasks, so 11 unfinished tasks were cancelled")
        assert s.get(Attempt, third).state == "cancelled"
    assert farm.tasks() == {0: "failed", 1: "failed", **{i: "cancelled" for i in range(2, 13)}}
    # The queued one was taken back from its node's queue (the test's nodes take none from theirs).
    assert third not in {o["attempt_id"] for w in nodes for o in queued_orders(farm, w)}
    farm.manager.clock.advance(10)
    beat(farm, nodes)
    assert farm.attempts(AttemptState.QUEUED) == []  # nothing more is handed out
    # `farm retry` renders the failed tasks and the ones the limit cancelled.
    assert farm.ask(RetryIntent(request_id=farm.request_id(), job=job_id)).ok
    beat(farm, nodes)
    assert farm.job_state() == "running" and set(farm.tasks().values()) == {"pending", "queued"}


def test_a_task_whose_dependencies_wrote_more_files_than_an_order_carries_fails_with_the_count(
        farm: SteppedFarm) -> None:
    """Submit checks one file per task depended on; each of these two wrote 501. The Gather task
    would need 1,002 inputs: handed out, its node refused the order (over the 1,000 an order
    carries) and the task was handed out again, forever. It fails at dispatch, naming the count."""
    import hashlib

    from renderfarm.storage.keys import attempt_prefix
    from renderfarm.wire import Done, Output, Started, Usage

    template = {
        "specificationVersion": "jobtemplate-2023-09", "name": "Many files",
        "steps": [
            {"name": "Render", "parameterSpace": {"taskParameterDefinitions": [
                {"name": "Part", "type": "INT", "range": [1, 2]}]}, "script": run("{{Task.Param.Part}}")},
            {"name": "Gather", "dependencies": [{"dependsOn": "Render"}], "script": run("gather")},
        ],
    }
    nodes = {"a": OPENJD_NODE, "b": OPENJD_NODE}
    beat(farm, nodes)
    job_id = submit(farm, template)
    beat(farm, nodes)
    renders = farm.attempts(AttemptState.QUEUED)
    assert steps_of(farm, renders) == ["Render", "Render"]
    for attempt_id, worker, _ in renders:
        with session_scope(farm.manager.engine) as s:
            attempt = s.get(Attempt, attempt_id)
            prefix = attempt_prefix(worker, job_id, s.get(Task, attempt.task_id).index, attempt.number)
        outputs = []
        for i in range(501):
            data, path = f"part of {attempt_id}: {i}\n".encode(), f"Out/{attempt_id}/{i:04d}.txt"
            farm.manager.storage.put_bytes(f"{prefix}outputs/{path}", data)
            outputs.append(Output(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
        node = farm.nodes[worker]
        node.post(farm.manager.r, Started(worker=worker, attempt_id=attempt_id, elapsed=0.1))
        node.post(farm.manager.r, Done(worker=worker, attempt_id=attempt_id, outputs=tuple(outputs),
                                       usage=Usage(wall=1.0)))
        farm.manager.tick()
    beat(farm, nodes)
    assert farm.tasks() == {0: "done", 1: "done", 2: "failed"}
    assert [a for a in farm.attempts() if a[0] not in {r[0] for r in renders}] == []  # never handed out
    with session_scope(farm.manager.engine) as s:
        gather = s.scalars(select(Task).where(Task.index == 2)).one()
        job = s.get(Job, job_id)
        assert gather.error == ("step 'Gather': this task would need 1,002 input files (the job's, and those the "
                                "steps it depends on wrote), over the 1,000 a task may carry")
        assert job.state == "failed"
    farm.manager.clock.advance(10)
    beat(farm, nodes)
    assert farm.tasks()[2] == "failed"
    assert {o["openjd"]["step"] for w in nodes for o in queued_orders(farm, w)} == {"Render"}  # no Gather order
