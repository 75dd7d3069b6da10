"""Dispatch ranks each site's workers by the price of the band in force now: Hami, whose solar
band is the farm's cheapest, is dearer than Karamay at night, so a cheapest-first job's task goes
to Karamay at night and to Hami by day (a real Valkey, SQLite and the manager's clock stepped)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from nodekit import SPEC, SteppedFarm
from test_manager_loop import in_process_manager

from renderfarm.clock import SteppedClock
from renderfarm.models import AttemptState

FARM_TOML = """
[sites.karamay]
price_per_kwh = 0.4
currency = "CNY"

[sites.hami]
currency = "CNY"
timezone = "UTC"
[[sites.hami.price]]
from = "10:00"
to = "17:00"
per_kwh = 0.22
[[sites.hami.price]]
from = "17:00"
to = "10:00"
per_kwh = 0.45
"""


def test_a_cheapest_job_goes_to_the_site_cheapest_in_the_band_of_now(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "farm.toml").write_text(FARM_TOML)
    clock = SteppedClock(datetime(2026, 12, 6, 2, tzinfo=timezone.utc).timestamp())  # night
    manager = in_process_manager(redis_url, tmp_path, clock)
    try:
        farm = SteppedFarm(manager, ("k1", "h1"), sites={"k1": "karamay", "h1": "hami"})
        farm.beat()
        farm.submit(SPEC.model_copy(update={"frames": "1", "prefer": "cheapest"}))
        farm.beat()
        assert [w for _, w, _ in farm.attempts(AttemptState.QUEUED)] == ["k1"]
        farm.render_all()

        clock.advance(10 * 3600)  # noon: Hami's solar band
        farm.beat()
        farm.submit(SPEC.model_copy(update={"frames": "1", "prefer": "cheapest", "name": "noon"}))
        farm.beat()
        assert [w for _, w, _ in farm.attempts(AttemptState.QUEUED)] == ["h1"]
    finally:
        manager.engine.dispose()
