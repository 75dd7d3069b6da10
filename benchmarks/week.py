"""Benchmark: a studio's week of submissions replayed in simulated time against three sites by the
farm's own planner and scheduler, against first-come-first-served on the studio's own site.

    uv run python -m benchmarks week                        # 7 days (a few seconds)
    uv run python -m benchmarks.week --days 1 --seed 3      # a shorter week, another studio
    uv run python -m benchmarks.week --chart /tmp/week.png  # where the PNG goes

The week (seeded): about 22 jobs a weekday and 5 a weekend day, submitted in the studio's working
hours, of five kinds: plain jobs (no deadline); dailies due the next day at 09:00, 13:00 or 18:00,
`--prefer cheapest`; jobs due in one to two days, `--prefer greenest`; jobs due in 3-6 hours,
`--prefer cheapest`; and small urgent jobs at priority 90 due in 1.5-3 hours. Each frame's time
varies around its job's. Three sites, read by `renderfarm.sites.parse_sites` from the tables a
farm.toml would hold: the studio in Shanghai at a flat 1.0 CNY/kWh, Karamay at a flat 0.4, and
Hami with a solar band (10:00-17:00 in Urumqi: 0.22 CNY and 90 g/kWh, else 0.45 and 520 g).

Nothing of the policy is re-implemented. Each plan is `renderfarm.power.plan_job`'s, on what
`renderfarm.manager.planner.plan_deadlines` gives it (tasks left, the mean time of the job's done
tasks, the workers of each site that could render it; a job not timed yet renders at once and is
planned again when its first task ends); each hand-out is `renderfarm.scheduling.pick_task`'s, in
the order `renderfarm.manager.dispatch.plan_handouts` asks (idle workers, cheaper sites first,
its FairShare, held jobs left out until their start); each task is charged by
`renderfarm.sites.account` at the band it started in. The simulation adds only the clock:
discrete events (arrivals, task ends, band starts, a plan every --plan-every minutes, nodes going
to sleep). It hands out one task per worker (a prefetch only hides a download), and models
sleeping idle nodes (issue 20, FARM_SLEEP_AFTER): an idle node sleeps after --sleep-after seconds,
drawing nothing, and work for it wakes it in --wake seconds at its idle draw.

The baseline, in the same run: the same jobs, first come first served (pick_task with every job
at one priority and no fair share), on the studio's own nodes, always on. Figures: total cost
(render + idle), CO2, deadlines met of those feasible (the job alone on the whole farm, from its
arrival, meets its deadline with the planner's margin), idle kWh. The farm's policy must meet
every feasible deadline: a miss fails the benchmark, loudly.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from benchmarks.figures import Figure, show
from renderfarm.manager.dispatch import MAX_JOBS_CONSIDERED, FairShare
from renderfarm.manager.planner import MEASURING
from renderfarm.power import Booked, Capacity, book, plan_job
from renderfarm.scheduling import Candidate, WorkerView, can_run, pick_task
from renderfarm.sites import MICRO, NANO, PICO, Site, account, energy_ukwh, parse_sites

STUDIO = "studio"
STUDIO_ZONE = ZoneInfo("Asia/Shanghai")
WEEK_START = datetime(2026, 12, 7, tzinfo=STUDIO_ZONE)  # a Monday
HOUR, DAY = 3600.0, 86400.0
POOL = "default"
CHART = Path(__file__).resolve().parent / "results" / "week.png"

_SOLAR, _NIGHT = {"from": "10:00", "to": "17:00"}, {"from": "17:00", "to": "10:00"}
SITES = {  # as [sites.NAME] tables of a farm.toml
    "studio": {"timezone": "Asia/Shanghai", "currency": "CNY", "price_per_kwh": 1.0, "carbon_g_per_kwh": 580,
               "watts": 400, "idle_watts": 100},
    "karamay": {"timezone": "Asia/Urumqi", "currency": "CNY", "price_per_kwh": 0.4, "carbon_g_per_kwh": 650,
                "watts": 400, "idle_watts": 90},
    "hami": {"timezone": "Asia/Urumqi", "currency": "CNY", "watts": 400, "idle_watts": 90,
             "price": [{**_SOLAR, "per_kwh": 0.22}, {**_NIGHT, "per_kwh": 0.45}],
             "carbon": [{**_SOLAR, "g_per_kwh": 90}, {**_NIGHT, "g_per_kwh": 520}]},
}
NODES = {"studio": 16, "karamay": 24, "hami": 24}

# kind, weight, frames, median minutes a frame, priority, prefer
KINDS = (
    ("plain", 35, (24, 200), 6.0, 50, None),
    ("daily", 25, (48, 240), 8.0, 50, "cheapest"),
    ("green", 15, (48, 240), 8.0, 50, "greenest"),
    ("soon", 10, (24, 96), 5.0, 50, "cheapest"),
    ("urgent", 15, (8, 40), 4.0, 90, None),
)


@dataclass
class Job:
    """One submission of the week: its frames' render times are what the simulation makes them take."""

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


def studio_week(days: int, seed: int) -> list[Job]:
    """The studio's submissions over `days` days from WEEK_START, the same for the same seed."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for day in range(days):
        midnight = WEEK_START + timedelta(days=day)
        weekday = midnight.weekday() < 5
        for _ in range(rng.randint(18, 26) if weekday else rng.randint(3, 7)):
            kind, _, (lo, hi), minutes, priority, prefer = rng.choices(KINDS, weights=[k[1] for k in KINDS])[0]
            arrival = midnight.timestamp() + rng.uniform(16, 22) * HOUR if kind == "daily" \
                else midnight.timestamp() + rng.uniform(9, 21) * HOUR
            mean = minutes * 60 * rng.lognormvariate(0, 0.35)
            seconds = [mean * rng.lognormvariate(0, 0.15) for _ in range(rng.randint(lo, hi))]
            due = {
                "daily": (midnight + timedelta(days=1, hours=rng.choice((9, 13, 18)))).timestamp(),
                "green": arrival + rng.uniform(24, 48) * HOUR,
                "soon": arrival + rng.uniform(3, 6) * HOUR,
                "urgent": arrival + rng.uniform(1.5, 3) * HOUR,
            }.get(kind)
            if due is not None:
                due = round(due / 900) * 900  # on the quarter hour, as people give them
            jobs.append(Job(f"{kind}-{len(jobs) + 1:03d}", kind, arrival, seconds, priority, due, prefer))
    return sorted(jobs, key=lambda j: j.arrival)


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

    def add(self, site: str, hour: int, *, render: int = 0, idle: int = 0, cost: int = 0, co2: int = 0) -> None:
        self.render_ukwh += render
        self.idle_ukwh += idle
        self.cost_pico += cost
        self.co2_ng += co2
        self.per_site.setdefault(site, Counter()).update(render=render, idle=idle, cost=cost, co2=co2)
        self.hourly_cost[hour, site] = self.hourly_cost.get((hour, site), 0.0) + cost / PICO

    def busy(self, site: str, start: float, end: float) -> None:
        for a, b in _hours(start, end):
            key = (_hour(a), site)
            self.hourly_busy[key] = self.hourly_busy.get(key, 0.0) + (b - a) / HOUR


def _hour(at: float) -> int:
    return int((at - WEEK_START.timestamp()) // HOUR)


def _hours(start: float, end: float) -> list[tuple[float, float]]:
    """[start, end) cut at the hours since WEEK_START (every site's bands change on the hour)."""
    origin = WEEK_START.timestamp()
    pieces, a = [], start
    while a < end:
        b = min(end, origin + (_hour(a) + 1) * HOUR)
        pieces.append((a, b))
        a = b
    return pieces


class Farm:
    """The farm's policy (or the baseline) over simulated time, one event at a time."""

    def __init__(self, jobs: list[Job], sites: dict[str, Site], nodes: dict[str, int], *, policy: bool,
                 sleep_after: float, wake: float, plan_every: float) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.task_base = {j.id: k * 1_000_000 for k, j in enumerate(jobs)}  # task ids, as the database's
        self.sites = sites
        self.policy, self.sleep_after, self.wake, self.plan_every = policy, sleep_after, wake, plan_every
        self.nodes = [Node(WorkerView(f"{site}-{i + 1:02d}", POOL, site, sites[site].ranking_price), sites[site])
                      for site, n in nodes.items() for i in range(n)]
        self.by_name = {n.view.name: n for n in self.nodes}
        self.pending: dict[str, deque[int]] = {}
        self.running: dict[str, set[str]] = {}  # job -> workers rendering it
        self.done: dict[str, list[float]] = {}  # job -> its done tasks' render times
        self.plans: dict[str, tuple[float | None, str | None, str]] = {}  # job -> (start, site, note)
        self.finished: dict[str, float] = {}
        self.flagged: set[str] = set()  # planned late at some point
        self.held: set[str] = set()  # held for a band or site at some point
        self.reasons: list[str] = []
        self.fair = FairShare() if policy else None
        self.tally = Tally()
        self.attempts: list[tuple[float, str, str]] = []  # (start, site, job) of every task rendered
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
            if kind != "sleep" and (not self.events or self.events[0][0] > now):  # the instant's last event
                self.dispatch(now)
        assert len(self.finished) == len(self.jobs), "the simulation ran out of events with jobs unfinished"
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
        per_site = Counter(n.view.site for n in self.nodes if can_run(n.view, POOL, None, None, frozenset()))
        capacities = [Capacity(self.sites[s], k) for s, k in per_site.items()]
        booked: Booked = {}
        for job_id in sorted(self.pending, key=lambda j: (self.jobs[j].deadline or math.inf, self.jobs[j].arrival)):
            job = self.jobs[job_id]
            if job.deadline is None:
                continue
            left = len(self.pending[job_id]) + len(self.running[job_id])
            done = self.done[job_id]
            if not done:
                self.plans[job_id] = (None, None, MEASURING)
                measuring += 1
                continue
            plan = plan_job(left, sum(done) / len(done), capacities, now, job.deadline, job.prefer, booked)
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
        runnable = [j for j in self.pending if self.pending[j] and (self.plans.get(j, (None,))[0] or 0) <= now]
        runnable.sort(key=lambda j: (-self._priority(j), self.jobs[j].arrival))
        out = []
        for job_id in runnable[:MAX_JOBS_CONSIDERED]:
            job = self.jobs[job_id]
            plan_site = self.plans.get(job_id, (None, None))[1]
            for k, index in enumerate(self.pending[job_id]):
                if k == wanted:
                    break
                out.append(Candidate(self.task_base[job_id] + index, job_id, index, self._priority(job_id), job.arrival, POOL,
                                     site=plan_site, cheapest=self.policy and job.prefer == "cheapest"))
        return out

    def _priority(self, job_id: str) -> int:
        return self.jobs[job_id].priority if self.policy else 50  # first come, first served

    def dispatch(self, now: float) -> None:
        """renderfarm.manager.dispatch.plan_handouts, one task per worker: idle workers ask in
        the order of their site's price, each gets pick_task's choice."""
        free = [n for n in self.nodes if n.task is None]
        if not free:
            return
        candidates = self.candidates(now, len(free))
        if not candidates:
            return
        peers = {n.view.name for n in self.nodes}
        shares = None
        if self.fair is not None:
            shares = self.fair.view({c.job_id for c in candidates} | {j for j, ws in self.running.items() if ws})
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
        usage = account(site, wall_seconds=seconds, cpu_seconds=seconds, watts=site.watts, at=begins)
        self.tally.add(site.name, _hour(begins), render=usage.energy_ukwh, cost=usage.cost_pico, co2=usage.co2_ng)
        self.tally.busy(site.name, begins, begins + seconds)
        self.push(begins + seconds, "finish", node.view.name)

    def _charge_idle(self, node: Node, start: float, end: float) -> None:
        """An idle (or waking) spell's draw, priced and weighed hour by hour at the band in force."""
        site = node.site
        for a, b in _hours(start, end):
            energy = energy_ukwh(site.idle_watts or 0.0, b - a)
            self.tally.add(site.name, _hour(a), idle=energy, cost=energy * site.price_at(a),
                           co2=energy * site.carbon_at(a))

    def close(self, horizon: float) -> None:
        """Charge every node still awake and idle up to `horizon` (the same for every run), or
        until it would have gone to sleep."""
        for node in self.nodes:
            if node.task is None and node.idle_since is not None:
                end = min(horizon, node.idle_since + self.sleep_after) if self.sleep_after > 0 else horizon
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
            and not plan_job(len(j.seconds), j.mean, capacities, j.arrival, j.deadline, j.prefer).late}


