"""Turning a submit intent into a job and its tasks. The CLI checked the submission already;
the manager checks it again, because the control stream is not a trusted source."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from renderfarm import lifecycle
from renderfarm.capabilities import check_tags
from renderfarm.errors import InputError
from renderfarm.models import Job
from renderfarm.planning import check_chunk, check_priority, check_timeout, plan_tasks, slug
from renderfarm.renderers.registry import get_renderer

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.config import Settings

log = logging.getLogger("renderfarm.manager")

SCENE_SUFFIXES = (".toml", ".json", ".zip")
JOB_ID = re.compile(r"[0-9a-f]{4,16}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def submit(session: Session, settings: Settings, body: dict[str, Any]) -> str:
    """Create a job and its tasks; returns its id (the same id again for a replayed intent)."""
    from renderfarm.images import check_format
    from renderfarm.tiles import parse_grid

    def need(name: str, kind: type):
        value = body.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputError(f"submission: {name} must be a {kind.__name__}, got {value!r}")
        return value

    job_id = need("job_id", str)
    if not JOB_ID.fullmatch(job_id):
        raise InputError(f"submission: job_id {job_id!r} is not 4-16 lowercase hex digits")
    existing = session.get(Job, job_id)
    if existing is not None:
        if existing.scene_sha256 == body.get("scene_sha256") and existing.frames == body.get("frames"):
            return job_id  # the same submission replayed after a manager restart
        raise InputError(f"submission: job id {job_id} is taken; submit again")
    renderer = get_renderer(need("renderer", str)).name
    fmt = check_format(body.get("output_format", "png"))
    width, height = need("width", int), need("height", int)
    if not (0 < width <= 65536 and 0 < height <= 65536):
        raise InputError(f"resolution: {width}x{height} is out of range")
    grid = parse_grid(body["tiles"]) if body.get("tiles") is not None else None
    tile_count = len(grid.split(width, height)) if grid else 0
    chunk = check_chunk(need("chunk", int))
    frames = need("frames", str)
    first_last = bool(body.get("first_last", False))
    plans = plan_tasks(frames, chunk, settings.max_tasks, tile_count, first_last)
    max_workers = body.get("max_workers")
    if max_workers is not None and (not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1):
        raise InputError(f"max-workers: {max_workers!r} must be a whole number of at least 1")
    site = body.get("site")
    if site is not None:
        if not isinstance(site, str):
            raise InputError(f"site: {site!r} is not a site name")
        site = settings.site(site).name
    prefer = body.get("prefer")
    if prefer not in (None, "cheapest"):
        raise InputError(f"prefer: {prefer!r} is not 'cheapest'")
    requires = check_tags(body.get("requires"))
    after = body.get("after")
    if after is not None and (not isinstance(after, str) or session.get(Job, after) is None):
        raise InputError(f"after: no job {after!r} to wait for")
    scene_sha = need("scene_sha256", str)
    scene_key = need("scene_key", str)
    if not SHA256.fullmatch(scene_sha) or scene_key.removeprefix(f"scenes/{scene_sha}") not in SCENE_SUFFIXES:
        raise InputError(f"submission: scene_key {scene_key!r} is not a content-addressed scene key")
    timeout = check_timeout(body.get("timeout"))
    renderer_version = body.get("renderer_version")
    if renderer_version is not None:
        from renderfarm.renderers.blender import check_version_spec

        renderer_version = check_version_spec(str(renderer_version), "renderer_version")
    options = render_options(body.get("render_options"))
    job = Job(
        id=job_id,
        name=slug(need("name", str)),
        owner=slug(need("owner", str), "owner"),
        renderer=renderer,
        scene_name=need("scene_name", str)[:255],
        scene_key=scene_key,
        scene_sha256=scene_sha,
        frames=frames,
        frame_count=sum(len(p.frames) for p in plans if p.kind != "tile"),
        chunk=chunk,
        priority=check_priority(need("priority", int)),
        pool=slug(need("pool", str), "pool"),
        width=width,
        height=height,
        output_format=fmt,
        max_attempts=settings.max_attempts,
        timeout=settings.task_timeout if timeout is None else timeout,
        tiles=grid.text() if grid else None,
        tile_count=tile_count,
        keep_tiles=bool(body.get("keep_tiles", False)),
        max_workers=max_workers,
        after=after,
        first_last=first_last,
        site=site,
        prefer=prefer,
        requires=",".join(requires) or None,
        renderer_version=renderer_version,
        render_options=json.dumps(options, sort_keys=True) if options else None,
        submitted_at=time.time(),
    )
    lifecycle.create_job(session, job, plans)
    log.info("job %s submitted by %s: %s, %d frames in %d tasks%s", job.id, job.owner, job.name, job.frame_count,
             len(plans), f" ({tile_count} tiles per frame)" if tile_count else "")
    return job.id


def render_options(raw: Any) -> dict[str, Any]:
    """A submission's render options, checked: `samples` (a whole number) and `allow_scripts`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - {"samples", "allow_scripts"}:
        raise InputError(f"render_options: {str(raw)[:100]!r} holds more than samples and allow_scripts")
    options: dict[str, Any] = {}
    samples = raw.get("samples")
    if samples is not None:
        if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 1_000_000:
            raise InputError(f"samples: {samples!r} must be a whole number from 1 to 1000000")
        options["samples"] = samples
    if raw.get("allow_scripts") is True:
        options["allow_scripts"] = True
    return options
