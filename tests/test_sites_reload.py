"""A running manager reads farm.toml's sites again when the file changes: a new price applies to
the attempts charged from then on, without a restart; a file that is not valid keeps the sites as
they were and says why (real Valkey, SQLite and file storage; the manager's clock stepped)."""

from __future__ import annotations

import logging
from pathlib import Path

from nodekit import SPEC, SteppedFarm
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.manager.loop import ACL_WATCH_EVERY
from renderfarm.models import Attempt, AttemptState
from renderfarm.sites import MICRO

SITE = """
[sites.studio]
currency = "CNY"
watts = 360
price_per_kwh = {price}
"""
OVERLAPPING = """
[sites.studio]
currency = "CNY"
[[sites.studio.price]]
from = "00:00"
to = "12:00"
per_kwh = 0.1
[[sites.studio.price]]
from = "11:00"
to = "00:00"
per_kwh = 0.2
"""


def charged(farm: SteppedFarm, attempt_id: int) -> float:
    """What the attempt cost per kWh, in the site's currency."""
    with session_scope(farm.manager.engine) as s:
        attempt = s.get(Attempt, attempt_id)
        return attempt.cost_pico / attempt.energy_ukwh / MICRO


def next_round(farm: SteppedFarm, clock: SteppedClock) -> None:
    clock.advance(ACL_WATCH_EVERY)
    farm.beat()


def test_a_price_changed_in_farm_toml_applies_without_a_restart(redis_url: str, tmp_path: Path, caplog) -> None:
    toml = tmp_path / "farm.toml"
    toml.write_text(SITE.format(price="1.0"))
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock)
    try:
        farm = SteppedFarm(manager, ("s1",), sites={"s1": "studio"})
        farm.beat()
        farm.submit(SPEC.model_copy(update={"frames": "1-3"}))
        farm.beat()
        first = farm.attempts(AttemptState.QUEUED)[0][0]
        farm.render(first, wall=10.0)
        assert charged(farm, first) == 1.0

        toml.write_text(SITE.format(price="0.45"))
        next_round(farm, clock)
        assert manager.settings.site("studio").price_per_kwh == 0.45
        second = farm.attempts(AttemptState.QUEUED)[0][0]
        farm.render(second, wall=10.0)
        assert charged(farm, second) == 0.45
        assert charged(farm, first) == 1.0  # what was charged stays

        toml.write_text(OVERLAPPING)
        with caplog.at_level(logging.ERROR, logger="renderfarm.manager"):
            next_round(farm, clock)
            next_round(farm, clock)  # said once, not at every look
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(said) == 1 and "sites are kept as they were" in said[0] and "overlaps" in said[0], said
        assert manager.settings.site("studio").price_per_kwh == 0.45
        third = farm.attempts(AttemptState.QUEUED)[0][0]
        farm.render(third, wall=10.0)
        assert charged(farm, third) == 0.45
        with session_scope(manager.engine) as s:
            assert s.scalars(select(Attempt.state)).all() == ["done"] * 3
    finally:
        manager.engine.dispose()
