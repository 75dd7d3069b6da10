"""Shared fixtures: a private Valkey and SeaweedFS on free ports, PostgreSQL schemas, farm settings.

Nothing here touches the machine's Redis on port 6379, and nothing flushes a server these
fixtures did not start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hypothesis  # noqa: F401  (imported first: importing it late, at the summary, hit a CPython 3.11 AST bug)
import pytest

from renderfarm.config import Settings, load_settings
from renderfarm.localfarm import services

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
PG_BASE_URL = os.environ.get("FARM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    password: str = ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rf-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def valkey(tmp_root: Path) -> Iterator[Server]:
    """A private Valkey with a password on a free port (never 6379)."""
    import redis

    port = services.free_ports(1)[0]
    password = secrets.token_urlsafe(16)
    argv = services.valkey_argv(tmp_root / "valkey", port, password, "127.0.0.1")
    log = tmp_root / "valkey.log"
    proc = services.spawn(argv, cwd=tmp_root, env=dict(os.environ), log_path=log, detach=False)
    client = redis.Redis(port=port, password=password)
    services.wait_until(client.ping, timeout=20, proc=proc, what="test valkey", log_path=log)
    server = Server(proc, port, password)
    yield server
    server.stop()


def valkey_url(server: Server, db: int = 0) -> str:
    return f"redis://:{server.password}@127.0.0.1:{server.port}/{db}"


@pytest.fixture()
def redis_url(valkey: Server) -> str:
    """The private Valkey, emptied for this test (we started it, so flushing it is ours to do):
    its data, the users earlier tests made and its ACL log."""
    import redis

    client = redis.Redis(port=valkey.port, password=valkey.password)
    client.flushall()
    users = [u.decode() for u in client.execute_command("ACL", "USERS")]
    if len(users) > 1:
        client.execute_command("ACL", "DELUSER", *[u for u in users if u != "default"])
    client.execute_command("ACL", "LOG", "RESET")
    client.close()
    return valkey_url(valkey)


@dataclass
class S3Server(Server):
    access_key: str = ""
    secret_key: str = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def seaweed(tmp_root: Path) -> Iterator[S3Server]:
    """A private SeaweedFS S3 server with generated credentials, bound to loopback."""
    names = list(services.WEED_SERVICES)
    base = services.free_ports(len(names))
    ports = dict(zip(names, base))
    ports.update({f"{n}.grpc": p + 10000 for n, p in zip(names, base)})
    access, secret = "RFTEST" + secrets.token_hex(6).upper(), secrets.token_urlsafe(24)
    argv = services.weed_argv(tmp_root / "s3", ports, access, secret, "127.0.0.1", "renderfarm")
    log = tmp_root / "weed.log"
    proc = services.spawn(argv, cwd=tmp_root, env=dict(os.environ), log_path=log, detach=False)
    server = S3Server(proc, ports["s3"], "", access, secret)
    settings = s3_settings(server, tmp_root / "state-s3-probe", "renderfarm")
    from renderfarm.storage import open_storage

    storage = open_storage(settings)

    def ready() -> bool:
        storage.check()
        return True

    services.wait_until(ready, timeout=60, proc=proc, what="test SeaweedFS", log_path=log)
    yield server
    server.stop()


def s3_settings(server: S3Server, state_dir: Path, bucket: str, **extra) -> Settings:
    """Settings that point storage at the test SeaweedFS with its keys in the environment."""
    os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
    env = {
        "FARM_STATE_DIR": str(state_dir),
        "FARM_STORAGE_URL": f"s3://{bucket}/",
        "FARM_S3_ENDPOINT_URL": server.endpoint,
        **extra,
    }
    return load_settings(env, cwd=state_dir)


def _pg_available() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_BASE_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as e:  # any failure means: no PostgreSQL here
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A database URL on the machine's PostgreSQL, confined to a schema of this test's own."""
    with postgres_schema() as url:
        yield url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL on the machine's PostgreSQL, confined to a new schema dropped afterwards;
    skips the test (or fails it, under FARM_TEST_REQUIRE_POSTGRES) without PostgreSQL."""
    from sqlalchemy import create_engine, text

    why = _pg_available()
    if why:
        if os.environ.get("FARM_TEST_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL at {PG_BASE_URL} is required here but unreachable: {why}")
        pytest.skip(f"no PostgreSQL at {PG_BASE_URL}: {why}")
    schema = f"rf_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_BASE_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path: Path) -> str:
    """Each database test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'farm.db'}"
    return request.getfixturevalue("pg_url")


def farm_command() -> list[str]:
    """The installed `farm` entry point of this environment."""
    return [str(BIN / "farm")]


