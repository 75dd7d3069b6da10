"""Issue 20, acceptance 2, on a real local farm with two sites of two workers each: a cheapest job
with a deadline waits, saying why, for the remote site's cheap band (set in farm.toml, which the
running manager reads again), renders there when the band opens, and `farm report` prices each
frame at the band it rendered in.

Bands start on a whole minute of the site's own time zone. So that the band opens seconds after
the test sets it, not one to two minutes, the remote site lives in a time zone of the test's own
(a TZif file on PYTHONTZPATH, which every process of the farm and the CLI inherit) whose offset
from UTC, a few seconds, puts a whole minute there LEAD seconds ahead: the farm's own clock and
every code path from band to plan to price are the real ones."""

from __future__ import annotations

import json
import os
import struct
import time
import zoneinfo
from datetime import datetime, timezone

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_for
from sqlalchemy import select

from renderfarm.config import load_settings
from renderfarm.db import make_engine, session_scope
from renderfarm.models import Attempt, Task

pytestmark = pytest.mark.slow

STUDIO = """
[sites.studio]
price_per_kwh = 1.0
currency = "CNY"
watts = 3600
"""
HAMI_FLAT = """
[sites.hami]
price_per_kwh = 1.5
currency = "CNY"
watts = 3600
"""
HAMI_BANDS = """
[sites.hami]
currency = "CNY"
watts = 3600
timezone = "Test/Hami"
[[sites.hami.price]]
from = "{opens}"
to = "{closes}"
per_kwh = 0.2
[[sites.hami.price]]
from = "{closes}"
to = "{opens}"
per_kwh = 1.5
"""
FRAMES = 60
LEAD = 25  # seconds from setting the band to its start: enough to submit, time and hold the job


def tzif(offset: int) -> bytes:
    """A TZif file (RFC 8536, version 2) for a zone `offset` seconds east of UTC, all year."""
    def block() -> bytes:  # no transitions, one local time type, its 4-byte name
        return (b"TZif2" + bytes(15) + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
                + struct.pack(">lbB", offset, 0, 0) + b"TST\0")
    east = abs(offset)  # the footer's POSIX TZ string counts west of UTC as positive
    posix = f"<TST>{'-' if offset > 0 else ''}{east // 3600}:{east % 3600 // 60:02d}:{east % 60:02d}"
    return block() + block() + f"\n{posix}\n".encode()


def hhmm(at: float, zone) -> str:
    return datetime.fromtimestamp(at, zone).strftime("%H:%M")


def test_a_cheapest_job_waits_for_the_cheap_band_and_is_priced_by_band(tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    toml = state / "farm.toml"
    toml.write_text(STUDIO + HAMI_FLAT)
    zones = tmp_path / "zoneinfo"
    (zones / "Test").mkdir(parents=True)
    env = farm_env(state, PYTHONTZPATH=os.pathsep.join([str(zones), *zoneinfo.TZPATH]))
    run_farm("up", "-d", "-w", "4", "--site", "studio", "--site", "hami", env=env, timeout=180)
    engine = make_engine(load_settings(env, cwd=tmp_path).database_url)
    try:
        wait_for(lambda: len(json.loads(run_farm("workers", "--json", env=env).stdout)) == 4, 120, "4 workers")
        # The band opens LEAD seconds from now, on a whole minute of hami's zone, and lasts an hour.
        opens = int(time.time()) + LEAD
        (zones / "Test" / "Hami").write_bytes(tzif(-opens % 60))
        with (zones / "Test" / "Hami").open("rb") as f:
            hami = zoneinfo.ZoneInfo.from_file(f)
        assert datetime.fromtimestamp(opens, hami).second == 0
        toml.write_text(STUDIO + HAMI_BANDS.format(opens=hhmm(opens, hami), closes=hhmm(opens + 3600, hami)))
        manager_log = state / "logs" / "manager.log"
        wait_for(lambda: "sites read again from farm.toml" in manager_log.read_text(), 30, "the manager to read the bands")

        deadline = datetime.fromtimestamp(time.time() + 3 * 3600, timezone.utc).isoformat(timespec="minutes")
        job = json.loads(run_farm("submit", str(EXAMPLES / "orbit.toml"), "--renderer", "null", "--frames",
                                  f"1-{FRAMES}", "--prefer", "cheapest", "--deadline", deadline, "--json",
                                  env=env).stdout)["id"]

        def status() -> dict:
            return json.loads(run_farm("status", job, "--json", env=env).stdout)

        held = wait_for(lambda: (s := status()).get("held_until") and s, 60, "the job to be held")
        print(f"held {opens - time.time():.1f} s before the band opened")
        assert time.time() < opens, "the test's own timing: the band opened before the job was held"
        assert held["held_until"] == opens
        assert held["plan"].startswith(f"waiting for hami {hhmm(opens, hami)} band (0.2/kWh); projected finish"), held
        listed = run_farm("jobs", env=env).stdout
        assert "held" in listed, listed
        assert held["frames_done"] < FRAMES

        wait_for(lambda: status()["state"] == "done", opens - time.time() + 120, "the job to finish")
        with session_scope(engine) as s:
            rows = s.execute(select(Attempt, Task.index).join(Task, Task.id == Attempt.task_id)
                             .where(Attempt.job_id == held["id"])).all()
            s.expunge_all()
        attempts = [a for a, _ in rows]
        before = [a for a in attempts if a.finished_at < opens]
        after = [a for a in attempts if a.started_at >= opens]
        assert before and after and len(before) + len(after) == len(attempts), "an attempt rendered across the band's start"
        assert {a.site for a in after} == {"hami"}  # the cheap site only, once its band opened
        assert min(a.started_at for a in after) - opens < 15, "released late"
        report = json.loads(run_farm("report", job, "--json", env=env).stdout)
        priced = {(r["task"], r["attempt"]): r for r in report["attempts"]}
        for attempt, index in rows:
            price = 0.2 if attempt.started_at >= opens else {"studio": 1.0, "hami": 1.5}[attempt.site]
            row = priced[(index, attempt.number)]
            assert row["energy_ukwh"] > 0 and row["cost_pico"] == row["energy_ukwh"] * round(price * 1e6), row
        assert report["total"]["cost_pico"]["CNY"] == sum(a.cost_pico for a in attempts)
    finally:
        engine.dispose()
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)
