"""`farm up` / `farm down`: a whole farm on one machine, started from the state directory.

What the configuration already points elsewhere (a Redis, an S3 endpoint, a file:// store) is
used instead of being started. Ports, passwords and keys are generated once, kept 0600 in
``local.json`` and reused, so `farm env` stays valid across restarts. The servers listen on
loopback; Valkey and S3 also on the address `farm up --listen` names (kept in ``local.json`` too,
so the URLs the farm hands out reach them from other hosts), S3 then through a gateway of its own
(see gateway.py). `farm up` records the Redis, database and
storage it runs with (``up.json``): every command of this state directory uses them unless its
environment says otherwise. `farm up -d` leaves a supervisor behind that starts again whatever
dies (see supervisor.py); `farm down` stops it first.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from renderfarm import keys
from renderfarm.config import (
    LOCAL_BUCKET,
    RECORD_FILE,
    Settings,
    differing_settings,
    load_settings,
    read_local_file,
    recorded_settings,
    settings_env,
)
from renderfarm.errors import RenderFarmError
from renderfarm.localfarm import services
from renderfarm.localfarm.runfile import (
    RUN_FILE,
    FarmProcess,
    RunFile,
    locked,
    read_run_file,
    write_run_file,
)

STOP_ORDER = ("worker", "manager", "weed", "valkey")
GATEWAY = "s3-gateway"  # the name of the S3 gateway's process, with --listen (see gateway.py)
SUPERVISOR_ARGV = [sys.executable, "-m", "renderfarm.localfarm.supervisor"]

__all__ = ["RUN_FILE", "AlreadyRunning", "FarmProcess", "LocalFarm"]


class LocalFarm:
    """The local farm of one state directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.processes: list[FarmProcess] = []
        self.supervisor: FarmProcess | None = None

    # -- the state directory ------------------------------------------------------------------

    @property
    def run_file(self) -> Path:
        return self.state_dir / RUN_FILE

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `farm up`, `farm down` or supervisor round at a time per state directory."""
        self._prepare_state_dir()
        with locked(self.state_dir):
            yield

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)

    def _local_settings(self, starting: set[str], listen: str) -> dict:
        """Generated once: ports, the Valkey password, the S3 keys. The ports of the servers about
        to start are replaced if something else took them meanwhile; `listen` is recorded when
        they start. The S3 port is the gateway's when there is one (see gateway.py)."""
        local = read_local_file(self.state_dir)
        changed = False
        if starting and local.get("listen", services.LOOPBACK) != listen:
            local["listen"] = listen
            changed = True
        hosts = {services.LOOPBACK, listen}
        if "valkey_password" not in local:
            local.update(
                valkey_password=secrets.token_urlsafe(24),
                s3_access_key="RF" + secrets.token_hex(9).upper(),
                s3_secret_key=secrets.token_urlsafe(30),
            )
            changed = True
        wanted = ["valkey_port", "s3_port"] + [f"weed_{s}" for s in services.WEED_SERVICES if s != "s3"]
        for name in wanted:
            port = local.get(name)
            server = {"valkey_port": "valkey", "s3_port": _s3_server(listen)}.get(name, "seaweedfs")
            # A port's gRPC twin (+10000) must not be another server's port, nor the other way round.
            taken = {q for k, v in local.items() if k != name and k in wanted for q in (v, v + 10000)}
            if isinstance(port, int) and (server not in starting or
                                          not {port, port + 10000} & taken and _ports_free(port, hosts)):
                continue
            while True:
                port = services.free_ports(1, avoid=taken)[0]
                if port + 10000 not in taken and _ports_free(port, hosts):
                    break
                taken.add(port)
            local[name] = port
            changed = True
        if changed:
            services.write_private(self.state_dir / "local.json", json.dumps(local, indent=2))
        return local

    def read_run_file(self) -> list[FarmProcess]:
        run = read_run_file(self.state_dir)
        return run.processes if run else []

    def _write_run_file(self, detached: bool) -> None:
        run = RunFile(self.processes, self.supervisor, detached, time.time())
        write_run_file(self.state_dir, run)

    def running(self) -> list[FarmProcess]:
        """The farm processes of this state directory that are alive now (the supervisor aside)."""
        return [p for p in self.read_run_file() if p.alive()]

    # -- up -----------------------------------------------------------------------------------

    def up(self, workers: int, *, detach: bool, on_step: Callable[[str], None] = lambda _: None,
           sites: list[str] | None = None, listen: str | None = None, supervise: bool = True) -> Settings:
        """Start what this farm needs and is not running (all of it, or what died: a farm whose
        Valkey crashed gets its Valkey back); returns the settings every farm process uses.
        `listen`: the address Valkey and SeaweedFS serve on (default: where the running ones
        already do, else loopback). Detached and with `supervise`, a supervisor process starts
        again whatever dies until `farm down`."""
        if listen is not None:
            listen = services.listen_address(listen)
        with self._locked():
            run = read_run_file(self.state_dir) or RunFile()
            alive = [p for p in run.processes if p.alive()]
            supervisor = run.supervisor if run.supervisor and run.supervisor.alive() else None
            names = [f"{self._host()}-w{i}" for i in range(1, workers + 1)]
            listening = self._listen_address(listen, serving=self._serving({p.name for p in alive}))
            wanted = {*self._servers(listening), "manager", *names}
            watched = supervisor is not None or not (detach and supervise)
            if alive and wanted <= {p.name for p in alive} | self._not_ours() and watched:
                raise AlreadyRunning(f"the local farm is already running ({len(alive)} processes); `farm down` stops it")
            if alive:
                self._check_same_farm()
            self.processes, self.supervisor = alive, supervisor
            try:
                for site in sites or ():
                    self.settings.site(site)  # a site farm.toml does not name is refused here
                settings = self._start(names, detach, on_step, running={p.name for p in alive}, sites=sites or [],
                                       listen=listen)
                _count_restarts(run.processes, [p for p in self.processes if p not in alive])
                if detach and supervise and supervisor is None:
                    self.supervisor = self._spawn_supervisor(settings)
            except BaseException:
                self._stop([p for p in self.processes if p not in alive], grace=3.0)
                self.processes = alive
                self._write_run_file(detach)
                raise
            services.write_private(self.state_dir / RECORD_FILE, json.dumps(recorded_settings(settings), indent=2))
            self._write_run_file(detach)
            return settings

    def _check_same_farm(self) -> None:
        """A running farm keeps the Redis, database and storage it started with: starting its
        missing parts with others would split it in two."""
        differ = differing_settings(self.settings)
        if differ:
            name, theirs, ours = differ[0]
            source = self.settings.sources.get(name, "default")
            raise RenderFarmError(
                f"{name}: the local farm in {self.state_dir} runs with {theirs}, not {ours} (from {source}); "
                "`farm down` first to start it with that"
            )

    def _spawn_supervisor(self, settings: Settings) -> FarmProcess:
        env = {**os.environ, **settings_env(settings)}
        log_path = self.state_dir / "logs" / "supervisor.log"
        popen = services.spawn(SUPERVISOR_ARGV, cwd=self.state_dir, env=env, log_path=log_path, detach=True)
        return FarmProcess("supervisor", "supervisor", popen.pid, services.process_start_time(popen.pid), str(log_path),
                           list(SUPERVISOR_ARGV), started_at=time.time(), popen=popen)

    def _not_ours(self) -> set[str]:
        """Services configured elsewhere, which this farm never starts."""
        out = set()
        if self.settings.configured_elsewhere("redis_url"):
            out.add("valkey")
        if not self._runs_s3():
            out.update(("seaweedfs", GATEWAY))
        return out

    def _servers(self, listen: str) -> set[str]:
        """The servers this farm runs itself when they listen on `listen`: an S3 gateway of its
        own on any address but loopback."""
        return {"valkey", "seaweedfs", _s3_server(listen)} - self._not_ours()

    def _serving(self, running: set[str]) -> bool:
        return bool({"valkey", "seaweedfs", GATEWAY} & running - self._not_ours())

    def _runs_s3(self) -> bool:
        s = self.settings
        return s.storage_url.startswith("s3://") and not s.configured_elsewhere("s3_endpoint_url") \
            and not s.configured_elsewhere("storage_url")

    @staticmethod
    def _host() -> str:
        return os.uname().nodename.split(".")[0]

    def _start(self, names: list[str], detach: bool, on_step: Callable[[str], None], running: set[str],
               sites: list[str], listen: str | None) -> Settings:
        listen = self._listen_address(listen, serving=self._serving(running))
        starting = self._servers(listen) - running
        local = self._local_settings(starting, listen)
        settings = load_settings()
        if settings.state_dir != self.state_dir:  # FARM_STATE_DIR changed under us: keep ours
            raise RenderFarmError(f"state directory moved from {self.state_dir} to {settings.state_dir}")
        logs = self.state_dir / "logs"
        missing = [n for n in names if n not in running]
        # `blender --version` takes a second of CPU: found once here, while the servers start, for
        # every worker (each checks that it names the Blender it would find, unchanged).
        blender = None
        if missing:
            lookup = ThreadPoolExecutor(1, thread_name_prefix="find-blender")
            blender = lookup.submit(_probe_blender, settings)
            lookup.shutdown(wait=False)  # it runs on while the servers start
        if "valkey" in starting:
            on_step("valkey")
            self._start_valkey(local, logs, detach)
        if starting & {"seaweedfs", GATEWAY}:
            on_step("seaweedfs")
            self._start_weed(local, logs, detach, starting)
        env = {**os.environ, **settings_env(settings)}
        if "manager" not in running:
            on_step("manager")
            manager = self._spawn("manager", "manager", [sys.executable, "-m", "renderfarm.manager"], env, logs, detach)
            self._wait_for_manager(settings, manager)
        if missing:
            on_step(f"{len(missing)} worker(s)")
        probed = blender.result() if blender is not None else {}
        for name in missing:
            site = sites[names.index(name) % len(sites)] if sites else "local"  # spread over the sites in turn
            credentials = self._credentials(settings, name, site)
            argv = [sys.executable, "-m", "renderfarm_worker", f"--credentials={credentials}"]
            self._spawn("worker", name, argv, {**services.node_env(env), **probed}, logs, detach)
        self._wait_for_workers(settings, missing)
        return settings

    def _credentials(self, settings: Settings, name: str, site: str) -> Path:
        """The credentials file of a local worker: enrolled like any node (the default path is
        the real one), kept in the state directory, enrolled again if the farm forgot it."""
        from renderfarm.enrollment import enroll, read_credentials, write_credentials

        path = self.state_dir / "nodes" / f"{name}.farm-node"
        try:
            credentials = read_credentials(path)
            if credentials.site == site and _enrolled(settings, name, credentials.node_id):
                return path
        except (RenderFarmError, OSError):
            pass
        (self.state_dir / "nodes").mkdir(mode=0o700, exist_ok=True)
        return write_credentials(path, enroll(settings, name, site=site))

    def _listen_address(self, wanted: str | None, *, serving: bool) -> str:
        """Where the servers listen: where the running ones already do, which a different
        --listen cannot change under them; else the address asked for, or loopback."""
        current = read_local_file(self.state_dir).get("listen", services.LOOPBACK)
        if serving:
            if wanted is not None and wanted != current:
                raise RenderFarmError(
                    f"--listen: the local farm's servers already listen on {current}; `farm down` first to move them to {wanted}"
                )
            return current
        return wanted or services.LOOPBACK

    def _spawn(self, role: str, name: str, argv: list[str], env: dict, logs: Path, detach: bool) -> FarmProcess:
        log_path = logs / f"{name}.log"
        popen = services.spawn(argv, cwd=self.state_dir, env=env, log_path=log_path, detach=detach,
                               umask=services.umask_for(role))
        proc = FarmProcess(role, name, popen.pid, services.process_start_time(popen.pid), str(log_path), list(argv),
                           started_at=time.time(), popen=popen)
        self.processes.append(proc)
        self._write_run_file(detach)  # at once: the manager signals the SeaweedFS it finds there
        return proc

    def _start_valkey(self, local: dict, logs: Path, detach: bool) -> None:
        import redis

        # Loopback too: the manager and the CLI on this host keep working whatever --listen says.
        bind = " ".join(dict.fromkeys([services.LOOPBACK, local.get("listen", services.LOOPBACK)]))
        argv = services.valkey_argv(self.state_dir / "valkey", local["valkey_port"], local["valkey_password"], bind)
        proc = self._spawn("valkey", "valkey", argv, dict(os.environ), logs, detach)
        client = redis.Redis(host=services.LOOPBACK, port=local["valkey_port"], password=local["valkey_password"], socket_timeout=2)
        services.wait_until(client.ping, timeout=30, proc=proc.popen, what="valkey", log_path=Path(proc.log))
        # Valkey loads its append-only file before answering; PING answers LOADING errors until then.
        client.close()

    def _start_weed(self, local: dict, logs: Path, detach: bool, starting: set[str]) -> None:
        """`weed mini` on loopback, S3 included; on another address, mini stays on loopback without
        S3 and a gateway serves S3 there (gateway.py). Either way the S3 URL names that address."""
        from renderfarm.localfarm import gateway

        ports = {"s3": local["s3_port"], **{s: local[f"weed_{s}"] for s in services.WEED_SERVICES if s != "s3"}}
        ports.update({f"{s}.grpc": p + gateway.GRPC_OFFSET for s, p in list(ports.items())})
        listen = local.get("listen", services.LOOPBACK)
        data_dir = self.state_dir / "s3"
        proc = None
        if "seaweedfs" in starting:
            argv = services.weed_argv(data_dir, ports, local["s3_access_key"], local["s3_secret_key"],
                                      services.LOOPBACK, LOCAL_BUCKET, s3=listen == services.LOOPBACK)
            proc = self._spawn("weed", "seaweedfs", argv, dict(os.environ), logs, detach)
        if GATEWAY in starting:
            if proc is not None:  # the filer first: a gateway started too soon waits and hides why
                services.wait_until(lambda: gateway.filer_answers(local["weed_filer"]), timeout=60,
                                    proc=proc.popen, what="SeaweedFS", log_path=Path(proc.log))
            argv = gateway.gateway_argv(data_dir, port=local["s3_port"], filer_port=local["weed_filer"],
                                        bind=listen, s3_config=services.s3_config_path(data_dir))
            proc = self._spawn("weed", GATEWAY, argv, dict(os.environ), logs, detach)
        from renderfarm.storage import open_storage

        storage = open_storage(load_settings())

        def ready() -> bool:
            # A bucket answers before the volume servers do: write and read an object.
            storage.check()
            storage.put_bytes(".farm-probe", b"ok")
            answered = storage.get_bytes(".farm-probe") == b"ok"
            storage.delete([".farm-probe"])  # nothing of ours left in the bucket
            return answered

        services.wait_until(ready, timeout=60, proc=proc.popen, what="SeaweedFS", log_path=Path(proc.log))
        if listen != services.LOOPBACK and gateway.speaks_cleartext_http2(listen, ports["s3.grpc"]):
            where = f"{listen}:{ports['s3.grpc']}"
            raise services.ServiceError(f"the S3 gateway's gRPC port {where} answers without TLS (see {proc.log})")

    def _wait_for_manager(self, settings: Settings, proc: FarmProcess) -> None:
        from renderfarm.redisconn import connect

        r = connect(settings)
        services.wait_until(
            lambda: r.exists(keys.MANAGER_LEADER) and proc.alive(), timeout=60, proc=proc.popen,
            what="the manager", log_path=Path(proc.log),
        )

    def _wait_for_workers(self, settings: Settings, names: list[str]) -> None:
        from renderfarm import presence
        from renderfarm.redisconn import connect

        r = connect(settings)
        workers = {p.name: p for p in self.processes if p.name in names}

        def all_live() -> bool:
            for name, proc in workers.items():
                if not proc.alive():
                    raise services.ServiceError(f"worker {name} exited while starting; see {proc.log}")
            return set(names) <= set(presence.live_workers(r))

        services.wait_until(all_live, timeout=60, proc=None, what="the workers", log_path=None)

    # -- down ---------------------------------------------------------------------------------

    def down(self, *, grace: float = 10.0) -> list[FarmProcess]:
        """Stop every process this farm started, its supervisor first (holding the lock, which
        the supervisor needs to start anything); returns the farm processes that were running."""
        with self._locked():
            run = read_run_file(self.state_dir) or RunFile()
            procs = self.processes or run.processes
            supervisor = self.supervisor or run.supervisor
            alive = [p for p in procs if p.alive()]
            if supervisor is not None:
                _signal_and_wait([supervisor], signal.SIGTERM, 5.0)
                _signal_and_wait([supervisor], signal.SIGKILL, 5.0)
            self._stop(procs, grace)
            self.run_file.unlink(missing_ok=True)
            self.processes, self.supervisor = [], None
            return alive

    def _stop(self, procs: list[FarmProcess], grace: float) -> None:
        """Workers first (they finish or abandon their task), then the manager, then the servers."""
        for role in STOP_ORDER:
            group = [p for p in procs if p.role == role]
            if not group:
                continue
            _signal_and_wait(group, signal.SIGTERM, grace)
            if role == "worker":  # a second SIGTERM is RQ's cold shutdown
                _signal_and_wait(group, signal.SIGTERM, 5.0)
            _signal_and_wait(group, signal.SIGKILL, 5.0)


