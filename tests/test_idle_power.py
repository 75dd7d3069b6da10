"""Idle power per site: awake idle nodes draw the site's idle_watts, asleep ones its sleep_watts,
and what sleeping saved is the difference over the time asleep, priced at the band in force;
counted by the manager (stepped clock) into `idle_power`, read by `farm report` with no job."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import farm_env, run_farm
from nodekit import stepped_farm

from renderfarm import presence
from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.idlepower import Slice, charge, idle_report
from renderfarm.sites import parse_sites
from renderfarm.wire import Capabilities

SITES = {
    "hami": {"timezone": "UTC", "currency": "CNY", "idle_watts": 100, "sleep_watts": 5,
             "price": [{"from": "00:00", "to": "10:00", "per_kwh": 0.5},
                       {"from": "10:00", "to": "24:00", "per_kwh": 0.25}]},
}
TEN_AM = 1_800_007_200.0  # 2027-01-15 10:00 UTC (1_800_000_000 is 08:00)


def test_a_slice_is_charged_at_the_band_in_force() -> None:
    hami = parse_sites(SITES, "farm.toml")["hami"]
    early = charge(hami, idle=2, asleep=3, seconds=60, at=TEN_AM - 60)
    assert early == Slice(idle_seconds=120, idle_joules=12_000, idle_cost=12_000 * 500_000, asleep_seconds=180,
                          asleep_joules=900, asleep_cost=900 * 500_000, saved_joules=17_100,
                          saved_cost=17_100 * 500_000)
    late = charge(hami, idle=2, asleep=3, seconds=60, at=TEN_AM)
    assert late.saved_cost == 17_100 * 250_000
    assert early.sums() == {"idle_seconds": 120, "idle_ukwh": 3333, "idle_cost_pico": 1_666_666_667,
                            "asleep_seconds": 180, "asleep_ukwh": 250, "asleep_cost_pico": 125_000_000,
                            "saved_ukwh": 4750, "saved_cost_pico": 2_375_000_000}
    assert charge(parse_sites({"x": {}}, "farm.toml")["x"], idle=5, asleep=5, seconds=60, at=0) == Slice()


def test_the_manager_counts_idle_and_asleep_time_and_what_sleep_saved(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "farm.toml").write_text(
        '[sites.hami]\ntimezone = "UTC"\ncurrency = "CNY"\nidle_watts = 100\nsleep_watts = 5\nprice_per_kwh = 0.5\n')
    clock = SteppedClock()
    with stepped_farm(redis_url, tmp_path, (), clock=clock, env={"FARM_SLEEP_AFTER": "600"}) as farm:
        from nodekit import ActingNode, enroll_in_process

        node = ActingNode(enroll_in_process(farm.manager, "a", site="hami"))

        def beat(state: str = "idle") -> None:
            node.beat(farm.manager.r, state=state, site="hami", capabilities=Capabilities(renderers={"null": "1"}))
            farm.manager.tick()

        beat()
        for _ in range(20):  # idle 600 s, in looks 30 s apart: then told to sleep
            clock.advance(30)
            beat()
        clock.advance(30)
        beat("asleep")  # it sleeps
        presence.leave(farm.manager.r, "a")
        for _ in range(10):  # 330 s asleep in all
            clock.advance(30)
            farm.manager.tick()
        with session_scope(farm.manager.engine) as s:
            farm.manager.sleeper.meter.flush(s, farm.manager.settings.sites, clock.now())
        with session_scope(farm.manager.engine) as s:
            [row] = idle_report(s)
    assert row == {
        "site": "hami", "currency": "CNY",
        "idle_hours": round(600 / 3600, 6), "idle_kwh": 0.016667, "idle_cost": 0.008333333333,
        "asleep_hours": round(330 / 3600, 6), "asleep_kwh": 0.000458, "asleep_cost": 0.000229166667,
        "saved_kwh": 0.008708, "saved_cost": 0.004354166667,
        "idle_ukwh": 16667, "idle_cost_pico": 8_333_333_333, "saved_ukwh": 8708, "saved_cost_pico": 4_354_166_667,
    }
    # `farm report` with no job shows them (its database is the state directory's).
    env = farm_env(tmp_path)
    assert json.loads(run_farm("report", "--json", env=env, cwd=tmp_path).stdout) == {"idle": [row]}
    table = run_farm("report", env=env, cwd=tmp_path).stdout.splitlines()
    assert table[0].split() == ["SITE", "IDLE", "h", "IDLE", "kWh", "IDLE", "COST", "ASLEEP", "h", "ASLEEP", "kWh",
                                "SAVED", "kWh", "SAVED", "COST"]
    assert table[1].split() == ["hami", "0.17", "0.017", "0.008333", "CNY", "0.09", "0.000", "0.009", "0.004354",
                                "CNY"]
