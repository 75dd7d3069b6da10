"""`farm submit --after JOB --frame-by-frame`: each task of the following job starts once its
frames are done in JOB, applied by a manager in this process (real Valkey, SQLite and file
storage) whose nodes the test acts as; and the wire refusing --frame-by-frame alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodekit import SPEC, SteppedFarm
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm.db import session_scope
from renderfarm.errors import InputError
from renderfarm.frames import parse_frames
from renderfarm.models import Attempt, AttemptState, Task
from renderfarm.status import job_status
from renderfarm.wire import CancelIntent, JobSpec, TaskIntent


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    manager = in_process_manager(redis_url, tmp_path)
    farm = SteppedFarm(manager, ("a", "b"))
    yield farm
    manager.engine.dispose()


def follow(farm: SteppedFarm, job: str, frames: str, chunk: int = 1, priority: int = 50) -> str:
    return farm.submit(SPEC.model_copy(update={"name": "comp", "frames": frames, "chunk": chunk, "after": job,
                                               "frame_by_frame": True, "priority": priority}))


def tasks_of(farm: SteppedFarm, job: str) -> dict[str, str]:
    """Frames spec -> state, of one job's tasks."""
    with session_scope(farm.manager.engine) as s:
        return dict(s.execute(select(Task.frames, Task.state).where(Task.job_id == job).order_by(Task.index)).all())


def handed_out(farm: SteppedFarm, job: str) -> set[str]:
    """The frame specs of the job's tasks that were ever handed to a worker."""
    with session_scope(farm.manager.engine) as s:
        return set(s.scalars(select(Task.frames).join(Attempt, Attempt.task_id == Task.id)
                             .where(Attempt.job_id == job)))


def queued_of(farm: SteppedFarm, job: str) -> list[int]:
    with session_scope(farm.manager.engine) as s:
        return list(s.scalars(select(Attempt.id).where(Attempt.job_id == job,
                                                       Attempt.state == AttemptState.QUEUED.value)))


def frames_there(farm: SteppedFarm, job: str) -> set[int]:
    return {f for spec, state in tasks_of(farm, job).items() if state in ("done", "skipped")
            for f in parse_frames(spec)}


def status(farm: SteppedFarm, job: str):
    from renderfarm.models import Job

    with session_scope(farm.manager.engine) as s:
        return job_status(s, s.get(Job, job), now=0.0)


def test_each_frame_starts_once_its_own_frame_is_done_in_the_job_it_follows(farm: SteppedFarm) -> None:
    farm.beat()
    plate = farm.submit()  # frames 1-6
    comp = follow(farm, plate, "1-6", priority=90)  # it takes each slot that frees
    farm.beat()
    assert handed_out(farm, comp) == set()  # four slots, all the plate's: nothing of comp is ready
    shown = status(farm, comp)
    assert (shown.after, shown.frame_by_frame, shown.waiting_on, shown.blocked) == (plate, True, plate, None)

    farm.render(next(a for a in queued_of(farm, plate) if farm.task_of(a) == 1))  # the plate's frame 2 first
    farm.beat()
    assert handed_out(farm, comp) == {"2"}
    finished_first = None
    while tasks_of(farm, comp)["1"] != "done" or finished_first is None:
        for attempt in queued_of(farm, plate)[:1] + queued_of(farm, comp):
            farm.render(attempt)
            # No frame of comp was ever handed out before its own frame was done in the plate.
            assert {int(f) for f in handed_out(farm, comp)} <= frames_there(farm, plate)
            if finished_first is None and tasks_of(farm, comp)["1"] == "done":
                finished_first = set(tasks_of(farm, plate).values())
        farm.beat()
    assert "done" in finished_first and finished_first != {"done"}  # the plate still had frames to go
    farm.render_all()
    assert set(tasks_of(farm, plate).values()) == set(tasks_of(farm, comp).values()) == {"done"}
    assert status(farm, comp).state == "done" and status(farm, comp).waiting_on is None


def test_frames_the_followed_job_does_not_render_do_not_wait_and_chunks_wait_for_all_theirs(
        farm: SteppedFarm) -> None:
    farm.beat()
    plate = farm.submit(SPEC.model_copy(update={"frames": "1-4", "chunk": 2}))  # tasks 1-2 and 3-4
    comp = follow(farm, plate, "3-8", chunk=3)  # tasks 3-5 and 6-8
    assert handed_out(farm, comp) == {"6-8"}  # past the plate's frames: at once
    first = next(a for a in queued_of(farm, plate) if farm.task_of(a) == 0)  # frames 1-2
    farm.render(first)
    assert handed_out(farm, comp) == {"6-8"}  # frames 1-2 are not comp's
    farm.render(next(a for a in queued_of(farm, plate)))  # frames 3-4
    farm.beat()
    assert handed_out(farm, comp) == {"3-5", "6-8"}


def test_a_skipped_frame_counts_as_there(farm: SteppedFarm) -> None:
    farm.beat("a")
    plate = farm.submit(SPEC.model_copy(update={"frames": "1-3"}))
    comp = follow(farm, plate, "1-3", priority=90)  # it takes the slot the skip frees
    reply = farm.ask(TaskIntent(request_id=farm.request_id(), job=plate, action="skip", frames="2"))
    assert reply.ok, reply
    farm.beat("a")
    assert "2" in handed_out(farm, comp) and "1" not in handed_out(farm, comp)


def test_after_the_followed_job_is_cancelled_its_done_frames_still_render_and_the_rest_are_blocked(
        farm: SteppedFarm) -> None:
    farm.beat("a")
    plate = farm.submit(SPEC.model_copy(update={"frames": "1-3"}))
    comp = follow(farm, plate, "1-3")
    farm.render(next(a for a in queued_of(farm, plate) if farm.task_of(a) == 0))  # the plate's frame 1
    reply = farm.ask(CancelIntent(request_id=farm.request_id(), job=plate))
    assert reply.ok, reply
    farm.render_all()
    assert tasks_of(farm, comp) == {"1": "done", "2": "pending", "3": "pending"}
    shown = status(farm, comp)
    assert (shown.state, shown.waiting_on, shown.blocked) == ("running", plate, f"{plate} cancelled")


def test_frame_by_frame_without_after_is_refused_in_one_line() -> None:
    with pytest.raises(InputError, match=r"^frame-by-frame: .*add --after JOB$"):
        JobSpec.parse(SPEC.model_copy(update={"frame_by_frame": True}).model_dump_json())


def test_farm_submit_refuses_frame_by_frame_without_after_in_one_line(tmp_path: Path) -> None:
    from conftest import EXAMPLES, farm_env, run_farm

    proc = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frame-by-frame", env=farm_env(tmp_path / "state"),
                    check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "farm: frame-by-frame: it follows the frames of another job: add --after JOB"
