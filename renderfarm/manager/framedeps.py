"""Frame-by-frame dependencies (`farm submit --after JOB --frame-by-frame`): which pending tasks
of a job may start because the frames they share with the job they follow are done there.

A task of the following job may start once every task of the followed job whose frames overlap
its own is final without failing: done, or skipped by `farm task skip` (an admin who skips a
frame says the frame is not coming; waiting for it would hold the follower's frame forever). A
tiled frame of the followed job counts once its assembly is done (its tiles are not asked: they
are done before it). A frame the followed job does not render is not waited for. Overlap is
judged on each task's frame range (lowest to highest): a chunk whose frames skip some (`1,5,9`)
also waits for the followed job's frames in between.

One query per following job, answered by the index on (job_id, frame_low): the followed job's
tasks that could overlap a task's range start within `span` frames below it, where `span` is the
widest range of the followed job's tasks (fixed once the job is made, so kept here by job id).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import aliased

from renderfarm.models import Task, TaskKind, TaskState

if TYPE_CHECKING:
    from sqlmodel import Session

# A followed job's frame is there once its task is one of these.
FRAME_THERE = (TaskState.DONE.value, TaskState.SKIPPED.value)

_spans: dict[str, int] = {}  # job id -> the widest frame range of its tasks (frame_high - frame_low)


def task_span(session: Session, job_id: str) -> int:
    """The widest frame range among a job's tasks (0 for one-frame tasks)."""
    span = _spans.get(job_id)
    if span is None:
        span = session.scalar(select(func.max(Task.frame_high - Task.frame_low)).where(Task.job_id == job_id))
        if span is None:
            return 0  # no tasks (yet): nothing to keep
        if len(_spans) > 10_000:
            _spans.clear()
        _spans[job_id] = span
    return span


def frames_waited(session: Session, job_id: str, followed: str):
    """The condition on a task of `job_id` (the `Task` table in the caller's query) that some
    frame it renders is not yet there in the job `followed`."""
    other = aliased(Task)
    span = task_span(session, followed)
    return exists().where(
        other.job_id == followed,
        other.frame_low >= Task.frame_low - span,
        other.frame_low <= Task.frame_high,
        other.frame_high >= Task.frame_low,
        other.kind != TaskKind.TILE.value,
        other.state.not_in(FRAME_THERE),
    )


def ready_pending(session: Session, job_id: str, followed: str, wanted: int) -> list[tuple]:
    """The first `wanted` pending tasks of `job_id` (by rank, then index) whose frames are there
    in `followed`, as (id, index, attempts, rank)."""
    return session.execute(
        select(Task.id, Task.index, Task.attempts, Task.rank)
        .where(and_(Task.job_id == job_id, Task.state == TaskState.PENDING.value),
               ~frames_waited(session, job_id, followed))
        .order_by(Task.rank, Task.index)
        .limit(wanted)
    ).all()
