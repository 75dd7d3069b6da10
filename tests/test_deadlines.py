"""A job with a deadline on a manager in this process (real Valkey, SQLite, file storage; its
clock stepped by the test): held for Hami's cheap night band while the deadline allows, released
at the band's start to Hami's workers only; rendered at once when the deadline is near."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from nodekit import SPEC, SteppedFarm
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.manager.planner import MEASURING, PLAN_EVERY
from renderfarm.models import AttemptState, Job
from renderfarm.status import job_status

FARM_TOML = """
[sites.studio]
price_per_kwh = 1.0
currency = "CNY"

[sites.hami]
currency = "CNY"
timezone = "UTC"
[[sites.hami.price]]
from = "00:00"
to = "06:00"
per_kwh = 0.25
[[sites.hami.price]]
from = "06:00"
to = "00:00"
per_kwh = 1.2
"""
TEN_AM = datetime(2026, 12, 6, 10, tzinfo=timezone.utc).timestamp()
MIDNIGHT = datetime(2026, 12, 7, 0, tzinfo=timezone.utc).timestamp()
TASK = 600.0  # each frame renders in 10 minutes


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    (tmp_path / "farm.toml").write_text(FARM_TOML)
    clock = SteppedClock(TEN_AM)
    manager = in_process_manager(redis_url, tmp_path, clock)
    farm = SteppedFarm(manager, ("s1", "h1"), sites={"s1": "studio", "h1": "hami"})
    farm.clock = clock
    yield farm
    manager.engine.dispose()


def job_row(farm: SteppedFarm) -> Job:
    with session_scope(farm.manager.engine) as s:
        return s.scalars(select(Job)).one()


def plan_again(farm: SteppedFarm, seconds: float = PLAN_EVERY) -> None:
    farm.clock.advance(seconds)
    farm.beat()


def test_a_job_due_tomorrow_waits_for_the_cheap_band_and_then_renders_only_there(farm: SteppedFarm) -> None:
    farm.beat()
    farm.submit(SPEC.model_copy(update={"frames": "1-12", "deadline": TEN_AM + 20 * 3600, "prefer": "cheapest"}))
    farm.beat()
    assert job_row(farm).plan_note == MEASURING  # nothing to time it by: its first tasks render
    first = farm.attempts(AttemptState.QUEUED)
    assert {w for _, w, _ in first} == {"s1", "h1"}
    for attempt_id, _, _ in first:
        farm.render(attempt_id, wall=TASK)
    plan_again(farm)
    job = job_row(farm)
    assert job.plan_start == MIDNIGHT and job.plan_site == "hami", (job.plan_note, job.plan_start)
    assert job.plan_note == ("waiting for hami 00:00 band (0.25/kWh); projected finish 01:20 UTC, "
                             "deadline 06:00 UTC")
    with session_scope(farm.manager.engine) as s:
        shown = job_status(s, s.get(Job, job.id), now=farm.clock.now())
    assert shown.held_until == MIDNIGHT and shown.plan == job.plan_note
    # farm top's jobs table and status line, from the same row:
    from renderfarm_cli.top_view import job_state, job_story

    assert job_state(shown) == "held" and job_story(shown) == job.plan_note
    # Held: nothing new is handed out all afternoon.
    handed = len(farm.attempts())
    for _ in range(3):
        plan_again(farm, 3600)
    assert len(farm.attempts()) == handed

    farm.clock.advance(MIDNIGHT - farm.clock.now())  # the band opens: released, to Hami only
    farm.beat()
    queued = farm.attempts(AttemptState.QUEUED)
    assert queued and {w for _, w, _ in queued} == {"h1"}, queued
    while farm.job_state() != "done":
        for attempt_id, worker, _ in farm.attempts(AttemptState.QUEUED):
            assert worker == "h1"
            farm.render(attempt_id, wall=TASK)
        farm.beat()


def test_the_same_job_due_in_two_hours_renders_at_once_and_one_past_hope_is_flagged_late(
        farm: SteppedFarm) -> None:
    farm.beat()
    farm.submit(SPEC.model_copy(update={"frames": "1-12", "deadline": TEN_AM + 2 * 3600, "prefer": "cheapest"}))
    farm.beat()
    for attempt_id, _, _ in farm.attempts(AttemptState.QUEUED):
        farm.render(attempt_id, wall=TASK)
    plan_again(farm)
    job = job_row(farm)
    # 8 tasks left at 10 minutes: at once, at the cheaper site now (the studio's 1.0 against Hami's
    # day price of 1.2), whose one worker alone still finishes by 11:30, inside deadline and margin.
    # (With 11 left, neither site alone could: then it rendered on both.)
    assert (job.plan_start, job.plan_site, job.plan_note) == (None, "studio", None), job.plan_note
    for attempt_id, _, _ in farm.attempts(AttemptState.QUEUED):  # handed out before this plan
        farm.render(attempt_id, wall=TASK)
    queued = farm.attempts(AttemptState.QUEUED)
    assert queued and {w for _, w, _ in queued} == {"s1"}, queued

    # Ten minutes before the deadline, with work left: late, said so, rendered everywhere.
    farm.clock.advance(TEN_AM + 2 * 3600 - 600 - farm.clock.now())
    plan_again(farm, 0)
    job = job_row(farm)
    assert job.plan_note.startswith("late: projected finish") and job.plan_start is None and job.plan_site is None


def test_submit_refuses_a_bad_or_past_deadline_and_an_unknown_preference_in_one_line(tmp_path: Path) -> None:
    from conftest import EXAMPLES, farm_env, run_farm

    env = farm_env(tmp_path / "state")
    for args, says in ((["--deadline", "yesterday"], "deadline: 'yesterday' is not a date and time"),
                       (["--deadline", "2020-01-01T00:00"], "deadline: 2020-01-01T00:00 is already past"),
                       (["--prefer", "cheaper"], "prefer: 'cheaper' should be 'cheapest', 'greenest' or 'fastest'")):
        bad = run_farm("submit", str(EXAMPLES / "orbit.toml"), *args, env=env, check=False)
        assert bad.returncode == 1 and says in bad.stderr and bad.stderr.count("\n") == 1, bad


def test_two_jobs_held_for_one_band_are_planned_earliest_deadline_first_and_do_not_share_it(
        farm: SteppedFarm) -> None:
    """Hami's one worker can render one of them in its cheap band: the job due first is held
    for it, and the other, counting only what is left there, renders at the studio now."""
    farm.beat()
    later = farm.submit(SPEC.model_copy(update={"frames": "1-6", "deadline": TEN_AM + 21 * 3600,
                                                "prefer": "cheapest"}))
    first = farm.submit(SPEC.model_copy(update={"frames": "1-6", "deadline": TEN_AM + 20 * 3600,
                                                "prefer": "cheapest"}))
    for _ in range(2):  # each job's first tasks render, to time it
        farm.beat()
        for attempt_id, _, _ in farm.attempts(AttemptState.QUEUED):
            farm.render(attempt_id, wall=TASK)
    plan_again(farm)
    with session_scope(farm.manager.engine) as s:
        plans = {j.id: (j.plan_start, j.plan_site) for j in s.scalars(select(Job))}
        notes = [j.plan_note for j in s.scalars(select(Job))]
    assert MEASURING not in notes, notes
    assert plans == {first: (MIDNIGHT, "hami"), later: (None, "studio")}, plans
