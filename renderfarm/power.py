"""When and where a job with a deadline renders: now, or held for a cheaper (or greener) band of
the day at one of the sites, but only while the projected finish still meets the deadline with a
margin. Pure functions on exact inputs (the sites' bands, the job's measured task time and the
workers each site has for it); the dispatcher asks them, the tests state them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from renderfarm.sites import MICRO, Site

MARGIN = 0.10  # of the projected render time, kept between the projected finish and the deadline...
MIN_MARGIN = 600.0  # ...and never less than this many seconds
PREFERENCES = ("cheapest", "greenest", "fastest")


@dataclass(frozen=True)
class Capacity:
    """The workers a site has that could render the job (live, of its pool, with what it needs)."""

    site: Site
    workers: int


@dataclass(frozen=True)
class Plan:
    """Where and when the job renders, what that is projected to take, and whether it is late."""

    start: float  # epoch seconds: now, or the start of the band it waits for
    site: str | None  # the site it renders at (None: any with workers for it)
    finish: float  # projected
    late: bool = False  # the deadline cannot be met even starting now
    price: int | None = None  # per kWh when it starts (millionths of the site's currency), where one site is chosen
    reason: str = ""  # one line for `farm status`, `farm jobs` and `farm top`
    workers: int = 0  # the workers it counts on at `site` (where one site is chosen)

    def holds(self, now: float) -> bool:
        return self.start > now


Booked = dict[str, list[tuple[float, float, int]]]  # site -> (start, finish, workers) that plans hold


def plan_job(tasks_left: int, task_seconds: float, capacities: list[Capacity], now: float,
             deadline: float | None, prefer: str | None, booked: Booked | None = None) -> Plan:
    """The plan for a job with `tasks_left` tasks of `task_seconds` each (measured, or estimated
    from its first frames). Without a deadline, or preferring the fastest, it renders now. With
    `cheapest` or `greenest`, each site's band starts until the deadline are weighed; the best
    whose projected finish meets the deadline with the margin wins (the earliest of equals), and
    a job no start can finish in time renders now, on every site, flagged late. A start counts
    only the site's workers that no plan in `booked` (those of jobs due earlier, see `book`)
    holds between it and the deadline: two jobs cannot both count on one band's workers."""
    usable = [c for c in capacities if c.workers > 0]
    everywhere = sum(c.workers for c in usable)
    if not usable or tasks_left <= 0:
        return Plan(now, None, now, reason="no live worker can render it" if tasks_left > 0 else "")
    fastest = now + _duration(tasks_left, task_seconds, everywhere)
    if deadline is not None and fastest + _margin(fastest - now) > deadline:
        return Plan(now, None, fastest, late=True,
                    reason=f"late: projected finish {_when(fastest)} is past the deadline {_when(deadline)}")
    if deadline is None or prefer not in ("cheapest", "greenest"):
        return Plan(now, None, fastest)
    options = []
    for capacity in usable:
        site = capacity.site
        held = (booked or {}).get(site.name, ())
        for start in [now, *site.changes(now, deadline)]:
            workers = capacity.workers - sum(n for a, b, n in held if a < deadline and b > start)
            if workers <= 0:
                continue
            duration = _duration(tasks_left, task_seconds, workers)
            if start + duration + _margin(duration) > deadline:
                continue
            measure = site.ranking_price_at if prefer == "cheapest" else site.carbon_at
            weighed = _over(measure, site, start, start + duration) * workers
            options.append((weighed, start, site.name, start + duration, site, workers))
    if not options:  # only every site together is fast enough
        return Plan(now, None, fastest)
    weighed, start, name, finish, site, workers = min(options, key=lambda o: (o[0], o[1], o[2]))
    price = site.price_at(start)
    plan = Plan(start, name, finish, price=price, workers=workers)
    if start > now:
        what = f"{price / MICRO:g}/kWh" if prefer == "cheapest" else f"{site.carbon_at(start) / 1000:g} g/kWh"
        local = datetime.fromtimestamp(start, site.zone).strftime("%H:%M")
        plan = Plan(start, name, finish, price=price, workers=workers,
                    reason=f"waiting for {name} {local} band ({what}); projected finish {_when(finish)}, "
                           f"deadline {_when(deadline)}")
    return plan


def book(booked: Booked, plan: Plan, tasks_left: int) -> None:
    """Keep in `booked` the workers `plan` counts on at its site, from its start to its projected
    finish, for the plans made after it (the planner plans the earliest deadline first)."""
    if plan.site is not None and plan.workers:
        booked.setdefault(plan.site, []).append((plan.start, plan.finish, min(tasks_left, plan.workers)))


def _duration(tasks: int, task_seconds: float, workers: int) -> float:
    return math.ceil(tasks / workers) * task_seconds


def _over(measure, site: Site, start: float, end: float) -> float:
    """`measure` (price or carbon at a time) integrated from `start` to `end`, band by band."""
    edges = [start, *site.changes(start, end), end]
    return sum(measure(a) * (b - a) for a, b in zip(edges, edges[1:]) if b > a)


def _margin(duration: float) -> float:
    return max(MIN_MARGIN, MARGIN * duration)


def _when(at: float) -> str:
    """A time for a reason line: HH:MM in UTC (`farm status --json` has the exact epoch)."""
    from datetime import timezone

    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M UTC")
