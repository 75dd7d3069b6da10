"""Time-of-day prices and deadlines, on exact inputs: the sites' bands as farm.toml gives them and
the planner's verdicts (renderfarm.power.plan_job) at stated times."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from renderfarm.errors import ConfigError
from renderfarm.power import Capacity, plan_job
from renderfarm.sites import parse_sites

UTC = timezone.utc


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC).timestamp()


def sites(**extra) -> dict:
    """A studio at a flat 1.0/kWh, and Hami, cheap from midnight to six, in UTC for easy reading."""
    return parse_sites({
        "studio": {"price_per_kwh": 1.0, "currency": "CNY", "carbon_g_per_kwh": 600},
        "hami": {"currency": "CNY", "timezone": "UTC", "price": [
            {"from": "00:00", "to": "06:00", "per_kwh": 0.25}, {"from": "06:00", "to": "24:00", "per_kwh": 1.2}],
            "carbon": [{"from": "00:00", "to": "06:00", "g_per_kwh": 50}, {"from": "06:00", "to": "00:00", "g_per_kwh": 700}],
            **extra},
    }, "farm.toml")


def capacities(studio: int = 2, hami: int = 2) -> list[Capacity]:
    known = sites()
    return [Capacity(known["studio"], studio), Capacity(known["hami"], hami)]


# 10 tasks of 10 minutes on 2 workers: 50 minutes.
JOB = dict(tasks_left=10, task_seconds=600.0)


def test_a_job_due_in_20_hours_waits_for_the_cheap_band_and_is_released_at_its_start():
    now = at(6, 10)
    plan = plan_job(**JOB, capacities=capacities(), now=now, deadline=at(7, 6), prefer="cheapest")
    assert plan.holds(now) and plan.start == at(7, 0) and plan.site == "hami" and not plan.late
    assert plan.finish == at(7, 0, 50)
    assert plan.reason == "waiting for hami 00:00 band (0.25/kWh); projected finish 00:50 UTC, deadline 06:00 UTC"
    # At the band's start the same job renders, there.
    released = plan_job(**JOB, capacities=capacities(), now=at(7, 0), deadline=at(7, 6), prefer="cheapest")
    assert not released.holds(at(7, 0)) and released.site == "hami" and released.price == 250_000


def test_the_same_job_due_in_2_hours_renders_at_once_at_the_cheapest_site_now():
    now = at(6, 10)
    plan = plan_job(**JOB, capacities=capacities(), now=now, deadline=at(6, 12), prefer="cheapest")
    assert not plan.holds(now) and plan.site == "studio" and plan.price == 1_000_000 and not plan.late
    assert plan.reason == ""


def test_the_margin_counts_a_band_that_would_finish_just_in_time_is_not_waited_for():
    # The cheap band starts at 00:00 and the job takes 50 min; due 00:59 leaves 9 min, under
    # the margin (10 min, or a tenth of the render): it renders now. Due 01:00, it waits.
    plan = plan_job(**JOB, capacities=capacities(), now=at(6, 10), deadline=at(7, 0, 59), prefer="cheapest")
    assert plan.start == at(6, 10)
    assert plan_job(**JOB, capacities=capacities(), now=at(6, 10), deadline=at(7, 1), prefer="cheapest").start \
        == at(7, 0)


def test_greenest_waits_for_the_low_carbon_band_and_fastest_never_waits():
    now = at(6, 10)
    green = plan_job(**JOB, capacities=capacities(), now=now, deadline=at(7, 6), prefer="greenest")
    assert green.start == at(7, 0) and green.site == "hami" and "(50 g/kWh)" in green.reason
    fast = plan_job(**JOB, capacities=capacities(), now=now, deadline=at(7, 6), prefer="fastest")
    assert (fast.start, fast.site, fast.finish) == (now, None, now + 3 * 600)  # 10 tasks on 4 workers
    assert plan_job(**JOB, capacities=capacities(), now=now, deadline=None, prefer="cheapest").start == now


def test_a_job_that_can_no_longer_meet_its_deadline_is_flagged_and_renders_everywhere_now():
    now = at(6, 10)
    plan = plan_job(**JOB, capacities=capacities(), now=now, deadline=at(6, 10, 30), prefer="cheapest")
    assert plan.late and plan.start == now and plan.site is None
    assert plan.reason == "late: projected finish 10:30 UTC is past the deadline 10:30 UTC"
    # Only all four workers together make it: then it renders now, everywhere, not late.
    both = plan_job(**JOB, capacities=capacities(), now=now, deadline=at(6, 10, 55), prefer="cheapest")
    assert (both.start, both.site, both.late) == (now, None, False)


def test_prices_and_carbon_follow_the_band_in_force_in_the_sites_time_zone():
    urumqi = parse_sites({"hami": {"currency": "CNY", "timezone": "Asia/Urumqi", "price": [
        {"from": "10:00", "to": "17:00", "per_kwh": 0.22}, {"from": "17:00", "to": "10:00", "per_kwh": 0.45}]}},
        "farm.toml")["hami"]
    assert urumqi.price_at(at(6, 4)) == 220_000  # 10:00 in Urumqi (UTC+6)
    assert urumqi.price_at(at(6, 3, 59)) == 450_000
    assert urumqi.changes(at(6, 0), at(7, 0)) == [at(6, 4), at(6, 11)]
    assert urumqi.price_micros == 220_000  # the lowest band, for what compares flat prices


@pytest.mark.parametrize(("table", "error"), [
    ({"price": [{"from": "00:00", "to": "12:00", "per_kwh": 0.2}, {"from": "11:00", "to": "00:00", "per_kwh": 1}]},
     "farm.toml: sites.x.price[1]: 11:00-00:00 overlaps sites.x.price[0] 00:00-12:00 (at 11:00)"),
    ({"price": [{"from": "00:00", "to": "12:00", "per_kwh": 0.2}, {"from": "13:00", "to": "00:00", "per_kwh": 1}]},
     "farm.toml: sites.x.price: 12:00-13:00 is not covered (the bands must cover the whole day)"),
    ({"price": [{"from": "00:00", "to": "12:60", "per_kwh": 0.2}]},
     "farm.toml: sites.x.price[0].to: '12:60' is not a time of day HH:MM (00:00 to 24:00)"),
    ({"price": [{"from": "00:00", "to": "24:00", "per_kwh": 0.2}]},
     "farm.toml: sites.x.price[0]: from 00:00 to 24:00 is empty (a whole day is a flat amount)"),
    ({"price": [{"from": "00:00", "to": "12:00", "per_kwh": 0.2, "peak": 1}]},
     "farm.toml: sites.x.price[0]: unknown key 'peak' (expected from, to, per_kwh)"),
    ({"price": [{"from": "00:00", "per_kwh": 0.2}]}, "farm.toml: sites.x.price[0]: missing 'to'"),
    ({"price_per_kwh": 1, "price": [{"from": "00:00", "to": "12:00", "per_kwh": 0.2}]},
     "farm.toml: sites.x: give price_per_kwh or [[sites.x.price]] bands, not both"),
    ({"timezone": "Mars/Olympus"}, "farm.toml: sites.x.timezone: 'Mars/Olympus' is not a known time zone"),
    ({"carbon": [{"from": "06:00", "to": "05:00", "g_per_kwh": -1}]},
     "farm.toml: sites.x.carbon[0].g_per_kwh: expected a number of at least 0, got -1"),
])
def test_bad_bands_are_refused_naming_the_field(table, error):
    with pytest.raises(ConfigError) as e:
        parse_sites({"x": {"currency": "CNY", **table}}, "farm.toml")
    assert str(e.value).startswith(error), str(e.value)


def test_the_documented_hami_example_is_what_the_farm_reads():
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "costs.md").read_text()
    block = text[text.index("[sites.hami]"):]
    hami = parse_sites(tomllib.loads(block[:block.index("```")])["sites"], "docs/costs.md")["hami"]
    assert [(b.text(), b.value) for b in hami.price_bands] == [("10:00-17:00", 220_000), ("17:00-10:00", 450_000)]
    assert hami.carbon_at(at(6, 5)) == 150_000  # 11:00 in Urumqi


def test_an_attempt_is_charged_at_the_band_it_rendered_in():
    from renderfarm.sites import account

    hami = sites()["hami"]
    night = account(hami, wall_seconds=3600, cpu_seconds=0, watts=1000, at=at(7, 3))  # 1 kWh at 03:00
    day = account(hami, wall_seconds=3600, cpu_seconds=0, watts=1000, at=at(7, 12))
    assert (night.energy_ukwh, night.cost_pico, night.co2_ng) == (1_000_000, 250_000 * 10**6, 50_000 * 10**6)
    assert (day.cost_pico, day.co2_ng) == (1_200_000 * 10**6, 700_000 * 10**6)


def test_two_jobs_cannot_both_count_on_one_bands_workers():
    """The planner plans the earliest deadline first and books each plan's workers: a second job
    due as late sees Hami's cheap band taken and renders now at the studio; with one of the two
    workers left it waits for the band all the same, and counts on that one. (Found by the week
    benchmark: jobs held for one band each counted on all its workers, and missed.)"""
    from renderfarm.power import book

    now, due = at(6, 10), at(7, 6)
    booked: dict = {}
    first = plan_job(**JOB, capacities=capacities(), now=now, deadline=due, prefer="cheapest", booked=booked)
    assert (first.start, first.site, first.finish, first.workers) == (at(7, 0), "hami", at(7, 0, 50), 2)
    book(booked, first, JOB["tasks_left"])
    assert booked == {"hami": [(at(7, 0), at(7, 0, 50), 2)]}
    second = plan_job(**JOB, capacities=capacities(), now=now, deadline=due, prefer="cheapest", booked=booked)
    assert not second.holds(now) and second.site == "studio" and second.finish == at(6, 10, 50)
    assert not second.late and second.reason == ""
    half = {"hami": [(at(7, 0), at(7, 0, 50), 1)]}
    third = plan_job(**JOB, capacities=capacities(), now=now, deadline=due, prefer="cheapest", booked=half)
    assert (third.start, third.site, third.finish, third.workers) == (at(7, 0), "hami", at(7, 1, 40), 1)
    assert third.reason == "waiting for hami 00:00 band (0.25/kWh); projected finish 01:40 UTC, deadline 06:00 UTC"
