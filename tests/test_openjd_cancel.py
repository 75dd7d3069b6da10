"""`farm cancel` of an OpenJD job on a real local farm (issue 18, acceptance 3): the running
action, whose template asks for NOTIFY_THEN_TERMINATE, gets SIGTERM, keeps running through its
notify period, is killed after it, and nothing of its session is left running (not even a child
that left its process group); the worker then takes new work."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_farm, wait_for

pytestmark = pytest.mark.slow

NOTIFY = 3  # seconds between SIGTERM and the kill

# The action records its pid, that of a child in its process group and that of one that left it
# (setsid), then ignores SIGTERM apart from writing down when it came.
SCRIPT = """
marks={{Param.Marks}}
trap 'date +%s.%N > $marks/term' TERM
sleep 1000 & echo $! > $marks/pid-child
setsid sleep 1000 & echo $! > $marks/pid-setsid
echo $$ > $marks/pid-action
echo 'openjd_status: waiting to be canceled'
while true; do sleep 0.1; done
"""
TEMPLATE = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "stubborn",
    "parameterDefinitions": [{"name": "Marks", "type": "STRING"}],
    "steps": [{
        "name": "hold",
        "script": {"actions": {"onRun": {
            "command": "bash", "args": ["-c", SCRIPT],
            "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": NOTIFY}}}},
    }],
}
QUICK = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "quick",
    "steps": [{"name": "say", "script": {"actions": {"onRun": {"command": "/bin/echo", "args": ["after"]}}}}],
}


def submit(root: Path, env: dict, template: dict, *params: str) -> str:
    path = root / f"{template['name']}.yaml"
    path.write_text(yaml.safe_dump(template))
    args = [a for p in params for a in ("-p", p)]
    return json.loads(run_farm("submit", str(path), *args, "--json", env=env).stdout)["id"]


def state(env: dict, job: str) -> str:
    return json.loads(run_farm("status", job, "--json", env=env).stdout)["state"]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def of_session(job: str) -> list[int]:
    """Processes whose environment marks them as part of one of `job`'s OpenJD sessions."""
    marker = f"FARM_OPENJD_SESSION={job}-".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(marker) for e in environ) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_cancel_sends_sigterm_kills_after_the_notify_period_and_leaves_nothing_running(openjd_farm, tmp_path):
    env = openjd_farm.env
    marks = tmp_path / "marks"
    marks.mkdir()
    job = submit(tmp_path, env, TEMPLATE, f"Marks={marks}")
    names = ("pid-action", "pid-child", "pid-setsid")
    wait_for(lambda: all((marks / n).exists() and (marks / n).read_text().strip() for n in names), 60,
             "the action to start")
    pids = {n: int((marks / n).read_text()) for n in names}
    assert all(alive(p) for p in pids.values()) and set(pids.values()) <= set(of_session(job))

    sessions = openjd_farm.state / "scratch"
    assert list(sessions.glob(f"*/openjd/{job}-hold-*"))  # where the session's folder is
    asked = time.time()
    run_farm("cancel", job, env=env)
    answered = time.time()
    wait_for(lambda: (marks / "term").exists() and (marks / "term").read_text().strip(), 30,
             "the action to get SIGTERM")
    termed = float((marks / "term").read_text())
    wait_for(lambda: not alive(pids["pid-action"]), NOTIFY + 15, "the action to be killed")
    killed = time.time()
    # It ignored SIGTERM: only the kill at the end of the notify period stopped it.
    assert killed - termed >= NOTIFY - 0.5, (termed, killed)
    print(f"farm cancel took {answered - asked:.2f} s; its answer -> SIGTERM {termed - answered:.2f} s; "
          f"SIGTERM -> killed {killed - termed:.2f} s")
    wait_for(lambda: not any(alive(p) for p in pids.values()) and not of_session(job)
             and not list(sessions.glob(f"*/openjd/{job}-hold-*")), 15,
             "every process and folder of the session to be gone")
    wait_for(lambda: state(env, job) == "cancelled", 30, "the job to be cancelled")

    after = submit(tmp_path, env, QUICK)
    wait_for(lambda: state(env, after) in ("done", "failed"), 60, "the next job")
    assert state(env, after) == "done"
    assert "after" in run_farm("log", f"{after}:0", env=env).stdout
    assert os.listdir(marks) and not of_session(job)