def run_farm(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300,
             check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            farm_command() + list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        if args[:1] == ("up",):
            _down_after_failed_up(env, cwd)
        raise
    if check and proc.returncode != 0:
        logs = ""
        if args[:1] == ("up",):  # a fixture that fails here never reaches its `farm down`
            logs = _down_after_failed_up(env, cwd)
        raise AssertionError(
            f"farm {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}{logs}"
        )
    return proc


def _down_after_failed_up(env: dict[str, str], cwd: Path | None) -> str:
    """Stop whatever a failed `farm up` left running; returns the tails of the farm's logs."""
    subprocess.run(farm_command() + ["down"], env=env, cwd=cwd, capture_output=True, timeout=120)
    logs = Path(env.get("FARM_STATE_DIR", "")) / "logs"
    tails = []
    for log in sorted(logs.glob("*.log")) if logs.is_dir() else ():
        tails.append(f"\n--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "".join(tails)


def farm_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """An environment for CLI runs against the local farm of `state_dir`, free of outside FARM_*
    and AWS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "AWS_", "RQ_"))}
    env.update(FARM_STATE_DIR=str(state_dir), **extra)
    return env


def running(pid: int) -> bool:
    """Whether a process runs. A zombie does not: a killed renderer's orphaned child waits there
    until init reaps it, which here takes a second or more (and longer on a loaded machine)."""
    return services.process_start_time(pid) is not None


def farm_processes(state_dir: Path) -> list[str]:
    """Processes still running for a state directory: named in their command line, or carrying
    it as FARM_STATE_DIR in their environment (the manager and workers)."""
    marker = str(state_dir)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if marker in cmdline or f"FARM_STATE_DIR={marker}".encode() in environ:
            found.append(f"{proc.name} {cmdline}")
    return found


@dataclass
class LocalFarm:
    """A local farm a test started with `farm up -d`: its folder and the environment of its CLI."""

    root: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return Path(self.env["FARM_STATE_DIR"])

    @property
    def bin(self) -> Path:
        """A folder on the workers' PATH: a test puts there the commands its jobs run."""
        return self.root / "bin"

    def down(self) -> None:
        run_farm("down", env=self.env, check=False, timeout=120)
        assert not farm_processes(self.state)


SHARED_FARMS = ("openjd_farm",)  # session fixtures that stop after the last test that uses them
_shared_up: dict[str, LocalFarm] = {}
_last_users: dict[str, str] = {}  # fixture -> the node id of the last test that asks for it


@pytest.fixture(scope="session")
def openjd_farm(tmp_path_factory) -> Iterator[LocalFarm]:
    """One local farm of one worker that runs OpenJD jobs (heartbeat TTL 3 s), shared by the test
    modules that ask for it: started by the first of their tests, stopped after the last (see
    pytest_runtest_teardown), so it neither starts once per module nor idles through the rest."""
    root = tmp_path_factory.mktemp("openjd-farm-shared")
    state = root / "state"
    state.mkdir(mode=0o700)
    (root / "bin").mkdir()
    env = farm_env(state, FARM_ALLOW_OPENJD="1", FARM_HEARTBEAT_TTL="3")
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run_farm("up", "-d", "-w", "1", env=env, timeout=180)
    farm = _shared_up["openjd_farm"] = LocalFarm(root, env)
    yield farm
    if _shared_up.pop("openjd_farm", None) is not None:
        farm.down()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        for name in SHARED_FARMS:
            if name in getattr(item, "fixturenames", ()):
                _last_users[name] = item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem) -> None:
    """After the last test that uses a shared farm (its own fixtures torn down), stop the farm."""
    for name in SHARED_FARMS:
        if _last_users.get(name) == item.nodeid and (farm := _shared_up.pop(name, None)) is not None:
            farm.down()


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def job_state(env: dict[str, str], job: str, cwd: Path | None = None) -> str | None:
    """A job's state, read from its farm's database in this process: what a test polls while it
    waits. Polled with `farm status`, each look was a new Python process, about 0.3 s of CPU, and
    back to back they took half of a 2-core machine from the farm under test. It reads the farm's
    settings here: a test whose farm.toml this process cannot read (a time zone only the farm's
    own PYTHONTZPATH holds) polls its own way."""
    from sqlalchemy import select

    from renderfarm.db import make_engine
    from renderfarm.models import Job

    engine = make_engine(load_settings(env, cwd=cwd).database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Job.state).where(Job.id == job)).scalar()
    finally:
        engine.dispose()


def wait_job(env: dict[str, str], job: str, states: tuple[str, ...], timeout: float, cwd: Path | None = None) -> str:
    """Wait for a job to reach one of `states` (read as job_state does); returns the state."""
    return wait_for(lambda: (s := job_state(env, job, cwd)) in states and s, timeout, f"job {job} to be {' or '.join(states)}")
