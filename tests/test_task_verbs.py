"""`farm task kill|retry|skip`: applied by a manager in this process (real Valkey, SQLite and file
storage, its clock stepped by the test) to tasks of a job the test renders as its nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodekit import SPEC, SteppedFarm, stepped_farm

from renderfarm import keys
from renderfarm.downloads import download
from renderfarm.models import AttemptState
from renderfarm.wire import TaskIntent, WireError


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path) as farm:
        yield farm


def task_verb(farm: SteppedFarm, job: str, action: str, *tasks: int, frames: str | None = None):
    return farm.ask(TaskIntent(request_id=farm.request_id(), job=job, action=action, tasks=tasks, frames=frames))


def test_kill_fails_the_running_attempt_takes_its_lease_and_the_task_renders_on_another_worker(
        farm: SteppedFarm) -> None:
    farm.beat("a")
    job = farm.submit()
    farm.beat("a")
    running = farm.attempts()[0][0]
    farm.start(running)
    task = farm.task_of(running)
    lease = keys.lease_key(farm.task_id(task))
    assert int(farm.manager.r.get(lease)) == running
    farm.beat("a", "b")

    reply = task_verb(farm, job, "kill", task)
    assert reply.ok and reply.changed and reply.tasks == (task,), reply
    assert farm.manager.r.get(lease) != str(running).encode()  # the render stops at its next lease check
    assert {a: s for a, _, s in farm.attempts()}[running] == "failed"
    assert task_verb(farm, job, "kill", task).changed is False  # nothing runs it now
    while not (again := [w for a, w, _ in farm.attempts(AttemptState.QUEUED) if farm.task_of(a) == task]):
        farm.render(farm.attempts(AttemptState.QUEUED)[0][0])  # b's queue frees up
        farm.beat()
    assert again == ["b"], farm.attempts()  # not where it was killed
    farm.render_all()
    assert farm.job_state() == "done"


def test_skip_makes_tasks_final_unrendered_and_the_job_completes_without_them(farm: SteppedFarm, tmp_path: Path) -> None:
    farm.beat("a")
    job = farm.submit()
    farm.beat("a")
    first_attempt = farm.attempts()[0][0]
    first = farm.task_of(first_attempt)
    farm.start(first_attempt)
    # Frames 5-6, not started, and the running first task.
    reply = task_verb(farm, job, "skip", frames="5-6")
    assert reply.changed and len(reply.tasks) == 2
    assert task_verb(farm, job, "skip", first).tasks == (first,)
    assert farm.manager.r.get(keys.lease_key(farm.task_id(first))) != str(first_attempt).encode()  # it stops
    assert task_verb(farm, job, "skip", frames="5-6").changed is False  # safe to repeat
    farm.beat("a", "b")
    farm.render_all()
    assert farm.job_state() == "done"
    assert sorted(s for s in farm.tasks().values()) == ["done", "done", "done", "skipped", "skipped", "skipped"]

    got = download(farm.manager.settings, job, tmp_path / "dest")
    assert got.not_rendered == [1, 5, 6] and not got.missing and not got.failed
    assert sorted(p.name for p in got.paths) == ["shot.0002.png", "shot.0003.png", "shot.0004.png"]

    # Retry renders skipped (and done) tasks again; the job runs again.
    assert task_verb(farm, job, "retry", frames="5-6").changed
    assert farm.job_state() == "running"
    farm.beat()
    farm.render_all()
    assert farm.job_state() == "done"
    assert download(farm.manager.settings, job, tmp_path / "dest2").not_rendered == [1]


def test_skipping_a_failed_jobs_failed_tasks_lets_it_finish_done(farm: SteppedFarm) -> None:
    farm.beat("a", "b")
    job = farm.submit(SPEC.model_copy(update={"frames": "1-2"}))
    farm.beat()
    failing = min(farm.tasks())
    for _ in range(3):
        attempt = next(a for a, _, _ in farm.attempts(AttemptState.QUEUED) if farm.task_of(a) == failing)
        farm.fail(attempt)
        farm.beat()
    farm.render_all()
    assert farm.job_state() == "failed"
    assert task_verb(farm, job, "skip", failing).changed
    farm.manager.tick()
    assert farm.job_state() == "done"


def test_task_verbs_refuse_what_makes_no_sense_in_one_line(farm: SteppedFarm) -> None:
    job = farm.submit(SPEC.model_copy(update={"frames": "1-6", "chunk": 4}))
    reply = task_verb(farm, job, "skip", 99)
    assert not reply.ok and reply.error == f"task {job}:99: no such task (the job has 2)"
    reply = task_verb(farm, job, "skip", frames="2-3")
    assert not reply.ok and "is only partly inside" in reply.error, reply
    reply = task_verb(farm, job, "skip", frames="100-200")
    assert not reply.ok and reply.error == f"frames=100-200: job {job} has no task rendering those frames"
    with pytest.raises(WireError, match="one of them"):
        TaskIntent(request_id="1" * 32, job=job, action="kill")
    with pytest.raises(WireError, match="action"):
        TaskIntent.parse('{"type": "task", "request_id": "' + "1" * 32 + f'", "job": "{job}", "action": "eat", '
                         '"tasks": [1]}')

    tiled = farm.submit(SPEC.model_copy(update={"frames": "1-2", "tiles": "2x1"}))
    reply = task_verb(farm, tiled, "skip", 0)
    assert not reply.ok and "skip the whole frame" in reply.error, reply
    assert task_verb(farm, tiled, "skip", frames="1").changed  # its tiles and its assembly
