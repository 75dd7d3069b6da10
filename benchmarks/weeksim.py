"""The week benchmark's simulation: the farm's planner (renderfarm.power.plan_job) and scheduler
(renderfarm.scheduling.pick_task) driven by a simulated clock, one event at a time, over a
studio's submissions; what each run burned, in the farm's exact units (renderfarm.sites.account),
per site and hour."""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from renderfarm.manager.dispatch import MAX_JOBS_CONSIDERED, FairShare
from renderfarm.manager.planner import MEASURING
from renderfarm.power import Booked, Capacity, book, plan_job
from renderfarm.scheduling import Candidate, WorkerView, can_run, pick_task
from renderfarm.sites import PICO, Site, account, energy_ukwh

STUDIO_ZONE = ZoneInfo("Asia/Shanghai")
WEEK_START = datetime(2026, 12, 7, tzinfo=STUDIO_ZONE)  # a Monday
HOUR, DAY = 3600.0, 86400.0
POOL = "default"


@dataclass
class Job:
    """One submission of the week, with the time each of its frames takes to render."""

    id: str
    kind: str
    arrival: float
    seconds: list[float]  # each frame's render time
    priority: int = 50
    deadline: float | None = None
    prefer: str | None = None

    @property
    def mean(self) -> float:
        return sum(self.seconds) / len(self.seconds)


@dataclass
class Node:
    """A simulated worker: the scheduler's view of it, and what it is doing."""

    view: WorkerView
    site: Site
    task: tuple[str, int] | None = None  # (job id, task index) it renders
    idle_since: float | None = None  # the start of its current awake idle spell
    asleep: bool = False


@dataclass
class Tally:
    """What a run burned, in the farm's exact units, and per hour and site for the chart."""

    render_ukwh: int = 0
    idle_ukwh: int = 0
    cost_pico: int = 0
    co2_ng: int = 0
    per_site: dict = field(default_factory=dict)  # site -> Counter of the above
    hourly_cost: dict = field(default_factory=dict)  # (hour, site) -> currency
    hourly_busy: dict = field(default_factory=dict)  # (hour, site) -> node-hours

    def add(self, site: str, hour: int, *, render: int = 0, idle: int = 0, cost: int = 0,
            co2: int = 0) -> None:
        self.render_ukwh += render
        self.idle_ukwh += idle
        self.cost_pico += cost
        self.co2_ng += co2
        per_site = self.per_site.setdefault(site, Counter())
        per_site.update(render=render, idle=idle, cost=cost, co2=co2)
        self.hourly_cost[hour, site] = self.hourly_cost.get((hour, site), 0.0) + cost / PICO

    def busy(self, site: str, start: float, end: float) -> None:
        for a, b in _hours(start, end):
            key = (hour_of(a), site)
            self.hourly_busy[key] = self.hourly_busy.get(key, 0.0) + (b - a) / HOUR


def hour_of(at: float) -> int:
    return int((at - WEEK_START.timestamp()) // HOUR)


def _hours(start: float, end: float) -> list[tuple[float, float]]:
    """[start, end) cut at the hours since WEEK_START (every site's bands change on the hour)."""
    origin = WEEK_START.timestamp()
    pieces, a = [], start
    while a < end:
        b = min(end, origin + (hour_of(a) + 1) * HOUR)
        pieces.append((a, b))
        a = b
    return pieces


class Farm:
    """The farm's policy (or the baseline) over simulated time, one event at a time."""

    def __init__(self, jobs: list[Job], sites: dict[str, Site], nodes: dict[str, int], *,
                 policy: bool, sleep_after: float, wake: float, plan_every: float) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.task_base = {j.id: k * 1_000_000 for k, j in enumerate(jobs)}  # for task ids
        self.sites = sites
        self.policy, self.sleep_after, self.wake = policy, sleep_after, wake
        self.plan_every = plan_every
        # A worker's price: its site's, set again at each dispatch for the band in force then.
        self.nodes = [Node(WorkerView(f"{site}-{i + 1:02d}", POOL, site, sites[site].ranking_price),
                           sites[site]) for site, n in nodes.items() for i in range(n)]
        self.by_name = {n.view.name: n for n in self.nodes}
        self.pending: dict[str, deque[int]] = {}
        self.running: dict[str, set[str]] = {}  # job -> workers rendering it
        self.done: dict[str, list[float]] = {}  # job -> its done tasks' render times
        self.plans: dict[str, tuple] = {}  # job -> (start, site, note) as the job's row keeps
        self.finished: dict[str, float] = {}
        self.flagged: set[str] = set()  # planned late at some point
        self.held: set[str] = set()  # held for a band or site at some point
        self.reasons: list[str] = []
        self.fair = FairShare() if policy else None
        self.tally = Tally()
        self.attempts: list[tuple[float, str, str]] = []  # (start, site, job) of every task
        self.events: list[tuple] = []
        self.seq = 0
        self.measuring = False

    def push(self, at: float, kind: str, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, payload))

    def run(self) -> Farm:
        start = WEEK_START.timestamp()
        for node in self.nodes:
            self._idle(node, start)
        for job in self.jobs.values():
            self.push(job.arrival, "arrive", job.id)
        if self.policy:
            self.push(start, "plan")
            for site in self.sites.values():
                self._next_band(site, start)
        while self.events and len(self.finished) < len(self.jobs):
            now, _, kind, payload = heapq.heappop(self.events)
            replan = getattr(self, f"_on_{kind}")(now, *payload)
            if self.policy and replan:
                self.plan(now)
            last = not self.events or self.events[0][0] > now  # of this instant
            if kind != "sleep" and last:
                self.dispatch(now)
        assert len(self.finished) == len(self.jobs), "out of events with jobs unfinished"
        return self

    # Events: each returns whether the deadline jobs are planned again now.
    def _on_arrive(self, now: float, job_id: str) -> bool:
        job = self.jobs[job_id]
        self.pending[job_id] = deque(range(len(job.seconds)))
        self.running[job_id], self.done[job_id] = set(), []
        return job.deadline is not None  # the manager plans as soon as a job comes in

    def _on_finish(self, now: float, name: str) -> bool:
        node = self.by_name[name]
        job_id, index = node.task
        node.task = None
        self.running[job_id].discard(name)
        self.done[job_id].append(self.jobs[job_id].seconds[index])
        if not self.pending[job_id] and not self.running[job_id]:
            self.finished[job_id] = now
            self.plans.pop(job_id, None)
            del self.pending[job_id]
        self._idle(node, now)
        return self.measuring  # a job being timed may have its first task time now

    def _on_plan(self, now: float) -> bool:
        self.push(now + self.plan_every, "plan")
        return True

    def _on_band(self, now: float, site: str) -> bool:
        self._next_band(self.sites[site], now)
        return False  # a held job's start is a band's: dispatch releases it without a plan

    def _on_sleep(self, now: float, name: str, since: float) -> bool:
        node = self.by_name[name]
        if node.task is None and node.idle_since == since:
            self._charge_idle(node, since, now)
            node.idle_since, node.asleep = None, True
        return False

    def _next_band(self, site: Site, after: float) -> None:
        changes = site.changes(after, after + 2 * DAY)
        if changes:
            self.push(changes[0], "band", site.name)

    def _idle(self, node: Node, now: float) -> None:
        node.idle_since = now
        if self.sleep_after > 0:
            self.push(now + self.sleep_after, "sleep", node.view.name, now)

    def plan(self, now: float) -> None:
        """renderfarm.manager.planner.plan_deadlines on the simulation's state: the earliest
        deadline first, the same inputs to plan_job, each plan booked for the next, the same plan
        kept (a start only while it holds the job)."""
        measuring = 0
        # Every job here has the same needs (one pool, no site, tag or renderer asked for).
        per_site = Counter(n.view.site for n in self.nodes
                           if can_run(n.view, POOL, None, None, frozenset()))
        capacities = [Capacity(self.sites[s], k) for s, k in per_site.items()]
        booked: Booked = {}
        for job_id in sorted(self.pending, key=self._due):
            job = self.jobs[job_id]
            if job.deadline is None:
                continue
            left = len(self.pending[job_id]) + len(self.running[job_id])
            done = self.done[job_id]
            if not done:
                self.plans[job_id] = (None, None, MEASURING)
                measuring += 1
                continue
            plan = plan_job(left, sum(done) / len(done), capacities, now, job.deadline, job.prefer,
                            booked)
            book(booked, plan, left)
            self.plans[job_id] = (plan.start if plan.holds(now) else None, plan.site, plan.reason)
            if plan.late:
                self.flagged.add(job_id)
            if plan.holds(now) and job_id not in self.held:
                self.held.add(job_id)
                self.reasons.append(f"{job_id}: {plan.reason}")
        self.measuring = measuring > 0

    def candidates(self, now: float, wanted: int) -> list[Candidate]:
        """renderfarm.manager.dispatch.runnable_candidates: the first `wanted` pending tasks of
        each job that may start now (not held for a later band), most urgent jobs first."""
        runnable = [j for j in self.pending
                    if self.pending[j] and (self.plans.get(j, (None,))[0] or 0) <= now]
        runnable.sort(key=lambda j: (-self._priority(j), self.jobs[j].arrival))
        out = []
        for job_id in runnable[:MAX_JOBS_CONSIDERED]:
            job = self.jobs[job_id]
            plan_site = self.plans.get(job_id, (None, None))[1]
            for k, index in enumerate(self.pending[job_id]):
                if k == wanted:
                    break
                out.append(Candidate(self.task_base[job_id] + index, job_id, index,
                                     self._priority(job_id), job.arrival, POOL, site=plan_site,
                                     cheapest=self.policy and job.prefer == "cheapest"))
        return out

    def _due(self, job_id: str) -> tuple[float, float]:
        """plan_deadlines' order: the earliest deadline first, then the oldest."""
        return self.jobs[job_id].deadline or math.inf, self.jobs[job_id].arrival

    def _priority(self, job_id: str) -> int:
        return self.jobs[job_id].priority if self.policy else 50  # first come, first served

    def dispatch(self, now: float) -> None:
        """renderfarm.manager.dispatch.plan_handouts, one task per worker: idle workers ask in
        the order of their site's price, each gets pick_task's choice."""
        free = [n for n in self.nodes if n.task is None]
        if not free:
            return
        for node in free:  # the price of its site's band now, as the manager's views give it
            node.view = replace(node.view, price=node.site.ranking_price_at(now))
        candidates = self.candidates(now, len(free))
        if not candidates:
            return
        peers = {n.view.name for n in self.nodes}
        shares = None
        if self.fair is not None:
            busy = {j for j, ws in self.running.items() if ws}
            shares = self.fair.view({c.job_id for c in candidates} | busy)
        held = {j: frozenset(ws) for j, ws in self.running.items() if ws}
        idle = Counter(n.view.price for n in free)
        refused = set()  # (site, cheapest idle price) that pick_task found nothing for: fewer
        # candidates never find more, and nothing else of a worker weighs here (no blocklists)
        for node in sorted(free, key=lambda n: (n.view.price, n.view.name)):
            idle_price = min(idle)
            if (node.view.site, idle_price) in refused:
                continue
            choice = pick_task(node.view, candidates, peers, shares, held, idle_price)
            if choice is None:
                refused.add((node.view.site, idle_price))
                continue
            candidates.remove(choice)
            idle[node.view.price] -= 1
            if not idle[node.view.price]:
                del idle[node.view.price]
            held[choice.job_id] = held.get(choice.job_id, frozenset()) | {node.view.name}
            if self.fair is not None:
                self.fair.charge(choice.job_id)
            self.start(node, choice.job_id, choice.task_index, now)
            if not candidates:
                return

    def start(self, node: Node, job_id: str, index: int, now: float) -> None:
        pending = self.pending[job_id]
        pending.remove(index)
        begins = now + self.wake if node.asleep else now
        self._charge_idle(node, now if node.asleep else node.idle_since, begins)
        node.asleep, node.idle_since, node.task = False, None, (job_id, index)
        self.running[job_id].add(node.view.name)
        seconds = self.jobs[job_id].seconds[index]
        site = node.site
        self.attempts.append((begins, site.name, job_id))
        usage = account(site, wall_seconds=seconds, cpu_seconds=seconds, watts=site.watts,
                        at=begins)
        self.tally.add(site.name, hour_of(begins), render=usage.energy_ukwh, cost=usage.cost_pico,
                       co2=usage.co2_ng)
        self.tally.busy(site.name, begins, begins + seconds)
        self.push(begins + seconds, "finish", node.view.name)

    def _charge_idle(self, node: Node, start: float, end: float) -> None:
        """An idle (or waking) spell's draw, charged hour by hour at the band in force."""
        site = node.site
        for a, b in _hours(start, end):
            energy = energy_ukwh(site.idle_watts or 0.0, b - a)
            self.tally.add(site.name, hour_of(a), idle=energy, cost=energy * site.price_at(a),
                           co2=energy * site.carbon_at(a))

    def close(self, horizon: float) -> None:
        """Charge every node still awake and idle up to `horizon` (the same for every run), or
        until it would have gone to sleep."""
        for node in self.nodes:
            if node.task is None and node.idle_since is not None:
                end = horizon if self.sleep_after <= 0 \
                    else min(horizon, node.idle_since + self.sleep_after)
                self._charge_idle(node, node.idle_since, end)
                node.idle_since, node.asleep = None, end < horizon

    @property
    def last(self) -> float:
        return max(self.finished.values(), default=WEEK_START.timestamp())

    def met(self, job_ids: set[str]) -> set[str]:
        return {j for j in job_ids if self.finished[j] <= self.jobs[j].deadline}


def feasible(jobs: list[Job], sites: dict[str, Site], nodes: dict[str, int]) -> set[str]:
    """Jobs whose deadline the whole farm, rendering them alone from their arrival at their true
    mean frame time, meets with the planner's margin (plan_job does not flag them late)."""
    capacities = [Capacity(sites[s], n) for s, n in nodes.items()]
    return {j.id for j in jobs if j.deadline is not None
            and not plan_job(len(j.seconds), j.mean, capacities, j.arrival, j.deadline,
                             j.prefer).late}
