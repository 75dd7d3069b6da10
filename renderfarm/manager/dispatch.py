"""Keeping every live worker's queue filled: one task running plus one prefetched, chosen by pick_task."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, func, select

from renderfarm import lifecycle
from renderfarm.capabilities import wants_scripts
from renderfarm.frames import parse_frames
from renderfarm.manager.expected import frame_tile_keys, job_tiles
from renderfarm.models import (
    ATTEMPT_ACTIVE,
    Attempt,
    AttemptState,
    Job,
    JobState,
    Task,
    TaskKind,
    TaskState,
)
from renderfarm.scheduling import Candidate, WorkerView, pick_task, step_hosts

if TYPE_CHECKING:
    from sqlmodel import Session

    from renderfarm.wire import TaskOrder

QUEUE_DEPTH = 2  # one running + one prefetched
MAX_JOBS_CONSIDERED = 200
BLOCKLIST_AFTER = 3  # failed tasks of one job after which a worker gets no more of it

# The statements of a dispatch round, built once, their values bound at each run: on SQLite,
# building a select cost more than running it (measured: 0.45 ms a query built each time, 0.12 ms
# prebuilt), and a round runs several after every task that ends.
_HANDS = (
    select(Attempt.worker, Attempt.job_id, func.count())
    .where(Attempt.state.in_([s.value for s in ATTEMPT_ACTIVE]))
    .group_by(Attempt.worker, Attempt.job_id)
)


def _runnable_query(at_now: bool):
    query = (
        select(Job.id, Job.priority, Job.submitted_at, Job.pool, Job.max_workers, Job.after, Job.site, Job.prefer,
               Job.requires, Job.renderer, Job.renderer_version, Job.render_options, Job.plan_site,
               Job.frame_by_frame, Job.openjd_steps)
        .where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
    )
    if at_now:  # none that a deadline plan holds for later
        query = query.where((Job.plan_start.is_(None)) | (Job.plan_start <= bindparam("now")))
    return query.order_by(Job.priority.desc(), Job.submitted_at).limit(MAX_JOBS_CONSIDERED)


_RUNNABLE, _RUNNABLE_NOW = _runnable_query(False), _runnable_query(True)
_PENDING = (
    select(Task.id, Task.index, Task.attempts, Task.rank, Task.step)
    .where(Task.job_id == bindparam("job_id"), Task.state == TaskState.PENDING.value)
)
_PENDING_FIRST = _PENDING.order_by(Task.rank, Task.index).limit(bindparam("wanted"))
_BLOCKED = (
    select(Attempt.job_id, Attempt.worker)
    .where(Attempt.job_id.in_(bindparam("jobs", expanding=True)), Attempt.state == AttemptState.FAILED.value)
    .group_by(Attempt.job_id, Attempt.worker)
    .having(func.count(func.distinct(Attempt.task_id)) >= BLOCKLIST_AFTER)
)
_TASKS = select(Task).where(Task.id.in_(bindparam("ids", expanding=True)))
_JOBS = select(Job).where(Job.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True)
class Handout:
    """An attempt created in the database, to be put on its worker's queue after commit."""

    worker: str
    order: TaskOrder
    timeout: float


@dataclass
class Hands:
    """Who holds what right now: active attempts per worker and per job, and which workers."""

    per_worker: Counter
    per_job: Counter
    holders: dict[str, set[str]]

    @classmethod
    def load(cls, session: Session) -> Hands:
        rows = session.execute(_HANDS).all()
        hands = cls(Counter(), Counter(), {})
        for worker, job_id, n in rows:
            hands.add(worker, job_id, n)
        return hands

    def add(self, worker: str, job_id: str, n: int = 1) -> None:
        self.per_worker[worker] += n
        self.per_job[job_id] += n
        self.holders.setdefault(job_id, set()).add(worker)


class FairShare:
    """Stride scheduling among jobs of equal priority: each hand-out advances its job's pass by
    one, and the lowest pass goes next. A job joining the farm starts at the lowest pass of the
    others, so it gets its share at once without a burst that would starve the older jobs."""

    def __init__(self) -> None:
        self.passes: dict[str, float] = {}

    def view(self, job_ids: set[str]) -> dict[str, float]:
        known = [self.passes[j] for j in job_ids if j in self.passes]
        floor = min(known, default=0.0)
        for job_id in job_ids:
            self.passes.setdefault(job_id, floor)
        for gone in set(self.passes) - job_ids:  # finished or suspended: forget them
            del self.passes[gone]
        return self.passes

    def charge(self, job_id: str) -> None:
        self.passes[job_id] = self.passes.get(job_id, 0.0) + 1.0


