"""Turning a submit intent into a job and its tasks. The intent was parsed with the farm's caps
already (renderfarm.wire: the CLI parsed the same submission before sending it); what is left
needs the database: the request's job if it exists, the job it waits for, a free job id."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from renderfarm import lifecycle
from renderfarm.errors import InputError
from renderfarm.models import Job, TaskKind
from renderfarm.planning import TaskPlan, new_job_id, plan_tasks
from renderfarm.tiles import parse_grid

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.wire import OpenJDSubmitIntent, SubmitIntent

log = logging.getLogger("renderfarm.manager")


def submit(session: Session, settings: Settings, intent: SubmitIntent, now: float) -> tuple[str, bool]:
    """Create the job and its tasks; returns its id and whether it is new (a request sent again
    gets the job it made the first time)."""
    existing = session.scalar(select(Job.id).where(Job.request_id == intent.request_id))
    if existing is not None:
        return existing, False
    spec = intent.job
    if spec.after is not None and session.get(Job, spec.after) is None:
        raise InputError(f"after: no job {spec.after!r} to wait for")
    job_id = new_job_id()
    while session.get(Job, job_id) is not None:  # 1 in 4 billion
        job_id = new_job_id()
    tile_count = spec.tile_count
    plans = plan_tasks(spec.frames, spec.chunk, settings.max_tasks, tile_count, spec.first_last)
    options = spec.render_options.model_dump(exclude_none=True) if spec.render_options else {}
    job = Job(
        id=job_id,
        request_id=intent.request_id,
        name=spec.name,
        owner=spec.owner,
        renderer=spec.renderer,
        scene_name=spec.scene_name,
        scene_key=spec.scene_key,
        scene_sha256=spec.scene_sha256,
        frames=spec.frames,
        frame_count=sum(len(p.frames) for p in plans if p.kind != "tile"),
        chunk=spec.chunk,
        priority=spec.priority,
        pool=spec.pool,
        width=spec.width,
        height=spec.height,
        output_format=spec.output_format,
        max_attempts=settings.max_attempts,
        timeout=settings.task_timeout if spec.timeout is None else spec.timeout,
        tiles=parse_grid(spec.tiles).text() if spec.tiles else None,
        tile_count=tile_count,
        keep_tiles=spec.keep_tiles,
        max_workers=spec.max_workers,
        after=spec.after,
        frame_by_frame=spec.frame_by_frame,
        first_last=spec.first_last,
        site=spec.site,
        prefer=spec.prefer,
        deadline=spec.deadline,
        requires=",".join(spec.requires) or None,
        renderer_version=spec.renderer_version,
        render_options=json.dumps(options, sort_keys=True) if options else None,
        notify=spec.notify,
        submitted_at=now,
    )
    lifecycle.create_job(session, job, plans)
    log.info("job %s submitted by %s: %s, %d frames in %d tasks%s", job.id, job.owner, job.name, job.frame_count,
             len(plans), f" ({tile_count} tiles per frame)" if tile_count else "")
    return job.id, True


def submit_openjd(session: Session, settings: Settings, intent: OpenJDSubmitIntent, now: float) -> tuple[str, bool]:
    """Create an OpenJD job: one farm task per task of every step's parameter space, steps in
    dependency order; returns its id and whether it is new."""
    from renderfarm.openjd import canonical, template_sha256
    from renderfarm.storage.keys import scene_key
    from renderfarm.wire import Limits

    existing = session.scalar(select(Job.id).where(Job.request_id == intent.request_id))
    if existing is not None:
        return existing, False
    spec = intent.job
    if spec.after is not None and session.get(Job, spec.after) is None:
        raise InputError(f"after: no job {spec.after!r} to wait for")
    expansion = spec.expansion(Limits.of(settings))  # parsed already; the expansion is not kept on the wire
    job_id = new_job_id()
    while session.get(Job, job_id) is not None:
        job_id = new_job_id()
    plans = [
        TaskPlan(index, (index,), kind=TaskKind.OPENJD.value, step=task.step,
                 parameters=json.dumps(task.parameters, sort_keys=True))
        for index, task in enumerate(t for step in expansion.steps for t in step.tasks)
    ]
    sha = template_sha256(spec.template)
    job = Job(
        id=job_id, request_id=intent.request_id, name=spec.name, owner=spec.owner, renderer="openjd",
        scene_name=spec.source, scene_key=scene_key(sha, ".json"), scene_sha256=sha,
        frames=f"0-{len(plans) - 1}", frame_count=len(plans), chunk=1, priority=spec.priority, pool=spec.pool,
        width=0, height=0, max_attempts=spec.max_attempts or settings.max_attempts,
        max_failed_tasks=spec.max_failed_tasks,
        timeout=settings.task_timeout if spec.timeout is None else spec.timeout,
        max_workers=spec.max_workers, after=spec.after, site=spec.site, prefer=spec.prefer, deadline=spec.deadline,
        requires=",".join(spec.requires) or None, notify=spec.notify, submitted_at=now,
        openjd_template=json.dumps({"template": json.loads(canonical(spec.template)),
                                    "job_parameters": expansion.job_parameters,
                                    **({"assets": [a.model_dump() for a in spec.assets],
                                        "mappings": [m.model_dump() for m in spec.mappings]}
                                       if spec.assets else {})}, sort_keys=True),
        openjd_steps=expansion.steps_json(),
    )
    lifecycle.create_job(session, job, plans)
    if spec.suspended:
        lifecycle.suspend_job(session, job, kill=False)
    log.info("job %s submitted by %s: OpenJD %s, %d steps, %d tasks", job.id, job.owner, job.name,
             len(expansion.steps), len(plans))
    return job.id, True
