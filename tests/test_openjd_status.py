"""`farm status` of an OpenJD job speaks of steps and tasks, not frames: each step's tasks done of
all, its other tasks by state, its progress, the steps it still waits for and its newest
openjd_status text; `--json` carries the same as `steps`, its other fields as for any job."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from nodekit import SteppedFarm, stepped_farm
from openjdkit import OPENJD_NODE, beat, finish, submit

from renderfarm.db import session_scope
from renderfarm.jobstatus import StepStatus, summarize_steps
from renderfarm.models import AttemptState, Job
from renderfarm.status import job_status
from renderfarm.wire import Progress, Started

STEPS = json.dumps({"Render": {"after": []}, "Sheet": {"after": ["Render"]}})


def test_steps_are_summarized_in_task_order_with_progress_what_they_wait_for_and_their_status() -> None:
    rows = [("Sheet", "pending", 10, 0.0, 3), ("Render", "done", 1, 1.0, 0), ("Render", "running", 1, 0.5, 1),
            ("Render", "queued", 1, 0.0, 2)]
    texts = [("Render", "frame 12 of 17"), ("Render", "an older line")]
    assert summarize_steps(STEPS, rows, texts) == [
        StepStatus("Render", 3, 1, 0.5, {"queued": 1, "running": 1, "done": 1}, [], [], "frame 12 of 17"),
        StepStatus("Sheet", 10, 0, 0.0, {"pending": 10}, ["Render"], ["Render"], None),
    ]
    done = [("Render", "done", 3, 3.0, 0), ("Sheet", "done", 4, 4.0, 3), ("Sheet", "failed", 6, 0.0, 4)]
    assert summarize_steps(STEPS, done, []) == [
        StepStatus("Render", 3, 3, 1.0, {"done": 3}, [], [], None),
        StepStatus("Sheet", 10, 4, 0.4, {"done": 4, "failed": 6}, ["Render"], [], None),
    ]


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path / "farm") as farm:
        yield farm


def status(farm: SteppedFarm, job_id: str, *args: str) -> str:
    return farm.cli("status", job_id, *args)


def test_farm_status_of_an_openjd_job_shows_its_steps_and_tasks(farm: SteppedFarm) -> None:
    nodes = {"a": OPENJD_NODE, "b": OPENJD_NODE}
    beat(farm, nodes)
    job_id = submit(farm, max_failed_tasks=5)  # Render: 3 tasks; Sheet: 10, after Render
    beat(farm, nodes)
    first, second, _ = (a for a, w, _ in farm.attempts(AttemptState.QUEUED))
    finish(farm, first)
    worker = next(w for a, w, _ in farm.attempts() if a == second)
    farm.nodes[worker].post(farm.manager.r, Started(worker=worker, attempt_id=second, elapsed=0.1))
    farm.nodes[worker].post(farm.manager.r, Progress(worker=worker, attempt_id=second, progress=0.5,
                                                     status="frame 12 of 17"))
    farm.manager.tick()
    text = status(farm, job_id)
    lines = [line for line in text.splitlines()
             if line.startswith(("  steps", "  progress", "  tasks", "  step ", "  failures"))]
    assert lines == [
        "  steps     2 steps, 13 tasks",
        "  progress  11.5%  (1/13 tasks done)",
        "  tasks     10 pending, 1 queued, 1 running, 1 done",
        "  step      Render: 1/3 tasks done, 1 queued, 1 running (50.0%); status: frame 12 of 17",
        "  step      Sheet: 0/10 tasks done, 10 pending (0.0%); waits for Render",
        "  failures  the job fails once 5 tasks have failed (0 so far)",  # its deadline:maxFailedTasksCount
    ]
    assert "frame" not in text.replace("frame 12 of 17", "")  # no frames, no 0x0 size
    doc = json.loads(status(farm, job_id, "--json"))
    assert doc["steps"] == [
        {"name": "Render", "tasks": 3, "done": 1, "progress": 0.5, "counts": {"queued": 1, "running": 1, "done": 1},
         "after": [], "waiting_on": [], "status": "frame 12 of 17"},
        {"name": "Sheet", "tasks": 10, "done": 0, "progress": 0.0, "counts": {"pending": 10}, "after": ["Render"],
         "waiting_on": ["Render"], "status": None},
    ]
    assert (doc["tasks"], doc["frames_done"], doc["counts"]["done"], doc["state"], doc["max_failed_tasks"]) == (
        13, 1, 1, "running", 5)
    with session_scope(farm.manager.engine) as s:  # the ORM's view agrees with the CLI's plain SQL
        assert [asdict(step) for step in job_status(s, s.get(Job, job_id)).steps] == doc["steps"]


def test_farm_jobs_and_the_farms_status_count_an_openjd_jobs_steps_and_tasks_not_frames(farm: SteppedFarm) -> None:
    beat(farm, {"a": OPENJD_NODE})
    limited = submit(farm, max_failed_tasks=1)
    plain = submit(farm, name="plain")  # no deadline:maxFailedTasksCount: no failures line
    table = farm.cli("jobs").splitlines()
    assert table[0].split() == ["JOB", "NAME", "OWNER", "STATE", "PRI", "FRAMES", "DONE", "ELAPSED", "ETA", "SUBMITTED"]
    assert sorted(row.split()[:11] for row in table[1:]) == sorted([
        [plain, "plain", "ana", "queued", "50", "2", "steps,", "13", "tasks", "0%", "-"],
        [limited, "two", "ana", "queued", "50", "2", "steps,", "13", "tasks", "0%", "-"],
    ])
    listed = {doc["id"]: doc for doc in json.loads(farm.cli("jobs", "--json"))}
    doc = listed[plain]  # the fields it always had, and its steps
    assert (doc["frames"], doc["tasks"], doc["frames_done"], doc["width"], doc["height"]) == (13, 13, 0, 0, 0)
    assert [(step["name"], step["tasks"], step["waiting_on"]) for step in doc["steps"]] == [
        ("Render", 3, []), ("Sheet", 10, ["Render"])]
    assert listed[limited]["max_failed_tasks"] == 1 and doc["max_failed_tasks"] is None
    shown = farm.cli("status").splitlines()
    assert sorted(line for line in shown if line.startswith("  ") and "ETA" in line) == sorted([
        f"  {plain} plain: 0% of 2 steps, 13 tasks, queued, ETA -",
        f"  {limited} two: 0% of 2 steps, 13 tasks, queued, ETA -",
    ])
    assert "  failures  the job fails once 1 task has failed (0 so far)" in status(farm, limited).splitlines()
    assert "failures" not in status(farm, plain)
