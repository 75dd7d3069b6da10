"""Contact sheets and movies of a job's frames: exact layouts and display conversions, sheets and
MP4s decoded back (8-bit, 16-bit PNG and EXR frames) from a real file:// storage and database,
the errors as one line each, the CLI commands, and end to end on a local farm."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm

from renderfarm import lifecycle, preview
from renderfarm.config import load_settings
from renderfarm.db import make_engine, session_scope, upgrade
from renderfarm.errors import (
    InputError,
    NotFoundError,
    RenderError,
    RenderFarmError,
    VerificationError,
)
from renderfarm.images import encode_linear, extension, read_pixels
from renderfarm.models import Job
from renderfarm.planning import plan_tasks
from renderfarm.preview import SheetLayout, sheet_layout
from renderfarm.storage import open_storage
from renderfarm.storage.keys import frame_key

SIZE = (64, 36)  # frames of the unit tests (width, height)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """A farm's settings: file:// storage and a migrated SQLite database in a state directory."""
    root = tmp_path_factory.mktemp("preview")
    s = load_settings({"FARM_STATE_DIR": str(root / "state"), "FARM_STORAGE_URL": f"file://{root}/storage"}, cwd=root)
    engine = make_engine(s.database_url, writer=True)
    upgrade(engine)
    engine.dispose()
    return s


def red_level(index: int, count: int) -> int:
    """The 8-bit red of the `index`th of `count` test frames: spread out, so order shows."""
    return round(255 * (index + 1) / (count + 1))


def add_job(settings, frames: str, *, fmt: str = "png", size: tuple[int, int] = SIZE,
            rendered: list[int] | None = None, scene_key: str = "scenes/x.toml") -> str:
    """A job of `frames` in the database, with the `rendered` ones (default: all) in storage:
    frame i of n is flat red_level(i, n) red and 128 green, with a white bar in its top rows."""
    job_id = secrets.token_hex(4)
    plans = plan_tasks(frames, 1, 100_000)
    numbers = [f for p in plans for f in p.frames]
    job = Job(id=job_id, name="shot", owner="tester", renderer="builtin", scene_name="shot.toml",
              scene_key=scene_key, scene_sha256="ab" * 32, frames=frames, frame_count=len(numbers),
              chunk=1, width=size[0], height=size[1], output_format=fmt, submitted_at=1.0)
    engine = make_engine(settings.database_url, writer=True)
    with session_scope(engine) as s:
        lifecycle.create_job(s, job, plans)
    engine.dispose()
    storage = open_storage(settings)
    rendered = sorted(numbers if rendered is None else rendered)
    scratch = settings.state_dir / f"scratch.{extension(fmt)}"
    for i, frame in enumerate(rendered):
        linear = np.empty((size[1], size[0], 3), np.float32)
        linear[:] = ((red_level(i, len(rendered)) / 255) ** 2, 0.25, 0.0)  # the gamma-2 curve's inverse
        linear[:2] = 1.0
        encode_linear(linear, fmt, scratch)
        storage.put_file(frame_key(job_id, "shot", frame, extension(fmt)), scratch)
    return job_id


def decode_movie(path: Path) -> tuple[dict, list[np.ndarray]]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return meta, [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]


# -- pure parts, exact outputs


def test_sheet_layout():
    layout = sheet_layout(24, 8, 200, 640, 360)
    assert layout == SheetLayout(columns=8, rows=3, thumb_width=200, thumb_height=113, label_height=24, font_size=16)
    assert (layout.width, layout.height) == (1654, 435)
    assert layout.cell(0) == (6, 6) and layout.cell(9) == (212, 149) and layout.cell(23) == (1448, 292)
    assert sheet_layout(3, 8, 100, 320, 180) == SheetLayout(3, 1, 100, 56, 15, 10)  # 56.25
    assert sheet_layout(10, 4, 64, 64, 36).rows == 3
    assert sheet_layout(1, 8, 400, 10000, 10).thumb_height == 1  # never zero
    assert sheet_layout(5, 8, 600, 100, 100).font_size == 32


