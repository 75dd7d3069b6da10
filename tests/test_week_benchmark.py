"""The week benchmark (benchmarks/week.py): one job through the simulation on exact inputs, and a
one-day week end to end: every feasible deadline met, the baseline and ratios printed, the chart
written as a PNG that decodes."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0


def test_a_cheapest_job_due_tomorrow_is_timed_at_once_then_waits_for_hamis_solar_band():
    """100 frames of 6 minutes submitted Monday 20:00 (Shanghai), due Tuesday 18:00, preferring
    the cheapest: its first tasks render at once on every idle node to time it (nodes asleep since
    00:10 wake in 2 minutes), then plan_job holds the rest for Hami's 0.22 band (10:00 in Urumqi,
    12:00 in Shanghai), where its 4 nodes render 23 rounds."""
    from benchmarks.week import SITES
    from benchmarks.weeksim import WEEK_START, Farm, Job
    from renderfarm.sites import parse_sites

    monday = WEEK_START.timestamp()
    job = Job("daily-1", "daily", monday + 20 * HOUR, [360.0] * 100, deadline=monday + 42 * HOUR,
              prefer="cheapest")
    farm = Farm([job], parse_sites(SITES, "test"), {"studio": 2, "karamay": 2, "hami": 4},
                policy=True, sleep_after=600, wake=120, plan_every=300).run()
    started = Counter((round(at - monday), site) for at, site, _ in farm.attempts)
    timing = monday + 20 * HOUR + 120
    assert {k: n for k, n in started.items() if k[0] == round(timing - monday)} == {
        (round(timing - monday), "studio"): 2, (round(timing - monday), "karamay"): 2,
        (round(timing - monday), "hami"): 4}
    band = monday + 36 * HOUR + 120
    assert sorted(k for k in started if k[0] != round(timing - monday)) == [
        (round(band - monday + i * 360), "hami") for i in range(23)]
    assert farm.held == {"daily-1"} and not farm.flagged
    assert farm.reasons == ["daily-1: waiting for hami 10:00 band (0.22/kWh); "
                            "projected finish 06:30 UTC, deadline 10:00 UTC"]
    assert farm.finished["daily-1"] == band + 23 * 360


def test_a_one_day_week_meets_every_feasible_deadline_and_draws_its_chart(tmp_path):
    chart = tmp_path / "week.png"
    done = subprocess.run([sys.executable, "-m", "benchmarks.week", "--days", "1", "--chart",
                           str(chart)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout
    policy = re.search(r"farm's policy: .*deadlines met (\d+) of (\d+) feasible", out)
    assert policy and int(policy[1]) == int(policy[2]) > 0, out
    assert re.search(r"baseline, FCFS studio: .*deadlines met \d+ of \d+ feasible", out), out
    for what, unit in (("total cost", "CNY"), ("total CO2", "kg")):
        m = re.search(rf"\[week\] {what} .*?: ([\d.,]+) {unit}; "
                      rf"FCFS on the studio site only: ([\d.,]+) {unit}; ratio ([\d.]+)x", out)
        assert m, out
        value, baseline, ratio = (float(g.replace(",", "")) for g in m.groups())
        assert 0 < value < baseline and abs(value / baseline - ratio) < 0.02, m[0]
    from PIL import Image

    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size == (1400, 760)
        image.load()
        colours = image.convert("RGB").getcolors(maxcolors=100_000)
    assert len(colours) > 5  # bars of each site, the baseline's line, the band's shade, text
    assert not list(tmp_path.glob(".*.partial"))
