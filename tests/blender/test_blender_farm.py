"""Blender jobs through the real local farm (issue 4): chunked and tiled frames match Blender's
own renders of the same scene, an external texture travels with the scene, and a bad scene path,
a scene that does not open, a missing or wrong Blender and auto-run scripts are each handled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import farm_env, farm_processes, run_farm, wait_for, wait_job
from scenes import SceneSpec, build_scene, find_blender, render_reference

from renderfarm.config import load_settings
from renderfarm.images import extension, read_pixels
from renderfarm.storage import open_storage

BLENDER = find_blender()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(BLENDER is None, reason="Blender is not installed")]

ORANGE, TEAL = (230, 120, 20), (20, 140, 160)  # the checker texture's colours


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("blender")
    env = farm_env(root / "state", FARM_BLENDER=BLENDER, FARM_RENDER_THREADS="1",
                   FARM_ALLOW_SCRIPTS="1")  # one test submits --allow-scripts
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    yield root, env
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(root / "state")


@pytest.fixture(scope="module")
def animated(tmp_path_factory) -> Path:
    """160x90, frames 1-8, 16 samples, Blender's default dither."""
    path = tmp_path_factory.mktemp("scenes") / "animated.blend"
    return build_scene(path, SceneSpec(samples=16), BLENDER)


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory) -> Path:
    """The same at 64 samples with adaptive sampling, which stops some pixels early, and no
    dither: a tile cut without margins differs from the whole frame along its borders (by 2/255
    here, Blender 3.4.1), a tile rendered with margins does not."""
    path = tmp_path_factory.mktemp("scenes") / "adaptive.blend"
    return build_scene(path, SceneSpec(samples=64, adaptive=True, dither=0.0), BLENDER)


def submit(env, scene: Path | str, *args: str, cwd: Path | None = None) -> dict:
    out = run_farm("submit", str(scene), "--renderer", "blender", *args, "--json", env=env, cwd=cwd, timeout=120)
    return json.loads(out.stdout)


def status_of(env, job_id: str) -> dict:
    return json.loads(run_farm("status", job_id, "--json", env=env).stdout)


def wait_done(env, job_id: str, timeout: float = 240) -> dict:
    wait_job(env, job_id, ("done", "failed", "cancelled"), timeout)
    status = status_of(env, job_id)
    assert status["state"] == "done", (status, logs_of(env, job_id))
    return status


def logs_of(env, job_id: str) -> str:
    """Every task's stored Blender log, to explain a failed job."""
    tasks = json.loads(run_farm("tasks", job_id, "--json", env=env).stdout)
    return "\n".join(run_farm("log", f"{job_id}:{t['index']}", env=env, check=False).stdout[-2000:] for t in tasks)


def frame_pixels(root: Path, env, job_id: str, name: str, frame: int, fmt: str = "png") -> np.ndarray:
    storage = open_storage(load_settings(env, cwd=root))
    path = root / f"{job_id}.{frame:04d}.{extension(fmt)}"
    storage.download_file(f"jobs/{job_id}/frames/{name}.{frame:04d}.{extension(fmt)}", path)
    return read_pixels(path, fmt)


def rgb(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., :3].astype(np.int16)


def difference(farm_pixels: np.ndarray, reference: Path) -> np.ndarray:
    """Per pixel, the largest difference over R, G, B between a farm frame and a reference PNG."""
    ref = read_pixels(reference, "png")
    assert farm_pixels.dtype == np.uint8 and farm_pixels.shape[:2] == ref.shape[:2], (farm_pixels.shape, ref.shape)
    return np.abs(rgb(farm_pixels) - rgb(ref)).max(axis=2)


