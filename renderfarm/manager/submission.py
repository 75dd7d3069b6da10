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
from renderfarm.models import Job
from renderfarm.planning import new_job_id, plan_tasks
from renderfarm.tiles import parse_grid

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.wire import SubmitIntent

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