def _s3_server(listen: str) -> str:
    """The process that serves S3 on `listen`: `weed mini` itself on loopback, else the gateway."""
    return "seaweedfs" if listen == services.LOOPBACK else GATEWAY


def _probe_blender(settings: Settings) -> dict[str, str]:
    """The environment that tells a local worker which Blender `farm up` found: none if none."""
    from renderfarm.renderers.blender import PROBED_VAR, BlenderNotFound, find_configured_blender, probe_record

    try:
        found = find_configured_blender(settings.blender)
    except (BlenderNotFound, OSError):  # each worker finds out again, and says why in its log
        return {}
    return {PROBED_VAR: probe_record(found)}


def _count_restarts(before: list[FarmProcess], started: list[FarmProcess]) -> None:
    """A process started again in place of a dead one of its name carries on its restart count."""
    dead = {p.name: p for p in before}
    for proc in started:
        if proc.name in dead:
            proc.restarts = dead[proc.name].restarts + 1
            proc.exited_at = time.time()


def _ports_free(port: int, hosts: set[str]) -> bool:
    """A server port and its gRPC twin (port + 10000) are free on every address it will bind."""
    return all(services.port_free(p, host) for host in hosts for p in (port, port + 10000))


class AlreadyRunning(RenderFarmError):
    """`farm up` found this state directory's farm already running."""


def _signal_and_wait(procs: list[FarmProcess], sig: int, timeout: float) -> None:
    for p in procs:
        p.signal(sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        time.sleep(0.05)


def _enrolled(settings: Settings, name: str, node_id: str) -> bool:
    """Whether the farm's database has this node enrolled, with this id, now."""
    from renderfarm.db import session_scope
    from renderfarm.models import Node
    from renderfarm.status import reader_engine

    engine = reader_engine(settings)
    if engine is None:
        return False
    try:
        with session_scope(engine) as session:
            node = session.get(Node, name)
            return node is not None and node.node_id == node_id and node.revoked_at is None
    finally:
        engine.dispose()
