"""A new user's first minutes, on a fresh clone of this repository's last commit: `uv sync`, the
README's first command (`uv run farm demo`), then the README's example session under "## Commands"
as written (farm up, a submit that waits, the AWS CLI against the farm's S3, farm down); each
exits 0, the frames are where they are said to be, and nothing is left running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, farm_env, farm_processes

pytestmark = pytest.mark.slow

UV = os.environ.get("UV") or shutil.which("uv")


def readme_block(readme: str, heading: str) -> str:
    """The first ```sh block after `heading`."""
    after = readme[readme.index(heading):]
    return re.search(r"```sh\n(.*?)```", after, re.S)[1]


def shell(script: str, cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{script}\nexited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.skipif(UV is None or shutil.which("git") is None, reason="needs uv and git")
def test_the_readme_works_from_a_fresh_clone(tmp_path):
    clone, state = tmp_path / "clone", tmp_path / "state"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in farm_env(state).items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    synced = subprocess.run([UV, "sync", "-q", "--offline"], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    if synced.returncode != 0:  # the cache lacks something: as a new user would, from the index
        subprocess.run([UV, "sync", "-q"], cwd=clone, env=env, check=True, timeout=600)
    readme = (clone / "README.md").read_text()
    try:
        # The two commands: the first is the demo.
        first = readme_block(readme, "## The two commands").splitlines()[0].split("#")[0].strip()
        assert first == "uv run farm demo"
        demo = shell(first, clone, env, timeout=600)
        renders = list((clone / "renders").iterdir())
        assert len(renders) == 1 and len(list(renders[0].glob("demo.*.png"))) == 48, demo.stdout[-2000:]
        assert not farm_processes(state), farm_processes(state)

        # The example session, as written, with the clone's environment on PATH.
        session = readme_block(readme, "## Commands")
        assert session.startswith("farm up -d") and session.rstrip().endswith("farm down")
        on_path = {**env, "PATH": f"{clone / '.venv' / 'bin'}:{env['PATH']}"}
        done = shell(session, clone, on_path, timeout=600)
        assert re.search(r"jobs/[0-9a-f]{8}/frames/bouncing-balls\.0001\.png", done.stdout), done.stdout[-3000:]
    finally:
        subprocess.run([str(clone / ".venv" / "bin" / "farm"), "down"], cwd=clone, env=env, capture_output=True,
                       timeout=120, check=False)
    assert not farm_processes(state), farm_processes(state)