def measure(days: int = 7, seed: int = 20, chart: Path = CHART, *, sleep_after: float = 600.0,
            wake: float = 120.0, plan_every: float = 300.0) -> list[Figure]:
    sites = parse_sites(SITES, "benchmarks/week.py")
    jobs = studio_week(days, seed)
    options = dict(sleep_after=sleep_after, wake=wake, plan_every=plan_every)
    farm = Farm(jobs, sites, NODES, policy=True, **options).run()
    awake = Farm(jobs, sites, NODES, policy=True, **{**options, "sleep_after": 0.0}).run()
    base = Farm(jobs, sites, {STUDIO: NODES[STUDIO]}, policy=False, **{**options, "sleep_after": 0.0}).run()
    horizon = max(WEEK_START.timestamp() + days * DAY, farm.last, awake.last, base.last)
    for run in (farm, awake, base):
        run.close(horizon)
    due = {j.id for j in jobs if j.deadline is not None}
    ok = feasible(jobs, sites, NODES)

    print(f"   {len(jobs)} jobs, {sum(len(j.seconds) for j in jobs)} frames, "
          f"{sum(sum(j.seconds) for j in jobs) / HOUR:,.0f} node-hours over {days} days (seed {seed}); "
          f"{len(due)} with a deadline, {len(ok)} of them feasible")
    for name, run in (("farm's policy", farm), ("farm's policy, no sleep", awake), ("baseline, FCFS studio", base)):
        print(f"   {name}: last frame {_local(run.last)}, held {len(run.held)} jobs, flagged late "
              f"{len(run.flagged)}, deadlines met {len(run.met(ok))} of {len(ok)} feasible "
              f"({len(run.met(due))} of {len(due)})")
        for site, c in sorted(run.tally.per_site.items()):
            print(f"      {site:8} render {c['render'] / MICRO:8,.0f} kWh  idle {c['idle'] / MICRO:7,.0f} kWh  "
                  f"cost {c['cost'] / PICO:8,.0f} CNY  CO2 {c['co2'] / NANO / 1e6:6,.2f} t")
    for line in farm.reasons[:3]:
        print(f"   held, e.g. {line}")
    chart = _draw(chart, farm, base, sites, horizon)
    print(f"   chart: {chart}")

    missed = sorted(ok - farm.met(ok))
    if missed:
        lines = [f"{j}: due {_local(farm.jobs[j].deadline)}, done {_local(farm.finished[j])}" for j in missed]
        print("   !!! FEASIBLE DEADLINES MISSED by the farm's policy:\n      " + "\n      ".join(lines),
              file=sys.stderr)
        raise AssertionError(f"the farm's policy missed {len(missed)} feasible deadline(s): {', '.join(missed)}")

    what = f"{days} days of a studio's jobs on 3 sites, seed {seed}"
    baseline = "FCFS on the studio site only"
    return [
        Figure("week", f"total cost (render + idle), {what}", farm.tally.cost_pico / PICO, "CNY",
               baseline, base.tally.cost_pico / PICO),
        Figure("week", "total CO2 (render + idle)", farm.tally.co2_ng / NANO / 1000, "kg",
               baseline, base.tally.co2_ng / NANO / 1000),
        Figure("week", f"deadlines met, of {len(ok)} feasible", len(farm.met(ok)), "jobs",
               baseline, len(base.met(ok)), target=f"all {len(ok)}"),
        Figure("week", f"idle energy (nodes sleep after {sleep_after:g} s)", farm.tally.idle_ukwh / MICRO, "kWh",
               baseline + ", always on", base.tally.idle_ukwh / MICRO),
        Figure("week", "idle energy, no node sleeping", awake.tally.idle_ukwh / MICRO, "kWh",
               baseline + ", always on", base.tally.idle_ukwh / MICRO),
    ]


def _local(at: float) -> str:
    return datetime.fromtimestamp(at, STUDIO_ZONE).strftime("%a %H:%M")


def _draw(out: Path, farm: Farm, base: Farm, sites: dict[str, Site], horizon: float) -> Path:
    from benchmarks.weekchart import week_chart

    hours = _hour(horizon - 1) + 1
    return week_chart(out, hours, farm.tally, base.tally, list(sites), sites["hami"], WEEK_START)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="days of submissions (default 7)")
    parser.add_argument("--seed", type=int, default=20, help="the week's random seed")
    parser.add_argument("--chart", type=Path, default=CHART, help=f"the PNG to write (default {CHART})")
    parser.add_argument("--sleep-after", type=float, default=600.0, help="idle seconds before a node sleeps")
    parser.add_argument("--wake", type=float, default=120.0, help="seconds a sleeping node takes to wake")
    parser.add_argument("--plan-every", type=float, default=5.0, help="minutes between plans")
    args = parser.parse_args()
    show(measure(args.days, args.seed, args.chart, sleep_after=args.sleep_after, wake=args.wake,
                 plan_every=args.plan_every * 60))


if __name__ == "__main__":
    main()
