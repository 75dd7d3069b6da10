"""The manager's plans for jobs with a deadline: every few seconds, each such job's tasks left, its
measured task time and the live workers of each site that could render it go to the pure planner
(renderfarm.power); the plan is kept on the job's row, where dispatch and the listings read it."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from renderfarm.capabilities import wants_scripts
from renderfarm.errors import ConfigError
from renderfarm.manager.dispatch import required_tags
from renderfarm.models import TASK_FINAL, Attempt, AttemptState, Job, JobState, Task
from renderfarm.power import Booked, Capacity, book, plan_job
from renderfarm.scheduling import can_run
from renderfarm.sites import Site

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.scheduling import WorkerView

log = logging.getLogger("renderfarm.manager")

PLAN_EVERY = 15.0  # seconds between plans (a band's start releases a held job without one)
MEASURING = "measuring: its first tasks render now, to time it against the deadline"


def plan_deadlines(session: Session, settings: Settings, workers: list[WorkerView], now: float) -> int:
    """Plan every queued or running job with a deadline, in the caller's transaction; returns
    how many are still being timed (planned again as soon as a task of theirs ends)."""
    measuring = 0
    booked: Booked = {}  # the earliest deadline plans first, and the later plans count what it holds
    jobs = session.scalars(select(Job).where(
        Job.deadline.is_not(None), Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
        .order_by(Job.deadline, Job.submitted_at)).all()
    for job in jobs:
        left = session.scalar(select(func.count()).select_from(Task).where(
            Task.job_id == job.id, Task.state.not_in([s.value for s in TASK_FINAL])))
        measured = session.scalar(select(func.avg(Attempt.wall_seconds)).where(
            Attempt.job_id == job.id, Attempt.state == AttemptState.DONE.value))
        if measured is None:  # nothing to time it by yet: the first tasks render, wherever
            _keep(job, None, None, MEASURING)
            measuring += 1
            continue
        needs = (job.pool, job.site, job.renderer, required_tags(job.requires), job.renderer_version,
                 wants_scripts(job.render_options))
        per_site = Counter(w.site for w in workers if can_run(w, *needs))
        capacities = [Capacity(_site(settings, name), n) for name, n in per_site.items()]
        plan = plan_job(left, float(measured), capacities, now, job.deadline, job.prefer, booked)
        book(booked, plan, left)
        _keep(job, plan.start if plan.holds(now) else None, plan.site, plan.reason or None)
    return measuring


def _keep(job: Job, start: float | None, site: str | None, note: str | None) -> None:
    if (job.plan_start, job.plan_site, job.plan_note) != (start, site, note):
        log.info("job %s: %s", job.id, note or (f"renders at {site} now" if site else "renders now"))
    job.plan_start, job.plan_site, job.plan_note = start, site, note


def _site(settings: Settings, name: str) -> Site:
    try:
        return settings.site(name)
    except ConfigError:  # a site farm.toml does not name: no price, no bands
        return Site(name)
