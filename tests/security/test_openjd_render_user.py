"""OpenJD tasks on a root worker run as its render user (issue 18's "who may run it", on top of
the node-trust issue): openjd-sessions runs each action with `sudo -u USER -i setsid -w`, so the
action can read neither its worker's /proc/<pid>/environ nor the node's credentials file, and
writes only its session's working directory and the folders of the parameters it writes to; its
outputs are still uploaded and promoted, and cancel still kills its whole process tree.

A render user whose login shell does not exec its command (nologin, dash) cannot work with sudo
`-i`: such a worker says so in one line at start and takes no OpenJD tasks.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_farm, wait_for, wait_job
from nodekit import worker_env
from test_openjd_cancel import NOTIFY, alive, of_session
from test_openjd_cancel import TEMPLATE as STUBBORN
from test_render_user import RENDER_USER, _remove_render_python, farm  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

OPENJD_USER = "farm-openjd"  # a render user whose login shell (bash) execs its command, as sudo -i needs

# The action: who it runs as, what it could read and write of the worker's; all into its output.
PROBE = r"""
out={{Param.OutDir}}
id -un > "$out/whoami.txt"
for f in /proc/{{Param.WorkerPid}}/environ {{Param.Credentials}}; do
  if head -c 1 "$f" > /dev/null 2>&1; then echo "read $f"; else echo "denied $f"; fi
done > "$out/reads.txt"
session=$(dirname {{Session.WorkingDirectory}})
for d in {{Session.WorkingDirectory}} "$out" "$session" "$session/params" "$(dirname "$session")" \
         "$(dirname "$(dirname "$session")")"; do
  if touch "$d/.probe" 2> /dev/null; then echo "wrote $d"; rm -f "$d/.probe"; else echo "denied $d"; fi
done > "$out/writes.txt"
"""
TEMPLATE = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "probe",
    "parameterDefinitions": [
        {"name": "OutDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT", "default": "probe"},
        {"name": "WorkerPid", "type": "INT"},
        {"name": "Credentials", "type": "STRING"},
    ],
    "steps": [{"name": "look", "script": {"actions": {"onRun": {"command": "bash", "args": ["-c", PROBE]}}}}],
}


@pytest.fixture(scope="module")
def openjd_user(farm):  # noqa: F811
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed (openjd-sessions runs actions as another user through it)")
    if subprocess.run(["id", "-u", OPENJD_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/bash",
                        OPENJD_USER], check=True, timeout=60)
    return pwd.getpwnam(OPENJD_USER)


def start(farm, name: str, user: str):  # noqa: F811
    env = worker_env(farm.settings, FARM_RENDER_USER=user, FARM_ALLOW_OPENJD="1")
    log = (farm.base / f"worker-{name}.log").open("ab")
    proc = subprocess.Popen([*farm.worker_argv(name), f"--scratch={farm.base / f'scratch-{name}'}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=farm.base)
    farm.workers[name] = proc
    farm.wait_live(name)
    return proc


def submit(farm, template: dict, *params: str) -> str:  # noqa: F811
    path = farm.base / f"{template['name']}.yaml"
    path.write_text(yaml.safe_dump(template))
    args = [a for p in params for a in ("-p", p)]
    return json.loads(run_farm("submit", str(path), *args, "--json", env=farm.env).stdout)["id"]


def test_a_render_user_without_a_shell_that_execs_takes_no_openjd_tasks(farm, openjd_user):  # noqa: F811
    proc = start(farm, "ojd-nologin", RENDER_USER)  # farm-render's shell is /usr/sbin/nologin
    lines = [line for line in farm.worker_log("ojd-nologin").splitlines() if "FARM_ALLOW_OPENJD" in line]
    assert len(lines) == 1, farm.worker_log("ojd-nologin")
    assert (f"FARM_ALLOW_OPENJD with FARM_RENDER_USER={RENDER_USER}: `sudo -u {RENDER_USER} -i` exited 1 "
            "(This account is currently not available.); its login shell is /usr/sbin/nologin (usermod -s "
            f"/bin/bash {RENDER_USER}): this worker takes no OpenJD tasks") in lines[0]
    rows = json.loads(run_farm("workers", "--json", env=farm.env).stdout)
    row = next(w for w in rows if w["name"] == "ojd-nologin")
    assert "openjd" not in json.dumps(row.get("renderers", row)), row
    proc.terminate()
    proc.wait(60)


def test_an_openjd_action_runs_as_the_render_user_and_reaches_no_secret(farm, openjd_user, tmp_path):  # noqa: F811
    worker = start(farm, "ojd", OPENJD_USER)
    credentials = farm.worker_argv("ojd")[-1].split("=", 1)[1]
    job = submit(farm, TEMPLATE, f"WorkerPid={worker.pid}", f"Credentials={credentials}")
    wait_job(farm.env, job, ("done", "failed"), 120)
    assert farm.status(job)["state"] == "done", farm.worker_log("ojd")

    dest = tmp_path / "dest"
    run_farm("download", job, str(dest), env=farm.env)  # promoted: the job's own outputs
    found = {p.name: p.read_text() for p in dest.rglob("*.txt")}
    assert found["whoami.txt"].strip() == OPENJD_USER
    assert found["reads.txt"].split("\n")[:2] == [f"denied /proc/{worker.pid}/environ", f"denied {credentials}"]
    writes = found["writes.txt"].splitlines()
    assert writes[0].startswith("wrote ") and writes[1].startswith("wrote "), writes  # working dir, OutDir
    assert all(w.startswith("denied ") for w in writes[2:]) and len(writes) == 6, writes
    # The control: the worker's own user reads both.
    assert Path(f"/proc/{worker.pid}/environ").read_bytes() and Path(credentials).read_bytes()


def test_cancel_kills_the_render_users_action_tree(farm, openjd_user):  # noqa: F811
    if "ojd" not in farm.workers or farm.workers["ojd"].poll() is not None:
        start(farm, "ojd", OPENJD_USER)
    marks = farm.base / "marks"
    marks.mkdir(mode=0o777)
    os.chmod(marks, 0o777)  # the render user's action writes its pids here
    job = submit(farm, STUBBORN, f"Marks={marks}")
    names = ("pid-action", "pid-child", "pid-setsid")
    wait_for(lambda: all((marks / n).exists() and (marks / n).read_text().strip() for n in names), 60,
             "the action to start")
    pids = {n: int((marks / n).read_text()) for n in names}
    assert all(Path(f"/proc/{p}").stat().st_uid == openjd_user.pw_uid for p in pids.values())
    assert set(pids.values()) <= set(of_session(job))

    run_farm("cancel", job, env=farm.env)
    wait_for(lambda: (marks / "term").exists() and (marks / "term").read_text().strip(), 30,
             "the action to get SIGTERM")
    termed = float((marks / "term").read_text())
    wait_for(lambda: not alive(pids["pid-action"]), NOTIFY + 15, "the action to be killed")
    assert time.time() - termed >= NOTIFY - 0.5
    sessions = farm.base / "scratch-ojd" / "openjd"
    wait_for(lambda: not any(alive(p) for p in pids.values()) and not of_session(job)
             and not list(sessions.glob(f"{job}-hold-*")), 15, "every process and folder of the session to be gone")
    wait_job(farm.env, job, ("cancelled",), 30)
