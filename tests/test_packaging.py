"""The three distributions as wheels: what they carry, and a render node made from the worker's
wheel alone (a fresh virtual environment, no checkout, no `farm` command) rendering for a farm."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, run_farm
from faults.livefarm import LiveFarm

UV = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in $UV
VERSION = "0.1.0"
DEPLOY = ROOT / "worker" / "deploy"
PROBE = """
import importlib.util, json, sys, renderfarm, renderfarm_worker
print(json.dumps({"core": renderfarm.__file__, "worker": renderfarm_worker.__file__,
                  "cli": importlib.util.find_spec("renderfarm_cli") is not None, "path": sys.path}))
"""


def uv(*args: str, cwd: Path) -> str:
    assert UV, "uv is not on PATH"
    done = subprocess.run([UV, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"uv {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """Sdists and wheels of the whole workspace, the wheels built from the sdists as a release
    would be; and the worker's dependencies pinned as uv.lock has them."""
    out = tmp_path_factory.mktemp("dist")
    uv("build", "--all-packages", "--quiet", "-o", str(out), cwd=ROOT)
    uv("export", "--package", "renderfarm-worker", "--no-dev", "--no-emit-workspace",
       "--no-hashes", "--frozen", "--quiet", "-o", str(out / "worker-pins.txt"), cwd=ROOT)
    return out


def wheel_names(dist: Path, name: str) -> set[str]:
    with zipfile.ZipFile(dist / f"{name}-{VERSION}-py3-none-any.whl") as whl:
        return set(whl.namelist())


def wheel_text(dist: Path, name: str, member: str) -> str:
    with zipfile.ZipFile(dist / f"{name}-{VERSION}-py3-none-any.whl") as whl:
        return whl.read(f"{name}-{VERSION}.dist-info/{member}").decode()


def test_the_wheels_carry_what_a_machine_without_a_checkout_needs(dist):
    """`farm demo` looks for its shot in renderfarm/_examples/, and a render node needs the
    systemd unit and example environment: none of them used to be in a wheel."""
    from renderfarm_cli.farm_commands import DEMO_SCENE

    core = wheel_names(dist, "renderfarm")
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "renderfarm").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert not package - core, "files of the package missing from its wheel"
    assert f"renderfarm/_examples/{DEMO_SCENE}" in core
    assert {f"renderfarm/_examples/{p.name}" for p in EXAMPLES.glob("*.toml")} <= core

    deploy = {f"renderfarm_worker/deploy/{p.name}" for p in DEPLOY.iterdir()}
    assert deploy <= wheel_names(dist, "renderfarm_worker")
    meta = wheel_text(dist, "renderfarm_worker", "METADATA")
    assert re.findall(r"^Requires-Dist: (.+)$", meta, re.MULTILINE) == [
        "openjd-sessions<0.15,>=0.14", "renderfarm"]
    scripts = wheel_text(dist, "renderfarm_worker", "entry_points.txt")
    assert "farm-worker = renderfarm_worker.daemon:main" in scripts
    scripts = wheel_text(dist, "renderfarm_cli", "entry_points.txt")
    assert "farm = renderfarm_cli.app:main" in scripts


def install_node(dist: Path, venv: Path) -> set[str]:
    """A fresh venv with the worker's wheel, as the README says; returns what is installed."""
    python = str(venv / "bin" / "python")
    cwd = venv.parent  # outside the checkout: no project settings of ours apply
    cwd.mkdir(parents=True, exist_ok=True)
    uv("venv", "--quiet", "--python", sys.executable, str(venv), cwd=cwd)
    uv("pip", "install", "--quiet", "--python", python, "--find-links", str(dist),
       "-c", str(dist / "worker-pins.txt"), "renderfarm-worker", cwd=cwd)
    listed = uv("pip", "list", "--python", python, "--format", "json", cwd=cwd)
    names = {p["name"] for p in json.loads(listed)}
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\n[packaging] the worker's venv: {len(names)} packages, {size / 1e6:.0f} MB",
          file=sys.stderr)
    return names


def node_env(state: Path) -> dict[str, str]:
    """A render node's environment: a state directory of its own, and nothing of this checkout,
    its virtual env or the farm's settings (the node has its credentials file)."""
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR")}
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if not Path(p).resolve().is_relative_to(ROOT))
    env["FARM_STATE_DIR"] = str(state)
    return env


def check_isolated(python: Path, env: dict[str, str], cwd: Path) -> Path:
    """The node imports the core and the worker from its own site-packages, never from this
    checkout, and has no CLI; returns the installed worker package's directory."""
    done = subprocess.run([str(python), "-c", PROBE], env=env, cwd=cwd, capture_output=True,
                          text=True, check=True, timeout=60)
    probe = json.loads(done.stdout)
    site = Path(probe["core"]).parent.parent
    assert site.name == "site-packages" and site.is_relative_to(python.parent.parent)
    assert Path(probe["worker"]).is_relative_to(site)
    assert not probe["cli"]
    assert not [p for p in probe["path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    return Path(probe["worker"]).parent


@pytest.mark.slow
def test_a_render_node_installed_from_the_worker_wheel_renders_a_job(dist, tmp_path):
    node = tmp_path / "node"
    venv = node / "venv"
    names = install_node(dist, venv)
    assert {"renderfarm", "renderfarm-worker"} <= names and "renderfarm-cli" not in names
    assert not (venv / "bin" / "farm").exists()

    farm = LiveFarm(tmp_path, workers=0)
    farm.up()
    worker = None
    try:
        env = node_env(node / "state")
        package = check_isolated(venv / "bin" / "python", env, node)
        unit = package / "deploy" / "farm-worker.service"
        assert unit.is_file(), "the worker's wheel installs no systemd unit"
        exec_start = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.MULTILINE).group(1)
        assert exec_start == "/opt/renderfarm/bin/farm-worker", "where the README installs it"

        log = node / "worker.log"
        with log.open("wb") as out:
            run_farm("node", "add", "node1", "-o", str(node / "node1.farm-node"), env=farm.env)
            argv = [str(venv / "bin" / "farm-worker"), "--credentials", str(node / "node1.farm-node")]
            worker = subprocess.Popen(argv, env=env, cwd=node, stdout=out, stderr=subprocess.STDOUT)
        # Two tiles and their assembly: both kinds of task a worker runs.
        job = farm.submit(EXAMPLES / "bouncing-balls.toml", "--frames", "1", "--tiles", "2x1")
        state = farm.wait_job(job)
        assert state == "done", f"job {job} ended {state}; node log:\n{log.read_text()[-3000:]}"
        assert {a["worker"] for a in farm.attempts(job)} == {"node1"}
        farm.check_frames(job, "bouncing-balls", [1], (640, 360))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if worker and worker.poll() is None:
            worker.kill()
            worker.wait(10)
        farm.down()
