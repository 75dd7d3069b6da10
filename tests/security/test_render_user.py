"""Renderers never see a node's secrets: a root worker renders as FARM_RENDER_USER, so a scene's
own script (a `--allow-scripts` .blend) or a job's own program that scans `/proc/*/environ`,
`/proc/*/cmdline` and the worker's files finds no canary secret (the farm's Redis password, the
node's S3 secret, its Redis password, its signing key) to print into a log or an output; and
`--allow-scripts` jobs go only to nodes that set FARM_ALLOW_SCRIPTS=1.

The workers here run on a Python the render user may run (the machine's own, in a venv of its
own that sees this checkout's packages), as a node's worker does from /opt/renderfarm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import farm_env, farm_processes, run_farm, wait_for, wait_job
from nodekit import enrolled_worker_argv, worker_env

from renderfarm.capabilities import parse_capabilities, wants_scripts, worker_view
from renderfarm.errors import ConfigError
from renderfarm.renderers.account import RenderAccount, render_account
from renderfarm.scheduling import Candidate, WorkerView, pick_task, unschedulable

REDIS_CANARY = "canary-redis-Hv27pQx4"
S3_CANARY = "canary-s3-Jd83nWz1Ku"
RENDER_USER = "farm-render"
SYSTEM_PYTHON = "/usr/bin/python3.11"
BLENDER = shutil.which("blender")

# What a hostile renderer does: read every environment and command line it can, walk up to its
# worker, and read every file under the paths it was told of; print it all (into the farm's logs)
# and keep it (in its output, for the command job). Run by Blender's Python and by ours alike.
SCAN = r'''
import glob, os, sys

def scan(roots):
    loot = []
    def say(text):
        text = text.replace("\n", " ")[:3000]
        print(text, flush=True)
        loot.append(text)
    for kind in ("environ", "cmdline"):
        for path in sorted(glob.glob("/proc/[0-9]*/" + kind)):
            try:
                data = open(path, "rb").read(8192)
            except OSError:
                continue
            say("scan %s: %s" % (path, data.replace(b"\0", b" ").decode("utf-8", "replace")))
    pid = os.getppid()
    while pid > 1:
        try:
            open("/proc/%d/environ" % pid, "rb").read()
            say("ancestor %d environ: read" % pid)
        except OSError as e:
            say("ancestor %d environ: denied (%s)" % (pid, e.strerror))
        try:
            pid = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    files = []
    for root in roots:
        if os.path.isfile(root):
            files.append(root)
        for top, _dirs, names in os.walk(root):
            files += [os.path.join(top, n) for n in names]
    for path in files[:400]:
        try:
            data = open(path, "rb").read(4096)
            say("file %s: read %s" % (path, data.decode("utf-8", "replace")))
        except OSError as e:
            say("file %s: denied (%s)" % (path, e.strerror))
    say("scan done: uid %d" % os.getuid())
    return loot
'''

COMMAND = SCAN + r'''
from PIL import Image, PngImagePlugin
out, w, h, roots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
info = PngImagePlugin.PngInfo()
info.add_text("loot", "\n".join(scan(roots)))
Image.new("RGB", (w, h), (10, 20, 30)).save(out, pnginfo=info)
'''

BUILD_BLEND = r'''
import bpy, json, sys
spec = json.loads(sys.argv[sys.argv.index("--") + 1])
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 18, 100
scene.frame_start = scene.frame_end = 1
text = bpy.data.texts.new("scan.py")
text.from_string(spec["script"])
text.use_module = True  # "Register": runs when the file is opened with auto-run scripts on
bpy.ops.wm.save_as_mainfile(filepath=spec["path"])
'''

pytestmark = pytest.mark.slow


# -- the policy, on exact inputs -----------------------------------------------------------------


def test_a_scripts_job_goes_only_to_a_worker_that_allows_scripts():
    plain = WorkerView("plain", renderers=frozenset({"blender"}))
    allows = WorkerView("allows", renderers=frozenset({"blender"}), scripts=True)
    scripted = Candidate(1, "j", 0, 50, 0.0, renderer="blender", scripts=True)
    other = Candidate(2, "k", 0, 10, 1.0, renderer="blender")
    assert pick_task(plain, [scripted, other]) == other
    assert pick_task(allows, [scripted, other]) == scripted
    assert unschedulable([plain], "default", None, "blender", frozenset(), None, scripts=True) == (
        "no live worker of pool 'default' that could render it allows scripts (the job was submitted with "
        "--allow-scripts; a node opts in with FARM_ALLOW_SCRIPTS=1)"
    )
    assert unschedulable([plain, allows], "default", None, "blender", frozenset(), None, scripts=True) is None
    assert unschedulable([plain], "default", None, "blender", frozenset(), None) is None


def test_only_a_plain_true_says_scripts():
    assert parse_capabilities({"scripts": True}) == {"scripts": True}
    assert parse_capabilities({"scripts": "yes"}) == {}
    assert worker_view("w", "default", "local", '{"scripts": true}').scripts is True
    assert worker_view("w", "default", "local", '{"scripts": 1}').scripts is False
    assert wants_scripts('{"samples": 4, "allow_scripts": true}') is True
    assert wants_scripts({"samples": 4}) is False
    assert wants_scripts(None) is False
    assert wants_scripts("not json") is False


def test_a_render_user_the_worker_cannot_switch_to_is_refused_in_one_line():
    with pytest.raises(ConfigError) as no_user:
        render_account("no-such-render-user")
    assert str(no_user.value) == (
        "FARM_RENDER_USER=no-such-render-user: no such user on this node (create it: useradd --system "
        "--user-group --no-create-home --shell /usr/sbin/nologin no-such-render-user)"
    )
    if os.geteuid() == 0:
        with pytest.raises(ConfigError, match=r"^FARM_RENDER_USER=root: uid 0, gid 0 is root's"):
            render_account("root")
        # Not root: the same check, as nobody.
        code = "from renderfarm.renderers.account import render_account; render_account('nobody')"
        python = _render_python_or_skip()
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, user="nobody",
                              group="nogroup", extra_groups=[], cwd="/", timeout=60)
        assert done.returncode != 0
        assert "ConfigError: FARM_RENDER_USER=nobody: the worker runs as uid 65534, not root" in done.stderr
    open_ = Path(tempfile.mkdtemp(prefix="renderfarm-reach-"))  # in /tmp: every directory above may be passed
    try:
        os.chmod(open_, 0o755)
        closed = open_ / "closed"
        closed.mkdir(mode=0o700)
        account = RenderAccount("someone", 54321, 54321)
        account.check_reach(open_ / "scratch", "the scratch directory", need=0)
        with pytest.raises(ConfigError) as unreachable:
            account.check_reach(closed / "scratch", "the scratch directory", need=0)
        assert str(unreachable.value) == (
            f"FARM_RENDER_USER=someone cannot reach the scratch directory {closed}/scratch: {closed} is mode 0700 "
            f"(0:0); let it pass (chmod o+x {closed}) or move the scratch directory elsewhere")
    finally:
        shutil.rmtree(open_)


def test_the_worker_unit_renders_as_an_unprivileged_user_it_creates():
    unit = (Path(__file__).resolve().parents[2] / "worker" / "deploy" / "farm-worker.service").read_text()
    assert "Environment=FARM_RENDER_USER=farm-render" in unit
    assert "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin farm-render" in unit
    assert "\nUser=root\n" in unit


# -- a farm whose workers render as farm-render ----------------------------------------------------


_PYTHON: list[str] = []


_OPENED: list[tuple[Path, int]] = []  # temporary directories opened to others (o+x) by this test, and their modes


@pytest.fixture(scope="module", autouse=True)
def _remove_render_python():
    yield
    if _PYTHON:
        shutil.rmtree(Path(_PYTHON.pop()).parents[2], ignore_errors=True)
    while _OPENED:
        path, mode = _OPENED.pop()
        os.chmod(path, mode)


def _open_temporary_parents(path: Path) -> None:
    """Let others pass (o+x, not list) the directories above `path` that lie in the temporary
    directory and let nobody else through (a fresh clone made by `mktemp -d` is 0700): put back
    when the module ends. Directories elsewhere are left as they are (the test skips)."""
    tmp = Path(tempfile.gettempdir()).resolve()
    for parent in reversed(path.resolve().parents):
        if parent.is_relative_to(tmp) and parent != tmp and parent.stat().st_uid == os.geteuid():
            mode = parent.stat().st_mode & 0o7777
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
                _OPENED.append((parent, mode))


def _render_python_or_skip() -> str:
    """A Python the render user may run that sees this checkout's packages: a venv of the
    machine's Python (this test's own may sit under /root, which nobody else may enter)."""
    if _PYTHON:
        return _PYTHON[0]
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (a Python every user may run) is not installed")
    site = sysconfig.get_paths()["purelib"]
    _open_temporary_parents(Path(site))
    try:
        RenderAccount("probe", 65534, 65534).check_reach(Path(site), "the checkout's packages", need=5)
    except ConfigError as e:
        pytest.skip(str(e))
    base = Path(tempfile.mkdtemp(prefix="renderfarm-renderpy-"))
    os.chmod(base, 0o755)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(base / "venv")], check=True, timeout=120)
    pth = base / "venv" / "lib" / "python3.11" / "site-packages" / "_renderfarm_checkout.pth"
    pth.write_text(f"import site; site.addsitedir({site!r})\n")
    # redis-py imports async_timeout on Pythons before 3.11.3 (Debian 12 has 3.11.2), which this
    # checkout's lock leaves out; asyncio's own is the same thing (the worker never uses it).
    (pth.parent / "async_timeout.py").write_text("from asyncio import timeout, timeout_at  # noqa: F401\n")
    _PYTHON.append(str(base / "venv" / "bin" / "python"))
    return _PYTHON[0]


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("renders switch to another user only when the worker is root")
    python = _render_python_or_skip()
    if subprocess.run(["id", "-u", RENDER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        RENDER_USER], check=True, timeout=60)
    # Everything the renderers are told of lies where they could reach it if the modes allowed:
    # only the modes stand between them and the secrets.
    base = Path(tempfile.mkdtemp(prefix="renderfarm-renderuser-"))
    os.chmod(base, 0o755)
    state = base / "state"
    state.mkdir(mode=0o700)
    (base / "nodes").mkdir(mode=0o755)
    from renderfarm.localfarm import services

    ports = services.free_ports(6)
    services.write_private(state / "local.json", json.dumps({
        "valkey_password": REDIS_CANARY, "s3_access_key": "RFCANARYKEY2", "s3_secret_key": S3_CANARY,
        "valkey_port": ports[0], "s3_port": ports[1], "weed_master": ports[2], "weed_volume": ports[3],
        "weed_filer": ports[4], "weed_admin": ports[5],
    }))
    env = farm_env(state)
    run_farm("up", "-d", "-w", "0", env=env, timeout=120)
    farm = Farm(base, state, env, python)
    yield farm
    farm.stop_workers()
    run_farm("down", env=env, check=False, timeout=120)
    assert not farm_processes(state)
    if not os.environ.get("KEEP_RENDERUSER"):
        shutil.rmtree(base, ignore_errors=True)


class Farm:
    def __init__(self, base: Path, state: Path, env: dict[str, str], python: str) -> None:
        from renderfarm.config import load_settings

        self.base, self.state, self.env, self.python = base, state, env, python
        self.settings = load_settings(env, cwd=base)
        self.workers: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}

    def worker_argv(self, name: str) -> list[str]:
        if name not in self.argv:
            self.argv[name] = enrolled_worker_argv(self.settings, name, self.base / "nodes", python=self.python)
        return self.argv[name]

    def start_worker(self, name: str, *extra: str, **settings: str) -> subprocess.Popen:
        env = worker_env(self.settings, FARM_RENDER_USER=RENDER_USER, FARM_ALLOW_COMMANDS="1", **settings)
        log = (self.base / f"worker-{name}.log").open("ab")
        proc = subprocess.Popen([*self.worker_argv(name), *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.base)
        self.workers[name] = proc
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def status(self, job: str) -> dict:
        return json.loads(run_farm("status", job, "--json", env=self.env).stdout)

    def wait_live(self, name: str) -> None:
        def live():
            rows = json.loads(run_farm("workers", "--json", env=self.env).stdout)
            return any(w["name"] == name and w["state"] != "offline" for w in rows)

        wait_for(live, 60, f"worker {name} to join: {self.worker_log(name)}")

    def worker_log(self, name: str) -> str:
        return (self.base / f"worker-{name}.log").read_text(errors="replace")[-4000:]

    def secrets(self) -> dict[str, str]:
        """Every secret a renderer must never find: the farm's and each node's."""
        from renderfarm.enrollment import read_credentials

        found = {"farm Redis password": REDIS_CANARY, "farm S3 secret": S3_CANARY}
        for path in (self.base / "nodes").glob("*.farm-node"):
            creds = read_credentials(path)
            password = urlsplit(creds.redis_url).password
            found[f"{creds.name} signing key"] = creds.key
            if password:
                found[f"{creds.name} Redis password"] = unquote(password)
                found[f"{creds.name} Redis password (quoted)"] = password
            if creds.s3_secret_key:
                found[f"{creds.name} S3 secret"] = creds.s3_secret_key
        return found


def test_a_worker_whose_render_user_cannot_reach_its_scratch_does_not_start(farm):
    # Its default scratch lies in the state directory, which is 0700.
    proc = subprocess.run(farm.worker_argv("unreachable"), env=worker_env(farm.settings, FARM_RENDER_USER=RENDER_USER),
                          capture_output=True, text=True, timeout=120, cwd=farm.base)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"farm-worker: FARM_RENDER_USER={RENDER_USER} cannot reach the scratch directory "
                           f"{farm.state}/scratch/unreachable: {farm.state} is mode 0700"), proc.stderr


def test_renderers_find_no_secret_and_scripts_run_only_where_allowed(farm):
    roots = [str(farm.state), str(farm.base / "nodes"), str(farm.base)]
    script = farm.base / "scan.py"
    script.write_text(COMMAND)
    script.chmod(0o644)
    scene = farm.base / "scan.toml"
    argv = [farm.python, str(script), "{output}", "{width}", "{height}", *roots]
    scene.write_text(f'[render]\nwidth = 16\nheight = 16\nframes = "1"\n\n[command]\nargv = {json.dumps(argv)}\n')

    farm.worker_argv("scripted")  # both nodes' credentials files exist before any render
    plain = farm.start_worker("plain", f"--scratch={farm.base / 'scratch-plain'}")
    farm.wait_live("plain")
    jobs = {"command": json.loads(run_farm("submit", str(scene), "--renderer", "command", "--json",
                                           env=farm.env).stdout)["id"]}
    if BLENDER:
        blend = farm.base / "scan.blend"
        spec = json.dumps({"path": str(blend), "script": SCAN + f"\nscan({roots!r})\n"})
        subprocess.run([BLENDER, "-b", "--factory-startup", "-noaudio", "--python-expr", BUILD_BLEND, "--", spec],
                       check=True, capture_output=True, timeout=120)
        jobs["blender"] = json.loads(run_farm("submit", str(blend), "--allow-scripts", "--json",
                                              env=farm.env).stdout)["id"]
        # No live node allows scripts: the job waits, and says why.
        why = wait_for(lambda: farm.status(jobs["blender"])["unschedulable"], 60, "the scripts job to be unschedulable")
        assert why == ("no live worker of pool 'default' that could render it allows scripts (the job was "
                       "submitted with --allow-scripts; a node opts in with FARM_ALLOW_SCRIPTS=1)")
        shown = run_farm("status", jobs["blender"], env=farm.env).stdout
        assert "unschedulable" in shown and "FARM_ALLOW_SCRIPTS=1" in " ".join(shown.split())
    wait_job(farm.env, jobs["command"], ("done",), 120)
    if BLENDER:
        assert farm.status(jobs["blender"])["state"] == "queued"
        plain.send_signal(signal.SIGTERM)
        plain.wait(60)
        farm.start_worker("scripted", f"--scratch={farm.base / 'scratch-scripted'}", FARM_ALLOW_SCRIPTS="1")
        farm.wait_live("scripted")
        ended = wait_job(farm.env, jobs["blender"], ("done", "failed"), 180)
        assert farm.status(jobs["blender"])["state"] == "done", (ended, farm.worker_log("scripted"))

    # What each renderer saw: its worker's environment and every secret file were closed to it.
    import redis

    from renderfarm.storage import open_storage

    storage = open_storage(farm.settings)
    objects = {o.key: storage.get_bytes(o.key) for o in storage.list("")}
    logs = {k: v for k, v in objects.items() if k.endswith("log.txt") and any(j in k for j in jobs.values())}
    assert len(logs) == len(jobs), sorted(objects)
    for job, text in ((j, b"".join(v for k, v in logs.items() if jobs[j] in k).decode()) for j in jobs):
        assert f"scan done: uid {_uid(RENDER_USER)}" in text, (job, text[-2000:])
        worker = farm.workers["plain" if job == "command" else "scripted"].pid
        assert f"ancestor {worker} environ: denied" in text, (job, text[-3000:])
        for creds in (farm.base / "nodes").glob("*.farm-node"):
            assert f"file {creds}: denied" in text, (job, creds)
        assert f"file {farm.state}/local.json" not in text  # the state directory could not even be walked
    processes = {}
    for proc in Path("/proc").glob("[0-9]*"):  # while the workers run
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:100]
        processes[f"{proc}/cmdline ({shown})"] = cmdline
        # The local farm's manager and its supervisor run on the studio's side with the farm's
        # Redis password (a real farm's manager is not on a render node at all); a render node's
        # processes hold no secret in their environment.
        if not any(m in cmdline for m in (b"renderfarm.manager", b"renderfarm.localfarm.supervisor")):
            processes[f"{proc}/environ ({shown})"] = environ
    farm.stop_workers()

    # The secrets, anywhere the renderers' findings could have gone: stored logs and outputs (every
    # object in storage), the live logs, the workers' own logs and scratch, every process's
    # environment and command line, and the database.
    r = redis.Redis.from_url(farm.settings.redis_url)
    live = {k.decode(): b"".join(v for _id, f in r.xrange(k) for v in f.values())
            for k in r.scan_iter("*log*") if r.type(k) == b"stream"}
    assert live, "no live log was kept"
    places: dict[str, bytes] = {**{f"storage {k}": v for k, v in objects.items()},
                                **{f"live log {k}": v for k, v in live.items()}}
    for path in [*farm.base.glob("worker-*.log"), *farm.base.glob("scratch-*/**/*"), *(farm.state / "logs").rglob("*")]:
        if path.is_file():
            places[str(path)] = path.read_bytes()
    places.update(processes)
    run_farm("down", env=farm.env, timeout=120)
    # The database: every row (the manager keeps each node's key and S3 identity in `nodes`, as
    # it must to check its seals), and its files for the farm's own secrets.
    import sqlite3

    with sqlite3.connect(farm.state / "farm.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") if t != "nodes"]
        for table in tables:
            places[f"farm.db table {table}"] = repr(db.execute(f'SELECT * FROM "{table}"').fetchall()).encode()
    assert "attempts" in tables
    files = {str(path): path.read_bytes() for path in farm.state.glob("farm.db*")}
    leaks = [f"{what} in {where}" for what, secret in farm.secrets().items() for where, data in places.items()
             if secret.encode() in data]
    leaks += [f"{what} in {where}" for what, secret in farm.secrets().items() for where, data in files.items()
              if what.startswith("farm ") and secret.encode() in data]
    assert not leaks, leaks
    run_farm("up", "-d", "-w", "0", env=farm.env, timeout=120)


def test_the_same_scan_as_the_worker_user_finds_the_secrets(farm):
    """The control: what the render user is kept from. The scan, run as the worker's own user
    (root), reads the node's credentials file and the farm's state, secrets and all."""
    farm.worker_argv("control")
    script = farm.base / "scan-as-root.py"
    script.write_text(SCAN + "\nimport sys\nscan(sys.argv[1:])\n")
    done = subprocess.run([farm.python, str(script), str(farm.state), str(farm.base / "nodes")],
                          capture_output=True, text=True, timeout=120)
    found = [what for what, secret in farm.secrets().items() if secret in done.stdout]
    assert "control signing key" in found and "farm Redis password" in found, found


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid

