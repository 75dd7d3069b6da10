"""The README's "Running a real farm", followed word for word: its blocks for the farm's machine run
on this host, its blocks for the node inside a network namespace that reaches the farm only at
ADDR (this host's address on a bridge); then a job renders on that node, and its frames download
and decode. The commands are read from the README itself, so the two cannot drift apart."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import BIN, ROOT, farm_env, farm_processes, run_farm, wait_for
from netns import Hosts, built, unavailable

README = ROOT / "README.md"
UNIT = ROOT / "worker" / "deploy" / "farm-worker.service"
HEADING = "## Running a real farm"
ON_FARM, ON_NODE = "# on the farm's machine", "# on the node"
NODE = "node17"
CREDENTIALS_DIR = "/etc/renderfarm/"  # where the node keeps its file; under the node's own root here
# `scp FILE HOST:[DIR]` as the walkthrough types it, done as a copy into the node's home (mode kept).
SCP = 'scp() { cp -p -- "$1" "$RF_NODE_HOME/${2#*:}"; }\n'

WHY_NOT = unavailable()
needs_namespaces = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}")


def walkthrough() -> list[tuple[str, str]]:
    """The section's ```sh blocks that say where they run, in order: (where, block)."""
    text = README.read_text()
    start = text.index(f"\n{HEADING}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.M | re.S)
    return [(b.splitlines()[0], b) for b in blocks if b.splitlines()[0] in (ON_FARM, ON_NODE)]


def fill(block: str, *, addr: str, node_root: Path) -> str:
    """The block with its placeholders filled in, and the node's /etc under a directory of its own."""
    block = re.sub(r"\bADDR\b", addr, re.sub(r"\bNODE\b", NODE, block))
    return block.replace(f" {CREDENTIALS_DIR}", f" {node_root}{CREDENTIALS_DIR}")


def test_the_walkthrough_enrolls_a_node_and_starts_its_worker_as_the_unit_does():
    steps = walkthrough()
    assert [where for where, _ in steps] == [ON_FARM, ON_NODE, ON_FARM]
    farm, node = steps[0][1], steps[1][1]
    assert re.search(r"^farm up .*--listen ADDR", farm, re.M) and re.search(r"^farm node add NODE$", farm, re.M)
    assert re.search(r"^scp NODE\.farm-node NODE:", farm, re.M)
    worker = [line for line in node.splitlines() if line.startswith("farm-worker")]
    assert len(worker) == 1 and node.rstrip().endswith(worker[0])  # it runs in the foreground, last
    argv = shlex.split(worker[0])
    assert argv[1] == "--credentials" and argv[2].startswith(CREDENTIALS_DIR) and len(argv) == 3
    # The systemd unit starts the worker with that same file, handed over as a systemd credential.
    unit = UNIT.read_text()
    name, _, source = re.search(r"^LoadCredential=(.+)$", unit, re.M).group(1).partition(":")
    assert source == argv[2]
    assert re.search(rf"^ExecStart=\S+/farm-worker --credentials %d/{re.escape(name)}$", unit, re.M)
    assert not re.search(r"^EnvironmentFile=[^-]", unit, re.M), "the node's env file is optional, never the farm's"


@pytest.fixture(scope="module")
def hosts():
    # Hosts of its own: test_namespaces.py may run beside it.
    with built(Hosts(1, prefix="rfreal", subnet="10.231.7")) as h:
        yield h


@pytest.fixture(scope="module")
def site(tmp_path_factory, hosts):
    """The farm's machine (this host: a state directory, an admin's working directory with the
    checkout's examples) and the node's home; `farm down` at the end, whatever ran."""
    root = tmp_path_factory.mktemp("realfarm")
    admin, home = root / "admin", root / "node"
    admin.mkdir()
    home.mkdir()
    (admin / "examples").symlink_to(ROOT / "examples")
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", os.defpath)])
    env = farm_env(root / "state", PATH=path, RF_NODE_HOME=str(home))
    try:
        yield root, env
    finally:
        run_farm("down", env=env, check=False, timeout=120)
        left = farm_processes(root / "state")
        assert not left, f"processes left after farm down: {left}"


def on_farm(block: str, env: dict, cwd: Path, timeout: float) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", SCP + block], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{block}\nexited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout + done.stderr


@needs_namespaces
@pytest.mark.slow
def test_the_readme_walkthrough_renders_a_job_on_a_node_in_another_namespace(hosts, site):
    import redis

    from renderfarm import presence
    from renderfarm.config import load_settings

    root, env = site
    admin, home = root / "admin", root / "node"
    addr = hosts.host_address
    enroll, start, use = (fill(block, addr=addr, node_root=home) for _, block in walkthrough())

    on_farm(enroll, env, admin, timeout=180)
    credentials = json.loads((home / f"{NODE}.farm-node").read_text())
    assert (home / f"{NODE}.farm-node").stat().st_mode & 0o777 == 0o600
    # The node's file points at ADDR and holds only its own secrets, none of the farm's.
    assert urlsplit(credentials["redis_url"]).hostname == addr
    assert urlsplit(credentials["s3_endpoint_url"]).hostname == addr
    farm_secrets = json.loads((root / "state" / "local.json").read_text())
    text = json.dumps(credentials)
    for secret in ("valkey_password", "s3_access_key", "s3_secret_key"):
        assert farm_secrets[secret] not in text, f"the node was handed the farm's {secret}"

    # The node: nothing of the farm's settings, a home of its own, the worker installed (on PATH).
    node_env = {"PATH": env["PATH"], "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8")}
    *setup, worker_line = start.rstrip().splitlines()
    prepared = subprocess.run(["ip", "netns", "exec", hosts.names()[0], "bash", "-euo", "pipefail", "-c",
                               "\n".join(setup)], env=node_env, cwd=home, capture_output=True, text=True,
                              timeout=60, check=False)
    assert prepared.returncode == 0, prepared.stderr
    installed = home / CREDENTIALS_DIR.strip("/") / "node.farm-node"
    assert installed.stat().st_mode & 0o777 == 0o600 and not (home / f"{NODE}.farm-node").exists()
    log = home / "worker.log"
    worker = hosts.spawn(0, shlex.split(worker_line), env=node_env, log_path=log, cwd=home)

    settings = load_settings(env, cwd=admin)
    r = redis.Redis.from_url(settings.redis_url)
    try:
        def live() -> bool:
            assert worker.poll() is None, f"the node's worker exited {worker.returncode}:\n{log.read_text()[-3000:]}"
            return NODE in presence.live_workers(r)

        wait_for(live, 90, f"{NODE}'s worker to come up in its namespace")
        said = f"worker {NODE} (pool default, site local, tags none) serving queue farm.worker.{NODE}"
        assert said in log.read_text(), "the README quotes what the worker logs"

        shown = on_farm(use, env, admin, timeout=240)
        assert re.search(rf"^\s*{NODE}\b", shown, re.M), f"`farm workers` does not list {NODE}:\n{shown}"
        jobs = json.loads(run_farm("jobs", "--json", env=env, cwd=admin).stdout)
        assert len(jobs) == 1 and jobs[0]["state"] == "done", jobs
        job = jobs[0]["id"]
        check_rendered_by_node(env, admin, job, log)
    finally:
        hosts.stop([worker])
        r.close()
    assert worker.returncode == 0, log.read_text()[-3000:]


def check_rendered_by_node(env: dict, cwd: Path, job: str, log: Path) -> None:
    """Every attempt of the job was the node's; its 4 frames download, decode and are the job's size."""
    from PIL import Image

    tasks = json.loads(run_farm("tasks", job, "--json", env=env, cwd=cwd).stdout)
    attempts = [a for t in tasks for a in t["attempts"]]
    assert attempts and {a["worker"] for a in attempts} == {NODE}, (tasks, log.read_text()[-2000:])
    assert all(t["state"] == "done" and t["worker"] == NODE for t in tasks), tasks
    dest = cwd / "renders"
    run_farm("download", job, str(dest), env=env, cwd=cwd)
    frames = sorted(dest.rglob("*.png"))
    assert [f.name for f in frames] == [f"bouncing-balls.{n:04d}.png" for n in range(1, 5)], frames
    for frame in frames:
        with Image.open(frame) as img:
            img.load()
            assert img.size == (640, 360), frame
    print(f"\n[network figures] README walkthrough: {len(frames)} frames by {NODE}", file=sys.stderr)
