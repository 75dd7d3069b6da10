"""`farm submit TEMPLATE|BUNDLE/ [-p NAME=VALUE]` as an artist types it, against a manager in
this process: an invalid template, an unknown parameter or a value outside its constraints is one
line on stderr naming the bad field, exit 1 and nothing queued (acceptance 5); a bundle in the
shape Deadline Cloud's submitters write is accepted, its deadline:* values the job's settings."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import farm_command, farm_env
from nodekit import stepped_farm
from openjdkit import TWO_STEPS
from sqlalchemy import func, select

from renderfarm import keys
from renderfarm.db import session_scope
from renderfarm.models import Job, Task


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    with stepped_farm(redis_url, tmp_path / "farm", names=("a",)) as farm:
        yield farm


def cli_env(farm) -> dict[str, str]:
    s = farm.manager.settings
    return farm_env(Path(s.state_dir), FARM_REDIS_URL=s.redis_url, FARM_DATABASE_URL=s.database_url,
                    FARM_STORAGE_URL=s.storage_url)


def submit(farm, *args: str) -> subprocess.CompletedProcess:
    """`farm submit ARGS`, the manager ticking (as a running one would) until it exits."""
    farm.manager.r.set(keys.MANAGER_LEADER, "in-process")  # a manager here, driven by this test
    proc = subprocess.Popen(farm_command() + ["submit", *args], env=cli_env(farm), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        farm.manager.tick()
        time.sleep(0.05)
    out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def intents(farm) -> int:
    """Entries ever sent on the control stream (the node's enrollment among them)."""
    return farm.manager.r.xlen(keys.CONTROL_STREAM)


def nothing_queued(farm, intents_before: int) -> bool:
    with session_scope(farm.manager.engine) as s:
        jobs = s.scalar(select(func.count()).select_from(Job))
    return jobs == 0 and intents(farm) == intents_before


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if path.suffix == ".yaml" else json.dumps(doc))
    return path


def broken(change) -> dict:
    t = copy.deepcopy(TWO_STEPS)
    change(t)
    return t


@pytest.mark.parametrize("template, args, line", [
    (broken(lambda t: t["steps"][0]["script"]["actions"]["onRun"].update(comand="x")), (),
     "template: steps[0].script.actions.onRun.comand: Extra inputs are not permitted"),
    (broken(lambda t: t["steps"][1].update(dependencies=[{"dependsOn": "Nope"}])), (),
     "template: step[1].dependencies[0].dependsOn: Unknown step 'Nope'"),
    (TWO_STEPS, ("-p", "Colour=red"),
     "parameter: Job parameter values provided for parameters that are not defined in the template: Colour"),
    (TWO_STEPS, ("-p", "Quality=11"), "parameter: Value (11) for parameter Quality must be at most 10."),
    (TWO_STEPS, ("-p", "Quality"), "parameter: 'Quality' is not NAME=VALUE"),
    # Each Sheet task would be handed a file of each of 1,001 Render tasks: more than its order carries.
    (broken(lambda t: t["parameterDefinitions"].append({"name": "OutDir", "type": "PATH", "dataFlow": "OUT",
                                                        "default": "out"})), ("-p", "Frames=1-10010"),
     "template: step 'Sheet' would need 1,001 inputs per task (a file from each of the 1,001 tasks of step "
     "'Render'), over the 1,000 a task may carry"),
])
def test_a_bad_template_or_value_is_one_line_exit_1_and_nothing_queued(farm, tmp_path: Path, template, args,
                                                                        line) -> None:
    path = write(tmp_path / "job.yaml", template)
    before = intents(farm)
    proc = submit(farm, str(path), *args)
    assert proc.returncode == 1, proc
    assert proc.stderr.splitlines() == [f"farm: {line}"], proc.stderr
    assert nothing_queued(farm, before)


def test_a_bundle_as_deadline_submitters_write_it_is_accepted_with_its_farm_settings(farm, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write(bundle / "template.json", TWO_STEPS)
    write(bundle / "parameter_values.yaml", {"parameterValues": [
        {"name": "deadline:priority", "value": 80}, {"name": "deadline:maxRetriesPerTask", "value": 4},
        {"name": "deadline:targetTaskRunStatus", "value": "READY"}, {"name": "deadline:maxFailedTasksCount", "value": 7},
        {"name": "Frames", "value": "1-50"}]})
    (tmp_path / "tex.png").write_bytes(b"texture")  # uploaded at submit: it must exist
    write(bundle / "asset_references.yaml", {"assetReferences": {
        "inputs": {"filenames": [str(tmp_path / "tex.png")], "directories": []},
        "outputs": {"directories": [str(tmp_path / "out")]}, "referencedPaths": []}})
    proc = submit(farm, f"{bundle}/", "-p", "Quality=5", "--name", "sheet")
    assert proc.returncode == 0, proc
    with session_scope(farm.manager.engine) as s:
        job = s.scalars(select(Job)).one()
        steps = s.execute(select(Task.step, func.count()).group_by(Task.step).order_by(Task.step)).all()
        assert (job.name, job.priority, job.max_attempts, job.max_failed_tasks, job.state, job.scene_name) == (
            "sheet", 80, 5, 7, "queued", "template.json")
        assert json.loads(job.openjd_template)["job_parameters"] == {"Frames": "1-50", "Quality": "5"}
    assert [tuple(r) for r in steps] == [("Render", 5), ("Sheet", 10)]
    assert f"submitted job {job.id} (2 steps, 15 tasks)" in proc.stdout
    # The template is in storage, content-addressed like a scene.
    assert farm.manager.storage.head(job.scene_key) is not None
    # So is the asset reference, recorded with the job at its place in the session.
    digest = hashlib.sha256(b"texture").hexdigest()
    assert farm.manager.storage.head(f"assets/{digest}") is not None
    stored = json.loads(job.openjd_template)
    assert stored["assets"] == [{"path": "asset-roots/0/tex.png", "size": 7, "sha256": digest}]
    assert stored["mappings"] == [{"source": str(tmp_path), "path": "asset-roots/0"}]


def test_scene_options_and_parameters_do_not_cross(farm, tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", TWO_STEPS)
    before = intents(farm)
    proc = submit(farm, str(path), "--frames", "1-10")
    assert proc.returncode == 1 and "frames: an OpenJD template's steps say what to run" in proc.stderr
    scene = tmp_path / "shot.toml"
    scene.write_text("")
    proc = submit(farm, str(scene), "-p", "A=1")
    assert proc.returncode == 1 and "param: -p NAME=VALUE is for OpenJD job templates and bundles" in proc.stderr
    assert nothing_queued(farm, before)