def plan_handouts(session: Session, workers: list[WorkerView], fair: FairShare | None = None, *,
                  now: float, failed: set[str] | None = None) -> list[Handout]:
    """Create attempts for the free slots of `workers` (the live ones taking work), at the
    manager's time `now`, in the caller's transaction. A task that cannot be handed out at all
    fails at once; its job's id goes in `failed`, for the caller to refresh the job."""
    fair = fair or FairShare()
    hands = Hands.load(session)
    free = {w.name: QUEUE_DEPTH - hands.per_worker[w.name] for w in workers if hands.per_worker[w.name] < QUEUE_DEPTH}
    if not free:
        return []
    candidates = runnable_candidates(session, sum(free.values()), now)
    if not candidates:
        return []
    peers: dict[str, set[str]] = {}
    for w in workers:
        peers.setdefault(w.pool, set()).add(w.name)
    shares = fair.view({c.job_id for c in candidates} | set(hands.per_job))
    chosen: list[tuple[str, Candidate]] = []
    # First give every idle worker something to run, then fill the prefetch slots, so that a
    # short job spreads over all workers instead of queueing two deep on the first one.
    for depth in range(1, QUEUE_DEPTH + 1):
        # Cheaper sites pick first, so cheapest-first jobs land there.
        for view in sorted(workers, key=lambda w: (hands.per_worker[w.name], w.price, w.name)):
            if hands.per_worker[view.name] >= depth:
                continue
            held = {job: frozenset(ws) for job, ws in hands.holders.items()}
            idle = [w.price for w in workers if w.pool == view.pool and hands.per_worker[w.name] == 0]
            choice = pick_task(view, candidates, peers[view.pool], shares, held, min(idle, default=None))
            if choice is None:
                continue
            candidates.remove(choice)
            chosen.append((view.name, choice))
            hands.add(view.name, choice.job_id)
            fair.charge(choice.job_id)
    return _queue_attempts(session, chosen, now, set() if failed is None else failed)


def _queue_attempts(session: Session, chosen: list[tuple[str, Candidate]], now: float,
                    failed: set[str]) -> list[Handout]:
    """Create the chosen attempts: their tasks and jobs loaded in one query each, and one flush
    for all of them (a flush per attempt costs more than the rest of dispatch). An OpenJD task
    whose dependencies wrote more files than an order carries fails here, for good (the job was
    checked at submit against one file per task depended on; a node would refuse the order, and
    the task would be handed out again forever)."""
    if not chosen:
        return []
    from renderfarm.wire.orders import INPUTS_CAP

    tasks = {t.id: t for t in session.scalars(_TASKS, {"ids": [c.task_id for _, c in chosen]})}
    jobs = {j.id: j for j in session.scalars(_JOBS, {"ids": list({c.job_id for _, c in chosen})})}
    ready = []
    with session.no_autoflush:  # an OpenJD task's inputs are a query: one flush for all the same
        for worker, c in chosen:
            job, task = jobs[c.job_id], tasks[c.task_id]
            inputs = _inputs(session, job, task)
            if len(inputs) > INPUTS_CAP:
                lifecycle.fail_unsent(session, task, now, f"step {task.step!r}: this task would need {len(inputs):,} "
                                      f"input files (the job's, and those the steps it depends on wrote), over the "
                                      f"{INPUTS_CAP:,} a task may carry")
                failed.add(job.id)
                continue
            ready.append((job, task, inputs, lifecycle.queue_attempt(session, task, worker, now, flush=False)))
    session.flush()
    return [Handout(attempt.worker, task_order(job, task, attempt, inputs=inputs), job.timeout)
            for job, task, inputs, attempt in ready]


def _inputs(session: Session, job: Job, task: Task) -> tuple:
    """An OpenJD task's inputs: the files of the steps its step depends on (none for others)."""
    if task.kind != TaskKind.OPENJD.value:
        return ()
    from renderfarm.manager.openjd_outputs import task_inputs

    return task_inputs(session, job, task)


