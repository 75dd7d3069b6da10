"""Costs for a farm with no price, in readable units: the report's JSON has no empty currency, its
chart draws energy and render time instead of an empty cost axis, and `farm config` shows the
sites that set prices."""

from __future__ import annotations

import io
import json

import pytest
from conftest import EXAMPLES, farm_env, run_farm
from faults.livefarm import LiveFarm
from PIL import Image

from renderfarm.errors import ConfigError
from renderfarm.report import Report, Usage
from renderfarm.sites import parse_sites


def unpriced_report(frames: int = 3) -> Report:
    """A report as `job_report` makes it for attempts at a site with no price."""
    attempts = [
        {"task": i, "frames": [i + 1], "attempt": 1, "worker": "w1", "state": "done", "site": "local",
         "wall_seconds": 0.5, "cpu_seconds": 0.5, "energy_ukwh": 14, "cost_pico": 0, "currency": "", "co2_ng": 0}
        for i in range(frames)
    ]
    total = Usage()
    for _ in attempts:
        total.add(attempts=1, wall=0.5, cpu=0.5, energy=14, co2=0, currency="", cost=0)
    return Report("0badc0de", "orbit", "done", total, {"local": total}, {"w1": total}, {}, {}, attempts)


def test_a_job_without_a_price_costs_nothing_in_no_currency():
    doc = unpriced_report().total.to_json()
    assert doc["cost"] == {} and doc["cost_pico"] == {}  # was {"": 0.0} and {"": 0}
    assert doc["energy_ukwh"] == 42


def test_the_chart_of_a_job_without_a_price_draws_energy_and_time(tmp_path):
    from renderfarm.charts import chart_panels, cost_chart

    report = unpriced_report()
    energy, time = chart_panels(report)
    assert "energy per frame" in energy.title and energy.unit == "Wh"
    assert energy.cells == {(1, "local"): 0.014, (2, "local"): 0.014, (3, "local"): 0.014}
    assert energy.axes([1, 2, 3])[0].labels() == ["0.000", "0.005", "0.010", "0.015", "0.020"]
    assert "render time per frame" in time.title and time.unit == "s"
    assert time.axes([1, 2, 3])[1].labels() == ["0.0", "0.5", "1.0", "1.5", "2.0"]
    chart = cost_chart(report, tmp_path / "cost.png")
    with Image.open(io.BytesIO(chart.read_bytes())) as img:
        assert img.size == (1100, 2 * 420)


@pytest.mark.parametrize(
    ("maximum", "unit", "decimals", "labels"),
    [
        (6.6e-06, "EUR", 2, ["0.000000", "0.000002", "0.000004", "0.000006", "0.000008"]),
        (12.3, "EUR", 2, ["0.00", "5.00", "10.00", "15.00", "20.00"]),
        (0.9, "CNY", 2, ["0.00", "0.25", "0.50", "0.75", "1.00"]),
        (1530.0, "s", 0, ["0", "500", "1000", "1500", "2000"]),
        (0.0, "Wh", 0, ["0.00", "0.25", "0.50", "0.75", "1.00"]),
    ],
)
def test_axes_count_in_round_steps_without_exponents(maximum, unit, decimals, labels):
    from renderfarm.charts import nice_axis

    assert nice_axis(maximum, unit, min_decimals=decimals).labels() == labels


def test_amounts_read_as_plain_decimals():
    from renderfarm.charts import readable

    assert readable(6.6e-06, "EUR", min_decimals=2) == "0.00000660 EUR"
    assert readable(12.3456, "EUR", min_decimals=2) == "12.35 EUR"
    assert readable(0.0123, "Wh") == "0.0123 Wh"
    assert readable(0, "Wh") == "0 Wh"


def test_a_price_needs_a_currency():
    with pytest.raises(ConfigError, match=r"farm.toml: sites.paris.currency: missing; price_per_kwh 0.3"):
        parse_sites({"paris": {"price_per_kwh": 0.3}}, "farm.toml")


def test_farm_config_shows_the_sites_and_where_they_came_from(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "farm.toml").write_text('[sites.karamay]\nprice_per_kwh = 0.4\ncurrency = "cny"\n'
                                     "carbon_g_per_kwh = 560\n")
    doc = json.loads(run_farm("config", "--json", env=farm_env(state)).stdout)
    where = str(state / "farm.toml")
    assert doc["sites.karamay.price_per_kwh"] == {"value": "0.4", "source": where}
    assert doc["sites.karamay.currency"] == {"value": "CNY", "source": where}
    assert doc["sites.karamay.carbon_g_per_kwh"] == {"value": "560", "source": where}
    assert doc["sites.karamay.watts"]["value"] == "100"
    (state / "farm.toml").unlink()
    text = run_farm("config", env=farm_env(state)).stdout
    assert "none (add [sites.NAME] to farm.toml to price energy)" in text


@pytest.mark.slow
def test_report_of_a_real_job_without_a_price(tmp_path):
    farm = LiveFarm(tmp_path, workers=1)
    farm.up()
    try:
        job = farm.submit(EXAMPLES / "orbit.toml", "--frames", "1-3")
        assert farm.wait_job(job) == "done"
        doc = json.loads(run_farm("report", job, "--json", env=farm.env).stdout)
        for usage in (doc["total"], *doc["by_site"].values(), *doc["by_frame"].values()):
            assert usage["cost"] == {} and usage["cost_pico"] == {} and usage["energy_ukwh"] > 0
        run_farm("report", job, "--png", str(tmp_path / "cost.png"), env=farm.env)
        with Image.open(tmp_path / "cost.png") as img:
            assert img.size == (1100, 2 * 420)  # energy and render time
    finally:
        farm.down()


def test_every_site_key_is_documented():
    from renderfarm.sites import _KEYS

    root = EXAMPLES.parent
    costs = (root / "docs" / "costs.md").read_text()
    assert all(f"`{key}`" in costs for key in _KEYS), sorted(k for k in _KEYS if f"`{k}`" not in costs)
    readme = (root / "README.md").read_text()
    assert "[sites." in readme and "docs/costs.md" in readme
    # A price changed under a running manager (tests/test_sites_reload.py shows it):
    assert "reads farm.toml's `[sites]` again" in costs and "without a restart" in costs


def test_the_readmes_band_example_is_a_valid_site():
    import tomllib

    from renderfarm.sites import parse_sites

    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme[readme.index("[sites.hami]"):]
    site = parse_sites(tomllib.loads(block[:block.index("```")])["sites"], "README")["hami"]
    assert len(site.price_bands) == 2 and len(site.carbon_bands) == 2 and site.idle_watts == 60
