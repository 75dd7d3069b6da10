"""OpenJD host requirements on a real local farm (issue 18, acceptance 2): a step whose custom
attribute no live worker has leaves its job unschedulable with the reason; a worker started
with that attribute renders it (every worker advertises its scratch disk, which the step
also asks for), through `farm submit TEMPLATE.yaml` and the OpenJD runner, and
the action's output is the attempt's log."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import yaml
from conftest import run_farm, wait_for, wait_job

TEMPLATE = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "maya-only",
    "steps": [{
        "name": "render",
        "hostRequirements": {"attributes": [{"name": "attr.studio.dcc", "anyOf": ["maya"]}],
                             "amounts": [{"name": "amount.worker.disk.scratch", "min": 1}]},
        "parameterSpace": {"taskParameterDefinitions": [{"name": "Frame", "type": "INT", "range": "1-3"}]},
        "script": {"actions": {"onRun": {"command": "/bin/echo", "args": ["maya renders {{Task.Param.Frame}}"]}}},
    }],
}
WHY = "step 'render': no live worker of pool 'default' has attr.studio.dcc one of maya"


def status(env: dict, job: str) -> dict:
    return json.loads(run_farm("status", job, "--json", env=env).stdout)


@pytest.mark.slow
def test_a_step_no_live_worker_meets_waits_until_a_worker_with_its_attribute_renders_it(openjd_farm, tmp_path):
    from nodekit import cli_node

    from renderfarm.localfarm.services import node_env

    root, env = tmp_path, openjd_farm.env
    path = root / "maya.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE))
    job = json.loads(run_farm("submit", str(path), "--json", env=env).stdout)["id"]

    wait_for(lambda: status(env, job)["unschedulable"] == WHY, 30, "the job to be unschedulable")
    assert f"unschedulable: {WHY}" in run_farm("status", job, env=env).stdout
    assert "unschedulable" in run_farm("jobs", env=env).stdout
    tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
    assert [a for t in tasks for a in t["attempts"]] == []  # the worker without it took nothing

    log = (root / "maya-node.log").open("wb")
    argv = cli_node(env, "maya-node", root)
    node = subprocess.Popen(argv, env=node_env({**env, "FARM_OPENJD_ATTRIBUTES": "attr.studio.dcc=maya,nuke"}),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_job(env, job, ("done", "failed", "cancelled"), 120)
        final = status(env, job)
        assert (final["state"], final["unschedulable"]) == ("done", None), final
        tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
        assert {a["worker"] for t in tasks for a in t["attempts"]} == {"maya-node"}
        for index in range(3):
            assert f"maya renders {index + 1}" in run_farm("log", f"{job}:{index}", env=env).stdout
        workers = {w["name"]: w for w in json.loads(run_farm("workers", "--json", env=env).stdout)}
        caps = workers["maya-node"]["capabilities"]
        assert caps["attributes"] == {"attr.studio.dcc": ["maya", "nuke"]} and caps["scratch_gib"] >= 1
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(60)
        log.close()


def test_a_worker_advertises_its_scratch_disk_as_amount_worker_disk_scratch(tmp_path):
    import shutil

    from renderfarm_worker.capabilities import detect

    from renderfarm.capabilities import openjd_capabilities, parse_capabilities
    from renderfarm.config import load_settings

    settings = load_settings({"FARM_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    caps = detect(settings, (), scratch=tmp_path / "scratch" / "w1")  # made later, by the worker
    free = shutil.disk_usage(tmp_path).free / 2**30
    assert abs(caps["scratch_gib"] - free) < 1
    amounts, _ = openjd_capabilities(parse_capabilities(caps))
    assert dict(amounts)["amount.worker.disk.scratch"] == caps["scratch_gib"]
