"""A job's status as the CLI shows it (tasks by state, progress, elapsed, ETA, cost), computed
from a few rows. No database imports: both the ORM reads and the CLI's fast reads use it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from renderfarm.capabilities import wants_scripts
from renderfarm.scheduling import WorkerView, step_hosts, unschedulable
from renderfarm.sites import PICO
from renderfarm.states import JOB_FINAL, JobState, TaskState

JOB_COLUMNS = (
    "id", "name", "owner", "state", "priority", "pool", "renderer", "frames", "frame_count", "task_count", "chunk",
    "width", "height", "submitted_at", "started_at", "finished_at", "error", "site", "requires",
    "renderer_version", "after", "frame_by_frame", "render_options", "timeout", "max_workers", "max_attempts",
    "archived_at", "deadline", "plan_start", "plan_note", "openjd_steps", "max_failed_tasks",
)
WORKER_COLUMNS = ("name", "pool", "site", "capabilities")  # of the workers not offline
MISSING = "missing"  # the state shown for an --after job that is no longer in the database


@dataclass(frozen=True)
class StepStatus:
    """One step of an OpenJD job: its tasks by state, its progress and what it waits for."""

    name: str
    tasks: int
    done: int
    progress: float  # 0..1, counting partly run tasks
    counts: dict[str, int] = field(default_factory=dict)  # its tasks by state (those it has)
    after: list[str] = field(default_factory=list)  # the steps it depends on
    waiting_on: list[str] = field(default_factory=list)  # those of them not done yet
    status: str | None = None  # the newest openjd_status text of its running tasks


@dataclass(frozen=True)
class JobStatus:
    id: str
    name: str
    owner: str
    state: str
    priority: int
    pool: str
    renderer: str
    frames_spec: str
    frames: int
    tasks: int
    chunk: int
    width: int
    height: int
    frames_done: int
    progress: float  # 0..1, counting partly rendered tasks
    counts: dict[str, int] = field(default_factory=dict)  # tasks by state
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    elapsed: float | None = None  # seconds since the first task started (until the job finished)
    eta: float | None = None  # seconds until done at the rate so far
    error: str | None = None
    cost: dict[str, float] = field(default_factory=dict)  # so far, per currency (failed attempts too)
    projected_cost: dict[str, float] = field(default_factory=dict)  # at completion, at the rate so far
    requires: list[str] = field(default_factory=list)  # tags a worker must have
    site: str | None = None  # pinned to this site
    unschedulable: str | None = None  # why no live worker can run its waiting tasks, if none can
    renderer_version: str | None = None  # the renderer version it needs ("3.4": any 3.4.x)
    after: str | None = None  # the job it starts after (--after), once that one is done
    frame_by_frame: bool = False  # each frame waits only for the same frame of the --after job
    after_state: str | None = None  # that job's state ("missing" once it is gone)
    waiting_on: str | None = None  # the --after job, while it keeps this one from starting
    blocked: str | None = None  # "1a2b3c4d failed": the --after job will not be done unless retried
    # Its webhook notifications and where each stands (`farm status JOB --json` only).
    notifications: list[dict[str, Any]] = field(default_factory=list)
    timeout: float | None = None  # seconds a task may render (`farm set --timeout`)
    max_workers: int | None = None  # at most this many workers at once
    retries: int | None = None  # times a failed task is tried again
    max_failed_tasks: int | None = None  # the job fails once this many tasks have failed (deadline:maxFailedTasksCount)
    archived_at: float | None = None  # when it was archived (`farm archive`, retention): hidden by default
    deadline: float | None = None  # epoch seconds it must be done by (`--deadline`)
    held_until: float | None = None  # its deadline plan holds it for a cheaper (greener) band until then
    plan: str | None = None  # that plan in one line: what it waits for, or that it is late
    steps: list[StepStatus] = field(default_factory=list)  # an OpenJD job's steps, in dependency order

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(job: Mapping[str, Any], state_rows: Iterable[tuple], costs: Mapping[str, int],
              now: float | None = None, workers: Iterable[WorkerView] | None = None,
              after_state: str | None = None) -> JobStatus:
    """A job's status from its row (JOB_COLUMNS), its tasks grouped by state as (state, count,
    frames finished, weight, weight x progress), its cost so far per currency (10^-12 units), the
    live workers (to tell when none of them can run the job), and the state of its --after job
    (None when that job no longer exists)."""
    now = time.time() if now is None else now
    counts = {s.value: 0 for s in TaskState}
    frames_done = 0
    done_share = partial = 0.0
    for state, n, frames, share, weighted in state_rows:
        counts[state] = int(n)
        if state == TaskState.DONE.value:
            frames_done += int(frames)
            done_share += float(share)
        elif state == TaskState.RUNNING.value:
            partial += float(weighted)
    # Attempts at a site without a price are counted with no currency and no cost: no money to show.
    costs = {c: v for c, v in costs.items() if c or v}
    total = max(job["frame_count"], 1)
    done = job["state"] == JobState.DONE.value
    progress = 1.0 if done else min((done_share + partial) / total, 1.0)
    done_fraction = min(done_share / total, 1.0)
    if done or done_fraction >= 1.0:
        projected = dict(costs)
    elif done_fraction > 0:
        projected = {c: round(v / done_fraction) for c, v in costs.items()}
    else:
        projected = {}
    elapsed = eta = None
    if job["started_at"] is not None:
        elapsed = (job["finished_at"] or now) - job["started_at"]
        if job["finished_at"] is None and progress > 0 and elapsed > 0:
            eta = elapsed * (1 - progress) / progress
    requires = job["requires"].split(",") if job.get("requires") else []
    why = None
    waiting = counts[TaskState.PENDING.value] + counts[TaskState.QUEUED.value]
    if workers is not None and waiting and job["state"] in (JobState.QUEUED.value, JobState.RUNNING.value):
        why = unschedulable(workers, job["pool"], job.get("site"), job["renderer"], frozenset(requires),
                            job.get("renderer_version"), wants_scripts(job.get("render_options")),
                            step_hosts(job.get("openjd_steps")))
    return JobStatus(
        id=job["id"], name=job["name"], owner=job["owner"], state=job["state"], priority=job["priority"],
        pool=job["pool"], renderer=job["renderer"], frames_spec=job["frames"], frames=job["frame_count"],
        tasks=job["task_count"], chunk=job["chunk"], width=job["width"], height=job["height"],
        frames_done=frames_done, progress=round(progress, 4), counts=counts, submitted_at=job["submitted_at"],
        started_at=job["started_at"], finished_at=job["finished_at"], elapsed=elapsed, eta=eta, error=job["error"],
        cost={c: v / PICO for c, v in costs.items()}, projected_cost={c: v / PICO for c, v in projected.items()},
        requires=requires, site=job.get("site"), unschedulable=why, renderer_version=job.get("renderer_version"),
        timeout=job.get("timeout"), max_workers=job.get("max_workers"), archived_at=job.get("archived_at"),
        retries=job["max_attempts"] - 1 if job.get("max_attempts") is not None else None,
        max_failed_tasks=job.get("max_failed_tasks"), deadline=job.get("deadline"), plan=job.get("plan_note"),
        held_until=job.get("plan_start") if (job.get("plan_start") or 0) > now else None,
        **_after_fields(job, after_state),
    )


def summarize_steps(openjd_steps: str | None, rows: Iterable[tuple], texts: Iterable[tuple]) -> list[StepStatus]:
    """An OpenJD job's steps from its `openjd_steps` (JSON: {step: {"after"}}), its tasks grouped
    by step and state as (step, state, count, sum of progress, lowest task index), and the status
    texts of its running attempts as (step, text), newest first. Steps come in task order, which
    is dependency order (renderfarm.openjd.expand)."""
    import json

    deps = json.loads(openjd_steps) if openjd_steps else {}
    counts: dict[str, dict[str, int]] = {}
    partial: dict[str, float] = {}
    first: dict[str, int] = {}
    for step, state, n, progress, low in rows:
        counts.setdefault(step, {})[state] = int(n)
        if state == TaskState.RUNNING.value:
            partial[step] = float(progress)
        first[step] = min(first.get(step, int(low)), int(low))
    newest: dict[str, str] = {}
    for step, text in texts:
        newest.setdefault(step, text)
    order = [s.value for s in TaskState]
    steps = []
    for name in sorted(counts, key=lambda n: first[n]):
        by_state = {k: counts[name][k] for k in order if counts[name].get(k)}
        tasks, done = sum(by_state.values()), by_state.get(TaskState.DONE.value, 0)
        after = list(deps.get(name, {}).get("after", []))
        waiting = [a for a in after if a in counts and counts[a].get(TaskState.DONE.value, 0) < sum(counts[a].values())]
        steps.append(StepStatus(name, tasks, done, round(min((done + partial.get(name, 0.0)) / max(tasks, 1), 1.0), 4),
                                by_state, after, waiting, newest.get(name)))
    return steps


def _after_fields(job: Mapping[str, Any], after_state: str | None) -> dict[str, Any]:
    """What a job's --after job means for it now. The scheduler starts a job's tasks only once its
    --after job is done: until then it waits on it, and a failed, cancelled or vanished --after
    job blocks it until that job is retried and done. Frame by frame, each of its tasks starts
    once its frames are done there, so it waits on that job all the same; once that job is
    blocked, the frames already done there still render."""
    after = job.get("after")
    if not after:
        return {}
    state = after_state or MISSING
    fields: dict[str, Any] = {"after": after, "after_state": state, "frame_by_frame": bool(job.get("frame_by_frame"))}
    final = {s.value for s in JOB_FINAL}
    if job["state"] in final or state == JobState.DONE.value:
        return fields
    fields["waiting_on"] = after
    if state in final or state == MISSING:
        fields["blocked"] = f"{after} {'no longer exists' if state == MISSING else state}"
    return fields

