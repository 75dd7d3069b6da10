"""Who renders what next: pick_task, the one pure function that holds the farm's dispatch policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerView:
    """What the scheduler knows of a worker asking for work."""

    name: str
    pool: str = "default"
    site: str = "local"
    price: int = 0  # its site's price per kWh, for comparing sites (micro-units)


@dataclass(frozen=True)
class Candidate:
    """A task that could be dispatched now, with what the policy weighs."""

    task_id: int
    job_id: str
    task_index: int
    priority: int  # 0-100, higher first
    submitted_at: float
    pool: str = "default"
    failed_on: frozenset[str] = frozenset()  # workers this task already failed on
    blocked: frozenset[str] = frozenset()  # workers blocklisted for this task's job
    rank: int = 1  # 0: before the rest of its job (--first-last)
    max_workers: int | None = None  # at most this many workers on its job at once
    site: str | None = None  # its job runs only at this site
    cheapest: bool = False  # its job goes to the cheapest site with idle workers first


def pick_task(
    worker: WorkerView,
    candidates: Iterable[Candidate],
    peers: Iterable[str] = (),
    shares: Mapping[str, float] | None = None,
    holders: Mapping[str, frozenset[str]] | None = None,
    idle_price: int | None = None,
) -> Candidate | None:
    """The candidate `worker` should render next, or None when nothing fits.

    - Only tasks of its pool.
    - None of a job it is blocklisted for while another of `peers` (the live workers of the pool)
      is not (a blocklist that bars everyone would only stall the job).
    - A task that failed on this worker waits for another peer unless none could take it.
    - A job with `max_workers` takes a new worker only while fewer hold its tasks (`holders`).
    - A job pinned to a site only goes to that site's workers; a cheapest-first job only to a
      worker whose site is as cheap as the cheapest idle worker of the pool (`idle_price`).
    - Then: the highest priority first; among equal priorities the job that has had the least
      of the farm lately (`shares`, the dispatcher's fair-share account: lower goes first), so
      equal jobs share the farm evenly and a small job is not starved by a big one; then the
      oldest job; then first-last frames, then task order.
    """
    others = frozenset(peers) - {worker.name}
    shares = shares or {}
    holders = holders or {}

    def allowed(c: Candidate) -> bool:
        if c.pool != worker.pool or (c.site is not None and c.site != worker.site):
            return False
        if c.cheapest and idle_price is not None and worker.price > idle_price:
            return False
        if worker.name in c.blocked and others - c.blocked:
            return False
        if c.max_workers is not None:
            held = holders.get(c.job_id, frozenset())
            if worker.name not in held and len(held) >= c.max_workers:
                return False
        return worker.name not in c.failed_on or not (others - c.failed_on - c.blocked)

    eligible = (c for c in candidates if allowed(c))
    return min(
        eligible,
        key=lambda c: (-c.priority, shares.get(c.job_id, 0.0), c.submitted_at, c.job_id, c.rank, c.task_index),
        default=None,
    )
