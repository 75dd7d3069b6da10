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
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

from benchmarks.figures import Figure, show
from benchmarks.weeksim import DAY, HOUR, STUDIO_ZONE, WEEK_START, Farm, Job, feasible, hour_of
from renderfarm.sites import MICRO, NANO, PICO, Site, parse_sites

STUDIO = "studio"
CHART = Path(__file__).resolve().parent / "results" / "week.png"

_SOLAR, _NIGHT = {"from": "10:00", "to": "17:00"}, {"from": "17:00", "to": "10:00"}
SITES = {  # as [sites.NAME] tables of a farm.toml
    "studio": {"timezone": "Asia/Shanghai", "currency": "CNY", "price_per_kwh": 1.0,
               "carbon_g_per_kwh": 580, "watts": 400, "idle_watts": 100},
    "karamay": {"timezone": "Asia/Urumqi", "currency": "CNY", "price_per_kwh": 0.4,
                "carbon_g_per_kwh": 650, "watts": 400, "idle_watts": 90},
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
WEIGHTS = [k[1] for k in KINDS]


def studio_week(days: int, seed: int) -> list[Job]:
    """The studio's submissions over `days` days from WEEK_START, the same for the same seed."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for day in range(days):
        midnight = WEEK_START + timedelta(days=day)
        weekday = midnight.weekday() < 5
        for _ in range(rng.randint(18, 26) if weekday else rng.randint(3, 7)):
            kind, _, (lo, hi), minutes, priority, prefer = rng.choices(KINDS, WEIGHTS)[0]
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
            name = f"{kind}-{len(jobs) + 1:03d}"
            jobs.append(Job(name, kind, arrival, seconds, priority, due, prefer))
    return sorted(jobs, key=lambda j: j.arrival)


def measure(days: int = 7, seed: int = 20, chart: Path = CHART, *, sleep_after: float = 600.0,
            wake: float = 120.0, plan_every: float = 300.0) -> list[Figure]:
    sites = parse_sites(SITES, "benchmarks/week.py")
    jobs = studio_week(days, seed)
    options = dict(sleep_after=sleep_after, wake=wake, plan_every=plan_every)
    farm = Farm(jobs, sites, NODES, policy=True, **options).run()
    awake = Farm(jobs, sites, NODES, policy=True, **{**options, "sleep_after": 0.0}).run()
    base = Farm(jobs, sites, {STUDIO: NODES[STUDIO]}, policy=False,
                **{**options, "sleep_after": 0.0}).run()
    horizon = max(WEEK_START.timestamp() + days * DAY, farm.last, awake.last, base.last)
    for run in (farm, awake, base):
        run.close(horizon)
    due = {j.id for j in jobs if j.deadline is not None}
    ok = feasible(jobs, sites, NODES)

    print(f"   {len(jobs)} jobs, {sum(len(j.seconds) for j in jobs)} frames, "
          f"{sum(sum(j.seconds) for j in jobs) / HOUR:,.0f} node-hours over {days} days "
          f"(seed {seed}); "
          f"{len(due)} with a deadline, {len(ok)} of them feasible")
    runs = (("farm's policy", farm), ("farm's policy, no sleep", awake),
            ("baseline, FCFS studio", base))
    for name, run in runs:
        print(f"   {name}: last frame {_local(run.last)}, held {len(run.held)} jobs, flagged late "
              f"{len(run.flagged)}, deadlines met {len(run.met(ok))} of {len(ok)} feasible "
              f"({len(run.met(due))} of {len(due)})")
        for site, c in sorted(run.tally.per_site.items()):
            print(f"      {site:8} render {c['render'] / MICRO:8,.0f} kWh  "
                  f"idle {c['idle'] / MICRO:7,.0f} kWh  "
                  f"cost {c['cost'] / PICO:8,.0f} CNY  CO2 {c['co2'] / NANO / 1e6:6,.2f} t")
    for line in farm.reasons[:3]:
        print(f"   held, e.g. {line}")
    chart = _draw(chart, farm, base, sites, horizon)
    print(f"   chart: {chart}")

    missed = sorted(ok - farm.met(ok))
    if missed:
        lines = [f"{j}: due {_local(farm.jobs[j].deadline)}, done {_local(farm.finished[j])}"
                 for j in missed]
        print("   !!! FEASIBLE DEADLINES MISSED by the farm's policy:\n      "
              + "\n      ".join(lines),
              file=sys.stderr)
        raise AssertionError(f"the farm's policy missed {len(missed)} feasible deadline(s): "
                             f"{', '.join(missed)}")

    what = f"{days} days of a studio's jobs on 3 sites, seed {seed}"
    baseline = "FCFS on the studio site only"
    return [
        Figure("week", f"total cost (render + idle), {what}", farm.tally.cost_pico / PICO, "CNY",
               baseline, base.tally.cost_pico / PICO),
        Figure("week", "total CO2 (render + idle)", farm.tally.co2_ng / NANO / 1000, "kg",
               baseline, base.tally.co2_ng / NANO / 1000),
        Figure("week", f"deadlines met, of {len(ok)} feasible", len(farm.met(ok)), "jobs",
               baseline, len(base.met(ok)), target=f"all {len(ok)}"),
        Figure("week", f"idle energy (nodes sleep after {sleep_after:g} s)",
               farm.tally.idle_ukwh / MICRO, "kWh",
               baseline + ", always on", base.tally.idle_ukwh / MICRO),
        Figure("week", "idle energy, no node sleeping", awake.tally.idle_ukwh / MICRO, "kWh",
               baseline + ", always on", base.tally.idle_ukwh / MICRO),
    ]


def _local(at: float) -> str:
    return datetime.fromtimestamp(at, STUDIO_ZONE).strftime("%a %H:%M")


def _draw(out: Path, farm: Farm, base: Farm, sites: dict[str, Site], horizon: float) -> Path:
    from benchmarks.weekchart import week_chart

    hours = hour_of(horizon - 1) + 1
    return week_chart(out, hours, farm.tally, base.tally, list(sites), sites["hami"], WEEK_START)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="days of submissions (default 7)")
    parser.add_argument("--seed", type=int, default=20, help="the week's random seed")
    parser.add_argument("--chart", type=Path, default=CHART, help=f"the PNG (default {CHART})")
    parser.add_argument("--sleep-after", type=float, default=600.0,
                        help="idle seconds before a node sleeps (0: never)")
    parser.add_argument("--wake", type=float, default=120.0,
                        help="seconds a sleeping node takes to wake")
    parser.add_argument("--plan-every", type=float, default=5.0, help="minutes between plans")
    args = parser.parse_args()
    show(measure(args.days, args.seed, args.chart, sleep_after=args.sleep_after, wake=args.wake,
                 plan_every=args.plan_every * 60))


if __name__ == "__main__":
    main()
