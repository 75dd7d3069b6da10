"""Tiled frames through the real local farm: stitched frames equal whole renders pixel for
pixel in every format, and a tile lost before assembly is rendered again, alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_for, wait_job

from renderfarm.config import load_settings
from renderfarm.images import extension, read_pixels
from renderfarm.storage import open_storage

pytestmark = pytest.mark.slow

SHOT = EXAMPLES / "orbit.toml"  # 320x180: 3x2 tiles are 106/107 by 90; 100 px tiles leave 20x80 corners


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    env = farm_env(root / "state")
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    yield root, env
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(root / "state")


def submit(env, *args) -> str:
    return json.loads(run_farm("submit", str(SHOT), *args, "--json", env=env).stdout)["id"]


def wait_done(env, job_id: str) -> dict:
    wait_job(env, job_id, ("done", "failed"), 120)
    return json.loads(run_farm("status", job_id, "--json", env=env).stdout)


def frame_pixels(root, env, job_id: str, name: str, frame: int, fmt: str):
    storage = open_storage(load_settings(env, cwd=root))
    path = root / f"{job_id}.{extension(fmt)}"
    storage.download_file(f"jobs/{job_id}/frames/{name}.{frame:04d}.{extension(fmt)}", path)
    return read_pixels(path, fmt)


@pytest.mark.parametrize("fmt", ["png", "png16", "exr"])
def test_tiled_frames_equal_whole_frames_in_every_pixel(farm, fmt):
    root, env = farm
    whole = submit(env, "--frames", "7", "--format", fmt, "--name", "whole")
    by_grid = submit(env, "--frames", "7", "--format", fmt, "--tiles", "3x2", "--name", "grid")
    by_size = submit(env, "--frames", "7", "--format", fmt, "--tile-size", "100", "--name", "sized")
    for job in (whole, by_grid, by_size):
        assert wait_done(env, job)["state"] == "done"
    reference = frame_pixels(root, env, whole, "whole", 7, fmt)
    assert reference.shape[:2] == (180, 320)
    for job, name in ((by_grid, "grid"), (by_size, "sized")):
        stitched = frame_pixels(root, env, job, name, 7, fmt)
        assert stitched.dtype == reference.dtype and stitched.shape == reference.shape
        assert np.array_equal(stitched, reference), f"{name} ({fmt}) differs from the whole frame"
    tasks = json.loads(run_farm("tasks", by_size, "--json", env=env).stdout)
    assert [t["kind"] for t in tasks] == ["tile"] * 8 + ["assemble"]
    # Tiles are deleted once the frame is committed (in bulk, within a few seconds).
    storage = open_storage(load_settings(env, cwd=root))
    wait_for(lambda: list(storage.list(f"jobs/{by_grid}/tiles/")) == [], 15, "tiles deleted")


def test_keep_tiles_keeps_them(farm):
    root, env = farm
    job = submit(env, "--frames", "3", "--tiles", "2x1", "--keep-tiles", "--name", "kept")
    assert wait_done(env, job)["state"] == "done"
    storage = open_storage(load_settings(env, cwd=root))
    assert sorted(o.key for o in storage.list(f"jobs/{job}/tiles/")) == [
        f"jobs/{job}/tiles/kept.0003/0.png", f"jobs/{job}/tiles/kept.0003/1.png",
    ]
    # `farm download --tiles` fetches them, one folder per frame.
    dest = root / "kept-tiles"
    assert run_farm("download", job, str(dest), "--tiles", env=env).stdout.strip() == f"2 tiles in {dest}"
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["kept.0003/0.png", "kept.0003/1.png"]
    assert [read_pixels(dest / f, "png").shape[:2] for f in files] == [(180, 160), (180, 160)]
    # `farm tasks` says which tile each task renders, and where.
    tasks = tasks_of(env, job)
    assert [(t["kind"], t.get("column"), t.get("row"), t.get("region")) for t in tasks] == [
        ("tile", 0, 0, {"x": 0, "y": 0, "width": 160, "height": 180}),
        ("tile", 1, 0, {"x": 160, "y": 0, "width": 160, "height": 180}),
        ("assemble", None, None, {"x": 0, "y": 0, "width": 320, "height": 180}),
    ]
    table = run_farm("tasks", job, env=env).stdout.splitlines()
    assert [" ".join(line.split()[1:7]) for line in table[1:]] == [
        "tile 0,0 3 x=0 y=0 160x180", "tile 1,0 3 x=160 y=0 160x180", "assembly 3 x=0 y=0 320x180 done"]


def test_a_tile_deleted_before_assembly_is_rendered_again_alone(farm):
    from renderfarm.client import Submission, send_verb
    from renderfarm.client import submit as submit_shot

    root, env = farm
    settings = load_settings(env, cwd=root)
    storage = open_storage(settings)
    # Heavy tiles (2 s or so each), so the job is suspended long before all eight are done.
    job = submit_shot(settings, Submission(scene=EXAMPLES / "hero-still.toml", tiles="1x8", name="lost"))
    first_tile = f"jobs/{job}/tiles/lost.0024/0.png"
    wait_for(lambda: storage.head(first_tile) is not None, 120, "tile 0 to be committed", interval=0.05)
    send_verb(settings, "suspend", job)
    # Once the tiles in flight are done, nothing of the job runs: delete tile 0, then resume.
    wait_for(lambda: all(t["state"] not in ("queued", "running") for t in tasks_of(env, job)), 60, "quiet")
    assert any(t["state"] == "pending" for t in tasks_of(env, job)), "every tile finished before the suspend"
    storage.delete([first_tile])
    send_verb(settings, "resume", job)
    assert wait_done(env, job)["state"] == "done"
    by_kind = {(t["kind"], t["tile"]): t for t in tasks_of(env, job)}
    assembly = by_kind[("assemble", None)]
    assert len(assembly["attempts"]) == 2, assembly
    first, second = assembly["attempts"]
    assert first["state"] == "failed" and "tile 0" in first["error"], first
    assert second["state"] == "done"
    # Only tile 0 rendered twice (attempts withdrawn from a queue by the suspend never started).
    rendered = {t: [a for a in by_kind[("tile", t)]["attempts"] if a["started_at"]] for t in range(8)}
    assert len(rendered[0]) == 2
    assert all(len(rendered[t]) == 1 for t in range(1, 8)), rendered
    status = json.loads(run_farm("status", job, "--json", env=env).stdout)
    assert status["frames_done"] == 1


def tasks_of(env, job: str) -> list[dict]:
    return json.loads(run_farm("tasks", job, "--json", env=env).stdout)


def test_progress_counts_tiles(farm):
    from renderfarm.db import make_engine, session_scope
    from renderfarm.status import job_status, resolve_job

    root, env = farm
    # Tiles slow enough (32 samples, not 4) that the time between a frame's first committed tile
    # and its assembly is seconds, not a blink a loaded machine's polling can miss.
    slow = root / "slow-orbit.toml"
    slow.write_text(SHOT.read_text().replace("samples = 4", "samples = 32", 1))
    job = json.loads(run_farm("submit", str(slow), "--frames", "1-2", "--tiles", "2x2", "--name", "prog", "--json",
                              env=env).stdout)["id"]
    engine = make_engine(load_settings(env, cwd=root).database_url)
    seen = []

    def partial():
        with session_scope(engine) as session:
            status = job_status(session, resolve_job(session, job))
        if status.frames_done == 0 and 0 < status.progress < 1:
            seen.append(status.progress)
        return status.state == "done"

    wait_for(partial, 120, f"job {job}", interval=0.01)
    engine.dispose()
    # Before either frame is assembled, committed tiles already count: a frame is 4 tiles and
    # its assembly, so each tile is a tenth of this two-frame job.
    assert seen, "never saw a tiled frame partly done"
