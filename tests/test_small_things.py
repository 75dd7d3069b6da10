"""Small things a new user met: `uv run` announcing bytecode, `\\[required]` in help, "1 frames",
the README's count of example shots, alembic's INFO lines at every manager start, the local
farm's probe left in the bucket, and `animate[N]` counted from 0 without the docs saying so."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import EXAMPLES, farm_command, farm_env, run_farm
from faults.livefarm import LiveFarm

ROOT = EXAMPLES.parent
NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def test_uv_run_does_not_announce_bytecode():
    """compile-bytecode in pyproject.toml made every `uv run` compile the environment again and
    print `Bytecode compiled 3387 files`."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    done = subprocess.run([uv, "run", "--frozen", "python", "-c", "pass"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert "Bytecode compiled" not in done.stderr, done.stderr


def test_help_shows_required_and_defaults_without_backslashes():
    """Typer escaped the brackets for Rich although the help is plain text."""
    submit = subprocess.run([*farm_command(), "submit", "--help"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"SCENE +\[required\]", submit), submit
    assert "Frames per task.  [default: 1]" in submit
    sheet = subprocess.run([*farm_command(), "contact-sheet", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert "\\[" not in submit + sheet


def test_counts_take_the_noun_in_the_right_number():
    from renderfarm_cli.console import counted

    assert [counted(n, "frame") for n in (0, 1, 2, 1500)] == ["0 frames", "1 frame", "2 frames", "1,500 frames"]
    assert counted(1, "live worker") == "1 live worker" and counted(3, "task") == "3 tasks"


def test_a_one_frame_job_is_one_frame_in_one_task(tmp_path):
    """`farm status` and `farm contact-sheet` of a one-frame job said "1 frames in 1 tasks"."""
    from test_preview import add_job

    from renderfarm.config import load_settings
    from renderfarm.db import make_engine, upgrade

    env = farm_env(tmp_path / "state", FARM_STORAGE_URL=f"file://{tmp_path}/storage",
                   FARM_REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens: the database alone
    settings = load_settings(env, cwd=tmp_path)
    engine = make_engine(settings.database_url, writer=True)
    upgrade(engine)
    engine.dispose()
    job = add_job(settings, "7")
    status = run_farm("status", job, env=env).stdout
    assert "= 1 frame in 1 task of up to 1" in status and "(0/1 frame done)" in status, status
    sheet = run_farm("contact-sheet", job, str(tmp_path / "sheet.png"), env=env).stdout
    assert f"contact sheet of 1 frame of job {job}" in sheet, sheet


def test_the_readme_counts_the_example_shots():
    shots = sorted(EXAMPLES.glob("*.toml"))
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"`examples/` holds (\w+) shots", readme)
    assert said and said[1] == NUMBERS[len(shots)], (said and said[0], [p.name for p in shots])


def test_the_scene_format_says_animate_tables_count_from_0(tmp_path):
    from renderfarm.errors import SceneError
    from renderfarm.renderers.builtin.scene import load_scene

    doc = (ROOT / "docs" / "scene-format.md").read_text()
    assert "`animate[0]` is the first `[[animate]]`" in doc
    # The doc's own example message is what the renderer says of the second table.
    example = re.search(r"shot\.toml: (animate\[1\]\.path: no object named 'bal' .*)", doc)[1]
    scene = tmp_path / "shot.toml"
    scene.write_text(
        '[render]\nwidth = 8\nheight = 8\n\n[camera]\nposition = [0.0, 1.0, 5.0]\nlook_at = [0.0, 0.0, 0.0]\n\n'
        '[objects.ball]\ntype = "sphere"\ncenter = [0.0, 0.0, 0.0]\nradius = 1.0\n\n'
        '[[animate]]\npath = "objects.ball.radius"\nkeys = [[1, 1.0], [2, 0.5]]\n\n'
        '[[animate]]\npath = "objects.bal.center[1]"\nkeys = [[1, 0.0], [2, 1.0]]\n'
    )
    with pytest.raises(SceneError) as raised:
        load_scene(scene)
    assert str(raised.value) == f"{scene}: {example}"


def test_a_database_upgrade_says_one_line_not_alembics_seven(tmp_path, caplog):
    from renderfarm.db import make_engine, upgrade

    caplog.set_level(logging.INFO)
    engine = make_engine(f"sqlite:///{tmp_path / 'farm.db'}", writer=True)
    upgrade(engine)
    first = [(r.name, r.getMessage()) for r in caplog.records]
    caplog.clear()
    upgrade(engine)  # as at every later manager start
    engine.dispose()
    assert [name for name, _ in first] == ["renderfarm.db"], first
    assert first[0][1].startswith("database schema upgraded from empty to ")
    assert caplog.records == []


def test_a_fresh_process_upgrading_its_database_logs_one_line(tmp_path):
    """As the manager starts: alembic imported for the first time in the process (its plugins
    logged a line each as they loaded)."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
            "from renderfarm.db import make_engine, upgrade;"
            f"upgrade(make_engine('sqlite:///{tmp_path / 'farm.db'}', writer=True))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "database schema upgraded from empty to " in lines[0], lines


@pytest.mark.slow
def test_the_local_farm_leaves_no_probe_in_its_bucket(tmp_path):
    farm = LiveFarm(tmp_path, workers=0)
    farm.up()
    try:
        # `farm doctor`'s storage check writes and deletes a probe too: SeaweedFS kept the empty
        # folder a probe in a folder left.
        doctor = run_farm("doctor", env=farm.env, check=False)
        assert "wrote, read and deleted a probe object" in doctor.stdout, doctor.stdout
        storage = farm.storage()
        assert [o.key for o in storage.list("")] == []
        top = storage._s3.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix, Delimiter="/")
        assert (top.get("Contents", []), top.get("CommonPrefixes", [])) == ([], [])
    finally:
        farm.down()