def test_display_pixels():
    rgba8 = np.array([[[200, 100, 50, 128]]], np.uint8)
    assert preview.display_pixels(rgba8).tolist() == [[[100, 50, 25]]]  # straight alpha over black
    rgb16 = np.array([[[65535, 257 * 100, 128]]], np.uint16)
    assert preview.display_pixels(rgb16).tolist() == [[[255, 100, 0]]]
    rgba16 = np.array([[[65535, 65535, 0, 32768]]], np.uint16)
    assert preview.display_pixels(rgba16).tolist() == [[[128, 128, 0]]]
    linear = np.array([[[0.25, 1.5, np.nan, 1.0], [np.inf, -np.inf, 0.0, 0.0]]], np.float32)
    assert preview.display_pixels(linear).tolist() == [[[128, 255, 0], [255, 0, 0]]]
    assert preview.display_pixels(linear.astype(np.float16)).tolist() == [[[128, 255, 0], [255, 0, 0]]]
    rgb8 = np.zeros((2, 2, 3), np.uint8)
    assert preview.display_pixels(rgb8) is rgb8


def test_pad_even_repeats_the_last_row_and_column():
    rgb = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    padded = preview.pad_even(rgb)
    assert padded.shape == (4, 6, 3)
    assert (padded[:3, :5] == rgb).all() and (padded[3, :5] == rgb[2]).all() and (padded[:3, 5] == rgb[:, 4]).all()
    assert preview.pad_even(padded) is padded


def test_options_are_checked():
    assert preview.check_fps(24) == 24 and preview.check_fps("23.976") == Fraction(2997, 125)
    assert preview.check_fps(29.97) == Fraction(2997, 100)
    for bad in (0, -1, "fast", 241, float("nan")):
        with pytest.raises(InputError, match=r"^fps: .* must be a number above 0"):
            preview.check_fps(bad)
    with pytest.raises(InputError, match=r"^columns: 0 must be a whole number of at least 1$"):
        preview.check_sheet_options(0, 200)
    with pytest.raises(InputError, match=r"^width: 8 must be a whole number of pixels from 16 to 4096$"):
        preview.check_sheet_options(8, 8)


def test_stored_frames_are_in_frame_order(settings):
    job_id = add_job(settings, "-2-1,9999-10001")
    storage = open_storage(settings)
    storage.put_bytes(f"jobs/{job_id}/frames/notes.txt", b"not a frame")
    frames = preview.stored_frames(storage, job_id)
    assert [f.frame for f in frames] == [-2, -1, 0, 1, 9999, 10000, 10001]  # as text, 10000 < 9999
    assert frames[0].key == f"jobs/{job_id}/frames/shot.-0002.png" and frames[0].size > 0


# -- contact sheets


