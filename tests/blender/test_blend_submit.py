"""Submitting a .blend on a real local farm (one worker, Blender 3.4): without --renderer its
suffix picks Blender, and it renders; --renderer still overrides. --resolution and --samples over
the farm's caps, and a scene whose pack would unpack to more than the cap, are refused in one
line naming the cap and the setting that raises it, with nothing sent to the farm."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from conftest import farm_env, farm_processes, run_farm, wait_job
from scenes import SceneSpec, build_scene, find_blender

BLENDER = find_blender()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(BLENDER is None, reason="Blender is not installed")]


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend-submit")
    env = farm_env(root / "state", FARM_BLENDER=BLENDER, FARM_RENDER_THREADS="1")
    run_farm("up", "-d", "-w", "1", env=env, timeout=120)
    scene = build_scene(root / "small.blend", SceneSpec(width=64, height=36, samples=4, frame_end=2), BLENDER)
    yield root, env, scene
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(root / "state")


def sent(root, env) -> tuple[int, bytes]:
    """Jobs in the farm's database, and the last entry ever added to its control stream."""
    from renderfarm.config import load_settings
    from renderfarm.keys import CONTROL_STREAM
    from renderfarm.redisconn import connect

    with sqlite3.connect(root / "state" / "farm.db") as db:
        jobs = db.execute("select count(*) from jobs").fetchone()[0]
    return jobs, connect(load_settings(env)).xinfo_stream(CONTROL_STREAM)["last-generated-id"]


def status_of(env, job: str) -> dict:
    return json.loads(run_farm("status", job, "--json", env=env).stdout)


def test_a_blend_without_renderer_renders_with_blender(farm):
    root, env, scene = farm
    out = run_farm("submit", str(scene), "--frames", "1", "--json", env=env, timeout=120)
    job = json.loads(out.stdout)["id"]
    wait_job(env, job, ("done", "failed"), 240)
    status = status_of(env, job)
    assert (status["state"], status["renderer"]) == ("done", "blender"), status
    # --renderer still overrides: the builtin renderer does not read .blend files.
    refused = run_farm("submit", str(scene), "--renderer", "builtin", env=env, check=False)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "small.blend" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["FARM_MAX_UNPACKED_BYTES=1000"],
     "scene pack 'small.zip': unpacks to {size}, over the farm's cap of 1000 bytes "
     "(set FARM_MAX_UNPACKED_BYTES or max_unpacked_bytes in farm.toml to raise it)"),
    (["--resolution", "65536x65536"],
     "resolution: 65536x65536 is 4294967296 pixels a frame, over the farm's cap of 268435456 "
     "(set FARM_MAX_PIXELS or max_pixels in farm.toml to raise it)"),
    (["--samples", "1000000"],
     "samples: 1000000 is over the farm's cap of 65536 samples per pixel (set FARM_MAX_SAMPLES or max_samples in "
     "farm.toml to raise it)"),
])
def test_blender_resolution_and_samples_over_the_caps_are_one_line_and_send_nothing(farm, args, message):
    root, env, scene = farm
    before = sent(root, env)
    settings = dict(a.split("=", 1) for a in args if "=" in a)  # a cap lowered for this submit alone
    args = [a for a in args if "=" not in a]
    refused = run_farm("submit", str(scene), *args, env={**env, **settings}, check=False, timeout=120)
    assert refused.returncode != 0
    [line] = refused.stderr.strip().splitlines()
    assert re.fullmatch(re.escape(f"farm: {message}").replace(re.escape("{size}"), r"[0-9.]+ [KMG]?i?B"), line), line
    assert sent(root, env) == before