URL_LIFETIME = 24 * 3600  # seconds a presigned URL in a task order works (it may wait in a queue)
URL_REUSE = 3600  # seconds one presigned URL of a scene is handed out again


class OrderSealer:
    """Task orders made ready for their nodes: the objects a node must read given as presigned URLs
    (a node holds no standing read access), each order sealed with its node's key."""

    def __init__(self, storage) -> None:
        self.storage = storage
        self._urls: dict[str, tuple[float, str | None]] = {}  # key -> (made at, URL)

    def url(self, key: str, now: float) -> str | None:
        made, url = self._urls.get(key, (0.0, None))
        if now - made > URL_REUSE:
            url = self.storage.presigned_get(key, URL_LIFETIME)
            self._urls[key] = (now, url)
            if len(self._urls) > 10_000:  # forget the oldest scenes' URLs
                for old in sorted(self._urls, key=lambda k: self._urls[k][0])[:5000]:
                    del self._urls[old]
        return url

    def seal(self, handouts: list[Handout], book, now: float) -> list[tuple]:
        """(order, sealed text, RQ id, timeout) of each hand-out whose node is enrolled."""
        from renderfarm.wire import Sealed

        out = []
        for h in handouts:
            node = book.get(h.worker)
            if node is None:
                continue  # revoked meanwhile: the reaper takes its attempts back
            order = h.order
            urls = {"scene_url": self.url(order.scene_key, now)}
            if order.openjd is not None and order.openjd.inputs:
                inputs = order.openjd.inputs
                input_urls = [self.url(i.key, now) for i in inputs]  # reused across dependents
                if all(input_urls):
                    urls["openjd"] = order.openjd.model_copy(update={"inputs": tuple(
                        i.model_copy(update={"url": url}) for i, url in zip(inputs, input_urls))})
            if order.tile_keys:
                tile_urls = [self.storage.presigned_get(k, URL_LIFETIME) for k in order.tile_keys]
                if all(tile_urls):
                    urls["tile_urls"] = tuple(tile_urls)
            order = order.model_copy(update={k: v for k, v in urls.items() if v})
            sealed = Sealed.seal(order, node=h.worker, seq=order.attempt_id, key=node.key)
            out.append((order, sealed.to_json(), book.rq_id(h.worker, order.attempt_id), h.timeout))
        return out


def runnable_jobs(session: Session, now: float | None = None) -> list[tuple]:
    """Jobs that may start tasks now: queued or running (not suspended), whose --after job is
    done (or, --frame-by-frame, still there: each task then waits for its own frames, see
    pending_tasks), and that no deadline plan holds for a later band (at `now`); most urgent
    first."""
    rows = (session.execute(_RUNNABLE) if now is None else session.execute(_RUNNABLE_NOW, {"now": now})).all()
    parents = {r.after for r in rows if r.after}
    states: dict[str, str] = {}
    if parents:
        states = dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(parents))).all())
    return [r for r in rows if not r.after or states.get(r.after) == JobState.DONE.value
            or (r.frame_by_frame and r.after in states)]


def pending_tasks(session: Session, job, wanted: int) -> list[tuple]:
    """The first `wanted` pending tasks of a runnable job that may start now (by rank, then
    index), as (id, index, attempts, rank, step): all of them; for a job that follows another
    frame by frame, those whose frames are there in it; for an OpenJD job, those of the steps
    whose dependencies are done."""
    if job.frame_by_frame and job.after:
        from renderfarm.manager.framedeps import ready_pending

        return ready_pending(session, job.id, job.after, wanted)
    if not job.openjd_steps:
        return session.execute(_PENDING_FIRST, {"job_id": job.id, "wanted": wanted}).all()
    from renderfarm.manager.stepdeps import ready_steps

    query = _PENDING.where(Task.step.in_(ready_steps(session, job.id, job.openjd_steps)))
    return session.execute(query.order_by(Task.rank, Task.index).limit(wanted), {"job_id": job.id}).all()


