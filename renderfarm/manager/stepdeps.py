"""OpenJD steps in dispatch: which steps of a job may start (every task of the steps each
depends on is done, read from the database, so it survives a Redis wipe and retries), and what
an OpenJD task's order carries."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import select

from renderfarm.models import Task, TaskState

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.models import Job
    from renderfarm.wire import OpenJDTask


@lru_cache(maxsize=256)
def _steps(openjd_steps: str) -> dict[str, dict]:
    return json.loads(openjd_steps)


def ready_steps(session: Session, job_id: str, openjd_steps: str) -> list[str]:
    """The steps of an OpenJD job whose tasks may start now: those whose every dependency has
    all its tasks done (a skipped task counts as done: `farm task skip` lets the job go on)."""
    finished = (TaskState.DONE.value, TaskState.SKIPPED.value)
    unfinished = set(session.scalars(
        select(Task.step).where(Task.job_id == job_id, Task.state.not_in(finished)).group_by(Task.step)
    ))
    return [name for name, step in _steps(openjd_steps).items() if not set(step["after"]) & unfinished]


@lru_cache(maxsize=64)
def _template(openjd_template: str) -> dict:
    return json.loads(openjd_template)


def openjd_task(job: Job, task: Task) -> OpenJDTask:
    """The OpenJD part of a task's order: the template as submitted, the job's parameter values,
    the task's step and its parameter values."""
    from renderfarm.wire.orders import OpenJDPathMapping, OpenJDTask, TaskParameter

    stored = _template(job.openjd_template)
    parameters = {name: TaskParameter(**p) for name, p in json.loads(task.parameters or "{}").items()}
    mappings = tuple(OpenJDPathMapping(**m) for m in stored.get("mappings", ())) or None
    return OpenJDTask(template=stored["template"], job_parameters=stored["job_parameters"], step=task.step,
                      task_parameters=parameters, mappings=mappings)
