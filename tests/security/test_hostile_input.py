"""Hostile input to the CLI: random and malicious frame specs, tile specs, names, numbers and
scene paths get one clear line on stderr or a correct job; never a traceback, never a storage key
or a path outside its root."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest
from conftest import EXAMPLES, farm_env, farm_processes, run_farm
from hypothesis import HealthCheck, given, settings, strategies as st

from renderfarm.config import load_settings
from renderfarm.storage import open_storage

pytestmark = pytest.mark.slow

NASTY = [
    "../../etc/passwd", "/etc/passwd", "$(touch /tmp/pwned)", "`id`", "a\nb", "a\rb", "-rf", "--help",
    "x" * 5000, "..", ".", "", " ", "\udcff\udcfe", "名前", "a/b/../../c", "%2e%2e%2f", "a;rm -rf /", "\t",
    "1-10\n", "1-10;2", "NaN", "inf", "-0", "1e3", "0x10", "٣", "1_0", "99999999999999999999", "a\x00b",
]
hostile = st.one_of(st.sampled_from(NASTY), st.text(max_size=40), st.text(alphabet="0123456789-x,: ", max_size=20))


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    env = farm_env(root / "state", FARM_MAX_TASKS="40")
    run_farm("up", "-d", "-w", "1", env=env, timeout=120)
    scenes = root / "scenes"
    scenes.mkdir()
    for name in ("$(touch pwned).toml", "a b.toml", "-dash.toml", "semi;colon.toml", "new\nline.toml", "ok.toml"):
        shutil.copy(EXAMPLES / "orbit.toml", scenes / name)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    yield root, env
    os.environ.clear()
    os.environ.update(saved)
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(root / "state")


def farm_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the `farm` command in this process (fast enough for many examples)."""
    from renderfarm_cli.app import main

    capsys.readouterr()
    old = sys.argv
    sys.argv = ["farm", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def check(code: int, out: str, err: str, *, json_out: bool = True) -> dict | None:
    assert "Traceback" not in out + err and "unexpected error" not in err, err
    if code == 0:
        return json.loads(out) if json_out else None
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("farm: "), err
    return None


GOOD = str(EXAMPLES / "orbit.toml")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=hostile, tiles=hostile, name=hostile)
def test_hostile_submissions(farm, capsys, frames, tiles, name):
    args = ["submit", GOOD, "--renderer", "null", "--frames", frames, "--name", name, "--json"]
    if tiles.strip():
        args += ["--tiles", tiles]
    job = check(*farm_cli(capsys, *args))
    if job is not None:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", job["name"]) and ".." not in job["name"].split(".")


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(chunk=hostile, priority=hostile, size=hostile, timeout=hostile)
def test_hostile_numbers(farm, capsys, chunk, priority, size, timeout):
    args = ["submit", GOOD, "--renderer", "null", "--frames", "1-4", "--chunk", chunk, "--priority", priority,
            "--timeout", timeout, "--json"]
    if size.strip():
        args += ["--tile-size", size]
    check(*farm_cli(capsys, *args))


def test_hostile_scene_paths_and_job_ids(farm, capsys):
    root, _env = farm
    for path in [*NASTY, *(str(p) for p in (root / "scenes").iterdir())]:
        # ("--help" as a path prints the help: also a clean answer)
        check(*farm_cli(capsys, "submit", path, "--renderer", "null", "--frames", "1", "--json"), json_out=path != "--help")
    assert not (root / "scenes" / "pwned").exists() and not os.path.exists("/tmp/pwned")
    for ref in NASTY:
        for command in (("status", ref), ("tasks", ref), ("log", ref), ("cancel", ref), ("download", ref, str(root / "dl"))):
            check(*farm_cli(capsys, *command), json_out=False)


def test_every_storage_key_stays_under_its_root(farm, capsys):
    root, env = farm
    storage = open_storage(load_settings(env, cwd=root))
    jobs = json.loads(farm_cli(capsys, "jobs", "--json", "--limit", "1000")[1])
    assert jobs, "no hostile submission was accepted at all"
    ids = {j["id"] for j in jobs}
    for obj in storage.list(""):
        parts = obj.key.split("/")
        assert ".." not in parts and "" not in parts and not obj.key.startswith("/"), obj.key
        assert parts[0] in ("scenes", "jobs", "nodes", ".farm-probe") or obj.key == ".farm-probe", obj.key
        if parts[0] == "jobs":
            assert parts[1] in ids, obj.key
        if parts[0] == "nodes":  # an attempt's own: nodes/NODE/jobs/JOB/...
            assert parts[2] == "jobs" and parts[3] in ids, obj.key
    scratch = root / "state" / "scratch"
    for path in scratch.rglob("*"):
        assert path.resolve().is_relative_to(scratch.resolve()), path