def runnable_candidates(session: Session, wanted: int, now: float | None = None) -> list[Candidate]:
    """The first `wanted` pending tasks of each runnable job (first-last frames first), with the
    workers each already failed on and the workers blocklisted for its job."""
    jobs = runnable_jobs(session, now)
    if not jobs:
        return []
    failed = AttemptState.FAILED.value
    blocked: dict[str, set[str]] = {}
    for job_id, worker in session.execute(_BLOCKED, {"jobs": [j.id for j in jobs]}):
        blocked.setdefault(job_id, set()).add(worker)
    rows: list[tuple] = []
    for job in jobs:
        tasks = pending_tasks(session, job, wanted)
        hosts = step_hosts(job.openjd_steps)
        rows += [(t.id, job, t.index, t.attempts, t.rank, hosts.get(getattr(t, "step", None))) for t in tasks]
    failed_on: dict[int, set[str]] = {}
    retried = [r[0] for r in rows if r[3] > 0]
    for start in range(0, len(retried), 500):
        for task_id, worker in session.execute(
            select(Attempt.task_id, Attempt.worker).where(
                Attempt.task_id.in_(retried[start : start + 500]), Attempt.state == failed
            )
        ):
            failed_on.setdefault(task_id, set()).add(worker)
    return [
        Candidate(task_id, job.id, index, job.priority, job.submitted_at, job.pool,
                  frozenset(failed_on.get(task_id, ())), frozenset(blocked.get(job.id, ())), rank, job.max_workers,
                  job.plan_site or job.site, job.prefer == "cheapest", required_tags(job.requires), job.renderer,
                  job.renderer_version, wants_scripts(job.render_options), host)
        for task_id, job, index, _attempts, rank, host in rows
    ]


def required_tags(requires: str | None) -> frozenset[str]:
    return frozenset(requires.split(",")) if requires else frozenset()


def outranked_prefetches(session: Session, now: float | None = None) -> list[Attempt]:
    """Prefetched attempts (queued, not started, behind a running one) of jobs that a runnable
    job with pending tasks outranks in priority, in the same pool: withdrawn, they let the more
    urgent work start as soon as a worker frees up."""
    jobs = runnable_jobs(session, now)
    waiting: dict[str, int] = {}
    for job in jobs:
        if pending_tasks(session, job, 1):
            waiting[job.pool] = max(waiting.get(job.pool, -1), job.priority)
    if not waiting:
        return []
    busy = select(Attempt.worker).where(Attempt.state == AttemptState.RUNNING.value)
    rows = session.execute(
        select(Attempt, Job.priority, Job.pool)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.state == AttemptState.QUEUED.value, Attempt.worker.in_(busy))
    ).all()
    return [a for a, priority, pool in rows if priority < waiting.get(pool, -1)]


def task_order(job: Job, task: Task, attempt: Attempt, *, inputs: tuple = ()) -> TaskOrder:
    """What a worker receives for one attempt: ids and plain values only, never secrets; an
    OpenJD task's `inputs` (OpenJDInput) go in its openjd part."""
    from renderfarm.wire import Box, RenderOptions, TaskOrder

    region = grid = openjd = None
    tile_keys: tuple[str, ...] = ()
    if task.kind == TaskKind.TILE.value:
        t = job_tiles(job)[task.tile]
        region = Box(x=t.x, y=t.y, width=t.width, height=t.height)
    elif task.kind == TaskKind.ASSEMBLE.value:
        grid, tile_keys = job.tiles, tuple(frame_tile_keys(job, task.first_frame))
    elif task.kind == TaskKind.OPENJD.value:
        from renderfarm.manager.stepdeps import openjd_task

        openjd = openjd_task(job, task)
        if inputs:
            openjd = openjd.model_copy(update={"inputs": tuple(inputs)})
    return TaskOrder(
        kind=task.kind, attempt_id=attempt.id, attempt=attempt.number, task_id=task.id, task_index=task.index,
        node=attempt.worker, job_id=job.id, name=job.name, renderer=job.renderer, scene_key=job.scene_key,
        scene_sha256=job.scene_sha256, frames=tuple(parse_frames(task.frames)), format=job.output_format,
        width=job.width or 1, height=job.height or 1, timeout=float(job.timeout), region=region, grid=grid,
        tile_keys=tile_keys, openjd=openjd, renderer_version=job.renderer_version,
        options=RenderOptions(**json.loads(job.render_options)) if job.render_options else None,
    )