def one_line_error(proc) -> str:
    """The single line a refused command printed on stderr."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- frames match Blender's own ------------------------------------------------------------------


def test_chunked_stepped_frames_match_blenders_own_renders(farm, animated):
    root, env = farm
    job = submit(env, animated, "--frames", "1-8x2", "--chunk", "2", "--name", "anim")["id"]
    references = render_reference(animated, [1, 3, 5, 7], root / "ref-anim", blender=BLENDER)
    wait_done(env, job)
    tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
    assert [t["kind"] for t in tasks] == ["render", "render"]
    storage = open_storage(load_settings(env, cwd=root))
    assert sorted(o.key for o in storage.list(f"jobs/{job}/frames/")) == [
        f"jobs/{job}/frames/anim.{f:04d}.png" for f in (1, 3, 5, 7)
    ]
    for frame, reference in references.items():
        diff = difference(frame_pixels(root, env, job, "anim", frame), reference)
        print(f"frame {frame}: largest difference {diff.max()}/255")
        assert diff.max() <= 2, f"frame {frame} differs by {diff.max()}/255"
    assert "Blender" in run_farm("log", f"{job}:0", env=env).stdout


def test_exr_frames_hold_the_linear_render(farm, adaptive):
    root, env = farm
    # Undithered: the PNG reference carries no noise that the EXR lacks.
    job = submit(env, adaptive, "--frames", "5", "--format", "exr", "--name", "linear")["id"]
    reference = render_reference(adaptive, [5], root / "ref-exr", blender=BLENDER)[5]
    wait_done(env, job)
    pixels = frame_pixels(root, env, job, "linear", 5, "exr")
    assert pixels.dtype in (np.float16, np.float32) and pixels.shape[:2] == (90, 160)
    # The Standard view transform is the sRGB curve: encode, quantise, compare with the PNG.
    linear = np.clip(pixels[..., :3].astype(np.float64), 0.0, 1.0)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    diff = difference(np.round(encoded * 255).astype(np.uint8), reference)
    assert diff.max() <= 2, f"the EXR, sRGB-encoded, differs from Blender's PNG by {diff.max()}/255"


def test_tiles_at_an_odd_resolution_stitch_into_the_whole_frame(farm, adaptive):
    root, env = farm
    width, height = 161, 91  # 2x2 tiles: columns of 80 and 81 px, rows of 45 and 46
    submitted = submit(env, adaptive, "--frames", "3", "--tiles", "2x2", "--resolution", f"{width}x{height}",
                       "--name", "tiled")
    assert (submitted["width"], submitted["height"]) == (width, height)
    job = submitted["id"]
    reference = render_reference(adaptive, [3], root / "ref-tiled", blender=BLENDER, resolution=(width, height))[3]
    wait_done(env, job)
    tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
    assert [t["kind"] for t in tasks] == ["tile"] * 4 + ["assemble"]
    diff = difference(frame_pixels(root, env, job, "tiled", 3), reference)
    assert diff.shape == (height, width)
    # Adaptive sampling looks at neighbouring pixels, which a tile lacks along its edges.
    ys, xs = np.mgrid[0:height, 0:width]
    border = (np.abs(xs - 80) <= 3) | (np.abs(ys - 45.5) <= 3.5)
    print(f"2x2 tiles at {width}x{height}: largest difference {diff[border].max()}/255 within 3 px of the tile"
          f" borders ({np.count_nonzero(diff[border])} pixels differ), {diff[~border].max()}/255 elsewhere"
          f" ({np.count_nonzero(diff[~border])} differ)")
    assert diff.max() <= 3, f"the stitched frame differs from the whole frame by {diff.max()}/255"


def test_an_external_texture_travels_with_the_scene(farm):
    from PIL import Image

    root, env = farm
    base = root / "textured"
    assets, scenes = base / "assets", base / "scenes"  # the texture lies outside the scene's folder
    assets.mkdir(parents=True)
    cells = (np.indices((8, 8)).sum(axis=0) % 2)[..., None]
    checker = np.where(cells == 1, np.uint8(ORANGE), np.uint8(TEAL)).repeat(16, axis=0).repeat(16, axis=1)
    Image.fromarray(checker).save(assets / "checker.png")
    scene = build_scene(scenes / "textured.blend", SceneSpec(samples=16, texture=str(assets / "checker.png")), BLENDER)
    reference = render_reference(scene, [4], base / "ref", blender=BLENDER)[4]

    job = submit(env, scene, "--frames", "4", "--name", "textured")["id"]
    shutil.move(assets, base / "moved-away")
    wait_done(env, job)
    pixels = rgb(frame_pixels(root, env, job, "textured", 4))
    magenta = (pixels[..., 0] >= 250) & (pixels[..., 1] <= 5) & (pixels[..., 2] >= 250)
    assert not magenta.any(), f"{np.count_nonzero(magenta)} missing-texture pixels"
    for colour in (ORANGE, TEAL):
        assert np.count_nonzero(np.abs(pixels - colour).max(axis=2) <= 2) > 1000, f"too little of {colour}"
    assert difference(pixels.astype(np.uint8), reference).max() <= 2


def test_a_compressed_blend_renders_and_its_movie_keeps_its_frame_rate(farm, tmp_path):
    """Blender's "Compress" option (Zstandard since 3.0) made `farm submit` say `install the
    zstandard module`; a .blend at 12 fps made a 24 fps movie."""
    import imageio_ffmpeg

    root, env = farm
    scene = build_scene(tmp_path / "compressed.blend", SceneSpec(samples=16, compress=True, fps=12), BLENDER)
    assert scene.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # a Zstandard frame, not BLENDER...
    job = submit(env, scene, "--frames", "2,6", "--name", "zstd")["id"]
    references = render_reference(scene, [2, 6], root / "ref-zstd", blender=BLENDER)
    wait_done(env, job)
    for frame, reference in references.items():
        diff = difference(frame_pixels(root, env, job, "zstd", frame), reference)
        assert diff.max() <= 2, f"frame {frame} differs by {diff.max()}/255"
    movie = run_farm("movie", job, str(tmp_path / "zstd.mp4"), env=env)
    assert "12 fps from the scene" in movie.stdout
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "zstd.mp4"))
    assert next(reader)["fps"] == 12
    reader.close()


# -- errors ---------------------------------------------------------------------------------------


def test_a_scene_path_starting_with_a_dash_is_refused(farm, animated):
    root, env = farm
    folder = root / "dash"
    folder.mkdir()
    shutil.copy(animated, folder / "-scene.blend")
    refused = run_farm("submit", "--renderer", "blender", "--json", "--", "-scene.blend", env=env, cwd=folder,
                       check=False)
    assert "-scene.blend" in one_line_error(refused)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_a_blend_that_does_not_open_is_refused(farm, animated, kind):
    root, env = farm
    bad = root / f"{kind}.blend"
    if kind == "garbage":
        bad.write_bytes(b"this is not a Blender file\n" * 200)
    else:
        bad.write_bytes(animated.read_bytes()[:4000])
    refused = run_farm("submit", str(bad), "--renderer", "blender", "--json", env=env, check=False)
    assert bad.name in one_line_error(refused)


def test_a_blender_version_no_worker_has_leaves_the_job_unschedulable(farm, animated):
    _, env = farm
    job = submit(env, animated, "--frames", "1", "--blender-version", "9.9", "--name", "future")["id"]

    def reason():
        status = status_of(env, job)
        assert status["state"] not in ("running", "done"), status
        return status["unschedulable"]

    why = wait_for(reason, 60, f"job {job} to be marked unschedulable")
    assert "Blender 9.9" in why, why
    run_farm("cancel", job, env=env)


def test_a_farm_without_blender_says_so(tmp_path_factory, animated):
    root = tmp_path_factory.mktemp("no-blender")
    env = farm_env(root / "state", FARM_BLENDER="/nonexistent/blender")
    run_farm("up", "-d", "-w", "1", env=env, timeout=120)
    try:
        job = submit(env, animated, "--frames", "1", "--name", "nowhere")["id"]
        why = wait_for(lambda: status_of(env, job)["unschedulable"], 60, f"job {job} to be marked unschedulable")
        assert "blender" in why.lower(), why
        assert status_of(env, job)["state"] not in ("running", "done")
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(root / "state")


def test_auto_run_scripts_run_only_when_allowed(farm):
    root, env = farm
    canary = root / "canary.txt"
    scene = build_scene(root / "scripted" / "scripted.blend",
                        SceneSpec(width=32, height=18, samples=1, frame_end=1, canary=str(canary)), BLENDER)
    job = submit(env, scene, "--name", "scripts-off")["id"]
    wait_done(env, job)
    assert not canary.exists(), "the scene's auto-run script ran without --allow-scripts"
    job = submit(env, scene, "--allow-scripts", "--name", "scripts-on")["id"]
    wait_done(env, job)
    assert canary.read_text() == "ran", "the scene's auto-run script did not run with --allow-scripts"
