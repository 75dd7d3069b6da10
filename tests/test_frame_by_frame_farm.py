"""`--after JOB --frame-by-frame` on a real local farm of 2 workers: a comp follows a slow plate
frame by frame. Its frame 1 is done before the plate has rendered all its frames, and none of its
frames starts before its own frame of the plate is done (the attempts' times, from farm tasks)."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm
from test_wrangling import Farm

pytestmark = pytest.mark.slow


def test_a_comp_follows_a_slow_plate_frame_by_frame(tmp_path) -> None:
    env = farm_env(tmp_path / "state", FARM_ALLOW_COMMANDS="1")
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    try:
        farm = Farm(tmp_path, env)
        plate = farm.submit(farm.scene("plate", "1-6", sleep=2.0), name="plate")
        comp = farm.submit(EXAMPLES / "orbit.toml", renderer="null", frames="1-6", name="comp", after=plate,
                           frame_by_frame=True, priority=90)
        shown = farm.state(comp)
        assert (shown["after"], shown["frame_by_frame"]) == (plate, True)
        assert farm.wait(plate) == "done" and farm.wait(comp) == "done"

        def finished(job: str) -> dict[int, dict]:
            tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
            return {t["frames"]: next(a for a in t["attempts"] if a["state"] == "done") for t in tasks}

        plate_done, comp_done = finished(plate), finished(comp)
        assert comp_done["1"]["finished_at"] < max(a["finished_at"] for a in plate_done.values())
        for frame, attempt in comp_done.items():
            assert attempt["started_at"] >= plate_done[frame]["finished_at"], (frame, attempt, plate_done[frame])
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(tmp_path / "state")