def cell_red(sheet: np.ndarray, layout: SheetLayout, index: int) -> int:
    x, y = layout.cell(index)
    return int(sheet[y + layout.thumb_height * 3 // 4, x + layout.thumb_width // 2, 0])


def test_contact_sheet(settings, tmp_path, monkeypatch):
    job_id = add_job(settings, "1-10")
    # Downloads go to a temporary directory: watch it to see frames streamed a few at a time.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    seen = []

    def on_progress(i: int, total: int) -> None:
        held = [p for d in tmp_path.glob("farm-preview-*") for p in d.iterdir()]
        seen.append((i, total, len(held)))

    out = tmp_path / "sheet.png"
    result = preview.contact_sheet(settings, job_id[:6], out, columns=4, width=64, on_progress=on_progress)
    layout = sheet_layout(10, 4, 64, *SIZE)
    sheet = read_pixels(out, "png")  # a strict decode: signature, every chunk's CRC, IEND
    assert sheet.shape == (layout.height, layout.width, 3) == (177, 286, 3)
    assert (result.job_id, result.frames, result.columns, result.rows) == (job_id, 10, 4, 3)
    assert (result.width, result.height, result.path) == (286, 177, out)
    assert [(i, total) for i, total, _ in seen] == [(i, 10) for i in range(1, 11)]
    assert max(held for *_, held in seen) <= preview.PREFETCH + 1 and not list(tmp_path.glob("farm-preview-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]  # no partial file left

    background = np.array(preview.SHEET_BACKGROUND, np.uint8)
    for i in range(12):
        x, y = layout.cell(i)
        label = sheet[y + layout.thumb_height : y + layout.thumb_height + layout.label_height, x : x + layout.thumb_width]
        if i < 10:  # the frame, in order, and text in its label strip
            assert abs(cell_red(sheet, layout, i) - red_level(i, 10)) <= 2, i
            assert (np.abs(label.astype(int) - background).sum(axis=2) > 100).sum() >= 5, f"no label under frame {i + 1}"
            assert (sheet[y, x + layout.thumb_width // 2] >= 250).all()  # the white bar on top
        else:  # the empty cells of the last row stay background, labels too
            assert (sheet[y : y + layout.thumb_height + layout.label_height, x : x + layout.thumb_width] == background).all()


def test_labels_differ_by_frame_number(settings, tmp_path):
    job_id = add_job(settings, "1-2")
    preview.contact_sheet(settings, job_id, tmp_path / "a.png", columns=2, width=64)
    sheet = read_pixels(tmp_path / "a.png", "png")
    layout = sheet_layout(2, 2, 64, *SIZE)
    strips = []
    for i in range(2):
        x, y = layout.cell(i)
        strips.append(sheet[y + layout.thumb_height : y + layout.thumb_height + layout.label_height, x : x + 64])
    assert (strips[0] != strips[1]).any()  # "1" and "2" are drawn, not a fixed mark


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_contact_sheet_of_16bit_and_exr_frames_matches_8bit(settings, tmp_path, fmt):
    reference = add_job(settings, "1-5")
    job_id = add_job(settings, "1-5", fmt=fmt)
    preview.contact_sheet(settings, reference, tmp_path / "png.png", columns=3, width=48)
    result = preview.contact_sheet(settings, job_id, tmp_path / f"{fmt}.png", columns=3, width=48)
    assert result.frames == 5
    expected = read_pixels(tmp_path / "png.png", "png").astype(int)
    got = read_pixels(tmp_path / f"{fmt}.png", "png").astype(int)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 2


def test_partly_finished_job_and_frame_choice(settings, tmp_path):
    job_id = add_job(settings, "1-10", rendered=[2, 3, 5, 8])
    result = preview.contact_sheet(settings, job_id, tmp_path / "part.png")
    assert (result.frames, result.job_frames, result.job_state) == (4, 10, "queued")
    assert (result.columns, result.rows) == (4, 1)
    chosen = preview.contact_sheet(settings, job_id, tmp_path / "some.png", frames="1-5")
    assert chosen.frames == 3
    with pytest.raises(NotFoundError, match=rf"^frames: none of '9-10' is finished in job {job_id} \(4 other frames are\)$"):
        preview.movie(settings, job_id, tmp_path / "none.mp4", frames="9-10")


def test_a_sheet_too_large_is_refused(settings, tmp_path, monkeypatch):
    job_id = add_job(settings, "1-3")
    monkeypatch.setattr(preview, "SHEET_MAX_PIXELS", 10_000)
    with pytest.raises(InputError, match=r"^contact sheet: 3 frames 200 px wide make a 624x149 sheet, over the limit of 10,000 pixels"):
        preview.contact_sheet(settings, job_id, tmp_path / "big.png")
    assert not list(tmp_path.iterdir())


# -- movies


def test_movie(settings, tmp_path):
    job_id = add_job(settings, "-2-1,9999-10001", size=(65, 37))  # odd: padded to 66x38
    calls = []
    out = tmp_path / "shot.mp4"
    result = preview.movie(settings, job_id, out, on_progress=lambda i, n: calls.append((i, n)))
    assert (result.frames, result.width, result.height) == (7, 66, 38)
    assert calls == [(i, 7) for i in range(1, 8)]
    meta, frames = decode_movie(out)
    assert len(frames) == 7 and meta["size"] == (66, 38) and meta["fps"] == 24
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    reds = [int(f[30, 32, 0]) for f in frames]
    assert all(abs(r - red_level(i, 7)) <= 4 for i, r in enumerate(reds)), reds  # frame order, true colours
    assert abs(int(frames[0][30, 32, 1]) - 128) <= 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.mp4"]


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_movie_of_16bit_and_exr_frames(settings, tmp_path, fmt):
    job_id = add_job(settings, "1-4", fmt=fmt)
    preview.movie(settings, job_id, tmp_path / "m.mp4", fps=12)
    meta, frames = decode_movie(tmp_path / "m.mp4")
    assert len(frames) == 4 and meta["size"] == SIZE and meta["fps"] == 12
    assert [abs(int(f[30, 32, 0]) - red_level(i, 4)) <= 4 for i, f in enumerate(frames)] == [True] * 4


def test_movie_plays_at_the_scenes_frame_rate_unless_told(settings, tmp_path):
    """A 12 fps scene made a 24 fps movie: the job row keeps no frame rate, so the movie reads
    it from the job's scene in storage."""
    scene = tmp_path / "twelve.toml"
    scene.write_text((EXAMPLES / "orbit.toml").read_text().replace("fps = 24", "fps = 12"))
    open_storage(settings).put_file("scenes/twelve.toml", scene)
    job_id = add_job(settings, "1-3", scene_key="scenes/twelve.toml")
    result = preview.movie(settings, job_id, tmp_path / "scene.mp4")
    assert (result.fps, result.fps_from) == (12, "the scene's [render] fps")
    assert decode_movie(tmp_path / "scene.mp4")[0]["fps"] == 12
    result = preview.movie(settings, job_id, tmp_path / "told.mp4", fps=30)
    assert (result.fps, result.fps_from) == (30, "--fps")
    assert decode_movie(tmp_path / "told.mp4")[0]["fps"] == 30
    # A scene that cannot be read (here: gone from storage) falls back on 24 and says why.
    result = preview.movie(settings, add_job(settings, "1"), tmp_path / "gone.mp4")
    assert (result.fps, result.fps_from) == (24, "the default: the job's scene is no longer in storage")


def test_ffmpeg_failure_is_one_line(tmp_path):
    encoder = preview.H264Encoder(tmp_path / "missing" / "x.mp4", (16, 16), Fraction(24))
    try:
        with pytest.raises(RenderError, match=r"^movie: ffmpeg exited [0-9]+ \(.*No such file or directory"):
            encoder.write(np.zeros((16, 16, 3), np.uint8))
            encoder.finish()
    finally:
        encoder.stop()


# -- errors: one line naming the thing


def errors_for(settings, tmp_path, job_id: str):
    outside = tmp_path / "a-file"
    outside.write_text("")
    (tmp_path / "dir.png").mkdir()
    return [
        (lambda: preview.contact_sheet(settings, "ffffffff", tmp_path / "x.png"), NotFoundError, "job 'ffffffff': no such job"),
        (lambda: preview.movie(settings, "zz!", tmp_path / "x.mp4"), NotFoundError, "job 'zz!': not a job id"),
        (lambda: preview.contact_sheet(settings, job_id, tmp_path / "x.jpg"), InputError, f"output: '{tmp_path / 'x.jpg'}' must end in .png"),
        (lambda: preview.movie(settings, job_id, tmp_path / "x.mov"), InputError, f"output: '{tmp_path / 'x.mov'}' must end in .mp4"),
        (lambda: preview.contact_sheet(settings, job_id, tmp_path / "dir.png"), InputError, f"output: '{tmp_path / 'dir.png'}' is a directory"),
        (lambda: preview.movie(settings, job_id, tmp_path / "no" / "x.mp4"), InputError,
         f"output: cannot write '{tmp_path / 'no' / 'x.mp4'}' (No such file or directory)"),
        (lambda: preview.contact_sheet(settings, job_id, outside / "x.png"), InputError,
         f"output: cannot write '{outside / 'x.png'}' (Not a directory)"),
        (lambda: preview.movie(settings, job_id, tmp_path / "x.mp4", fps=0), InputError, "fps: 0 must be a number above 0"),
    ]


def test_errors_are_one_line(settings, tmp_path):
    job_id = add_job(settings, "1-2")
    for call, kind, message in errors_for(settings, tmp_path, job_id):
        with pytest.raises(kind) as caught:
            call()
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "dir.png"]  # nothing written


def test_a_job_without_frames_and_a_farm_without_jobs(settings, tmp_path):
    job_id = add_job(settings, "1-3", rendered=[])
    with pytest.raises(NotFoundError, match=rf"^job {job_id}: no finished frames in storage yet \(the job is queued\)$"):
        preview.movie(settings, job_id, tmp_path / "m.mp4")
    empty = load_settings({"FARM_STATE_DIR": str(tmp_path / "new"), "FARM_STORAGE_URL": f"file://{tmp_path}/s"}, cwd=tmp_path)
    with pytest.raises(NotFoundError, match=r"^job 'abc': no such job \(no job was ever submitted here\)$"):
        preview.contact_sheet(empty, "abc", tmp_path / "s.png")
    assert not (tmp_path / "m.mp4").exists()


def test_a_corrupt_frame_is_named(settings, tmp_path, monkeypatch):
    job_id = add_job(settings, "1-3")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    key = frame_key(job_id, "shot", 2, "png")
    storage = open_storage(settings)
    storage.put_bytes(key, storage.get_bytes(key)[:-40])
    with pytest.raises(VerificationError, match=rf"^{key}: truncated 8-bit PNG"):
        preview.contact_sheet(settings, job_id, tmp_path / "s.png")
    with pytest.raises(RenderFarmError, match=rf"^{key}: truncated"):
        preview.movie(settings, job_id, tmp_path / "m.mp4")
    assert not list(tmp_path.iterdir())  # no partial sheet or movie, no downloads left behind


# -- the CLI commands (registered in app.py as contact-sheet and movie)


def test_cli_commands(settings, tmp_path, monkeypatch):
    import typer
    from renderfarm_cli import preview_commands
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("contact-sheet")(preview_commands.contact_sheet)
    app.command("movie")(preview_commands.movie)
    monkeypatch.setenv("FARM_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("FARM_STORAGE_URL", settings.storage_url)
    monkeypatch.delenv("FARM_DATABASE_URL", raising=False)
    job_id = add_job(settings, "1-5", rendered=[1, 2, 3])
    runner = CliRunner()

    sheet = runner.invoke(app, ["contact-sheet", job_id, str(tmp_path / "s.png"), "--columns", "2", "--width", "32"])
    assert sheet.exit_code == 0, sheet.output
    assert f"contact sheet of 3 frames of job {job_id} (2x2, " in sheet.output
    assert f"job {job_id} is queued: 3 of its 5 frames are shown" in sheet.output
    assert read_pixels(tmp_path / "s.png", "png").shape == (sheet_layout(3, 2, 32, *SIZE).height, 6 + 2 * 38, 3)

    movie = runner.invoke(app, ["movie", job_id, str(tmp_path / "m.mp4"), "--fps", "30", "--frames", "2-3"])
    assert movie.exit_code == 0, movie.output
    assert "movie of 2 frames" in movie.output and "30 fps" in movie.output
    assert len(decode_movie(tmp_path / "m.mp4")[1]) == 2

    scene = tmp_path / "twelve.toml"
    scene.write_text((EXAMPLES / "orbit.toml").read_text().replace("fps = 24", "fps = 12"))
    open_storage(settings).put_file("scenes/twelve-cli.toml", scene)
    twelve = add_job(settings, "1-3", scene_key="scenes/twelve-cli.toml")
    movie = runner.invoke(app, ["movie", twelve, str(tmp_path / "t.mp4")])
    assert movie.exit_code == 0, movie.output
    assert "(64x36, 12 fps from the scene, 0.2 s)" in movie.output
    assert decode_movie(tmp_path / "t.mp4")[0]["fps"] == 12

    bad = runner.invoke(app, ["movie", job_id, str(tmp_path / "m.avi")])
    assert isinstance(bad.exception, InputError)  # app.main turns it into one red line


def test_cli_defaults_match_the_library_and_import_nothing_heavy():
    from renderfarm_cli import preview_commands as cli

    assert (cli.COLUMNS_DEFAULT, cli.THUMB_WIDTH_DEFAULT, cli.FPS_DEFAULT) == (
        preview.COLUMNS_DEFAULT, preview.THUMB_WIDTH_DEFAULT, preview.FPS_DEFAULT)
    probe = ("import sys, renderfarm_cli.preview_commands\n"
             "print(sorted(m for m in ('numpy', 'PIL', 'renderfarm.preview', 'imageio_ffmpeg', 'rich', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- end to end, through the installed `farm` command


@pytest.mark.slow
def test_contact_sheet_and_movie_on_a_local_farm(tmp_path):
    state = tmp_path / "state"
    env = farm_env(state)
    run_farm("up", "-d", "-w", "2", env=env, timeout=120)
    try:
        sub = run_farm("submit", str(EXAMPLES / "orbit.toml"), "--frames", "1-6", "--wait", "--json", env=env, timeout=120)
        job = json.loads(sub.stdout)
        assert job["state"] == "done", job
        sheet = run_farm("contact-sheet", job["id"][:5], str(tmp_path / "orbit.png"), "--columns", "3", env=env)
        assert "contact sheet of 6 frames" in sheet.stdout
        layout = sheet_layout(6, 3, preview.THUMB_WIDTH_DEFAULT, 320, 180)
        assert read_pixels(tmp_path / "orbit.png", "png").shape == (layout.height, layout.width, 3)

        run_farm("movie", job["id"], str(tmp_path / "orbit.mp4"), "--fps", "12", env=env)
        meta, frames = decode_movie(tmp_path / "orbit.mp4")
        assert len(frames) == 6 and meta["size"] == (320, 180) and meta["fps"] == 12
        assert not all((frames[0] == f).all() for f in frames[1:])  # the camera moves

        bad = run_farm("movie", job["id"], str(tmp_path / "orbit.avi"), env=env, check=False)
        assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [f"farm: output: '{tmp_path / 'orbit.avi'}' must end in .mp4"]
        missing = run_farm("contact-sheet", "ffffffff", str(tmp_path / "x.png"), env=env, check=False)
        assert missing.returncode == 1 and missing.stderr.strip().splitlines() == ["farm: job 'ffffffff': no such job"]
    finally:
        run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)
