"""Commands on the farm itself: up, down, demo, env, config, manager, db."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from renderfarm_cli.console import counted, duration, err, note, out, print_json

DEMO_SCENE = "bouncing-balls.toml"


def _settings():
    from renderfarm.config import load_settings

    return load_settings()


def _default_workers() -> int:
    return os.cpu_count() or 1


def _interrupt_on_sigterm() -> None:
    """Treat SIGTERM (and a closed terminal) like Ctrl-C, so the farm we started is stopped."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


WorkersOpt = Annotated[Optional[int], typer.Option("--workers", "-w", help="Number of workers (default: number of cores).", min=1, max=256)]
UpWorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", "-w", help="Number of workers (default: number of cores; 0: none, workers run on other hosts).", min=0, max=256,
)]


def up(
    workers: UpWorkersOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start in the background and return.")] = False,
    site: Annotated[Optional[list[str]], typer.Option(help="Put workers at these sites, in turn (repeatable; see [sites] in farm.toml).")] = None,
    listen: Annotated[Optional[str], typer.Option(
        metavar="ADDR", help="Serve Valkey and S3 on this address of the host, for workers on other hosts (default: 127.0.0.1).",
    )] = None,
    supervise: Annotated[bool, typer.Option(
        help="With -d: leave a supervisor that starts again any farm process that dies, until `farm down`.",
    )] = True,
) -> None:
    """Start the local farm: Valkey, SeaweedFS, the manager and N workers (what is configured
    elsewhere is used instead). Every later command of this state directory, in any shell, uses
    the Redis, database and storage it starts with, unless its environment says otherwise."""
    from renderfarm.localfarm import LocalFarm

    settings = _settings()
    farm = LocalFarm(settings)
    count = _default_workers() if workers is None else workers
    started = time.monotonic()
    if not detach:
        _interrupt_on_sigterm()
    settings = farm.up(count, detach=detach, on_step=lambda step: err().print(f"starting {step}...", style="dim"),
                       sites=site, listen=listen, supervise=supervise)
    out().print(f"[ok]farm up[/] in {time.monotonic() - started:.1f} s: {counted(count, 'worker')}, state in {settings.state_dir}")
    _print_where(settings)
    if listen is not None:
        from renderfarm.config import mask_url

        out().print(f"serving {mask_url(settings.redis_url)} and {settings.s3_endpoint_url}; "
                    "`farm node add NAME` enrolls a render node on another host")
    if detach:
        out().print("`farm down` stops it; `eval \"$(farm env)\"` points standard tools at it")
        return
    out().print("running in the foreground; Ctrl-C stops it")
    try:
        from renderfarm.localfarm.logrotate import CHECK_EVERY, rotate_logs

        checked = 0.0
        while True:
            time.sleep(1.0)
            if time.monotonic() - checked >= CHECK_EVERY:
                checked = time.monotonic()
                rotate_logs(settings.state_dir / "logs")
            dead = [p for p in farm.processes if not p.alive()]
            if dead:
                note(f"{', '.join(p.name for p in dead)} exited; stopping the farm (logs in {settings.state_dir / 'logs'})")
                break
    except KeyboardInterrupt:
        pass
    finally:
        err().print("stopping the farm...", style="dim")
        farm.down()


def _print_where(settings) -> None:
    """Name the database and storage the farm runs with when the user chose them (not the defaults)."""
    from renderfarm.config import mask_url

    chosen = [f"{name.removesuffix('_url')} {mask_url(getattr(settings, name))} (from {settings.sources[name]})"
              for name in ("redis_url", "database_url", "storage_url") if settings.configured_elsewhere(name)]
    if chosen:
        out().print("with " + "; ".join(chosen) + ": every command of this state directory uses them",
                    soft_wrap=True, markup=False)


def note_other_farm() -> None:
    """Say on stderr when this command's settings point at another Redis, database or storage than
    the local farm that runs in its state directory (a shell with an old FARM_DATABASE_URL...)."""
    from renderfarm.config import RECORD_FILE, load_settings
    from renderfarm.errors import RenderFarmError

    try:
        settings = load_settings()
        if not (settings.state_dir / RECORD_FILE).exists():
            return  # no farm ever started here
        from renderfarm.localfarm.health import other_farm_note

        text = other_farm_note(settings)
    except RenderFarmError:  # a bad setting: the command itself says so
        return
    if text:
        note(text)


def down() -> None:
    """Stop every process the local farm started."""
    from renderfarm.localfarm import LocalFarm

    stopped = LocalFarm(_settings()).down()
    out().print(f"farm down: stopped {len(stopped)} process(es)" if stopped else "the local farm is not running")


def demo(
    workers: WorkersOpt = None,
    dest: Annotated[str, typer.Option(help="Where to put the frames (a folder per job is made in it).")] = "renders",
) -> None:
    """Render the 48-frame example shot on a local farm, download the frames, stop the farm."""
    from renderfarm.client import Submission, submit as submit_shot
    from renderfarm.downloads import download as fetch
    from renderfarm.localfarm import LocalFarm

    from renderfarm_cli.progress import Progress, follow_job

    settings = _settings()
    scene = find_example(DEMO_SCENE)
    farm = LocalFarm(settings)
    started = time.monotonic()
    ours = not farm.running()
    _interrupt_on_sigterm()
    try:
        if ours:
            count = workers or _default_workers()
            farm.up(count, detach=False, on_step=lambda step: err().print(f"starting {step}...", style="dim"))
            out().print(f"farm up in {time.monotonic() - started:.1f} s with {counted(count, 'worker')}")
        else:
            out().print("using the local farm that is already running")
        settings = _settings()
        job_id = submit_shot(settings, Submission(scene=scene, name="demo"))
        out().print(f"submitted {scene.name} as job [bold]{job_id}[/]")
        try:
            status = follow_job(settings, job_id, f"rendering {job_id}")
        except KeyboardInterrupt:
            _cancel_demo(settings, job_id)
            raise
        if status.state != "done":
            raise typer.Exit(1)
        target = Path(dest) / job_id
        with Progress(f"downloading {job_id}", status.frames, "frames") as bar:
            paths = fetch(settings, job_id, target, lambda i, n, name: bar.update(i, name, force=i == n)).paths
        out().print(f"[ok]{len(paths)} frames[/] in {target}/ (rendered in {duration(status.elapsed)}, "
                  f"{duration(time.monotonic() - started)} in all)")
    finally:
        if ours:
            err().print("stopping the farm...", style="dim")
            farm.down()


def _cancel_demo(settings, job_id: str) -> None:
    """Ctrl-C: cancel the demo's job before the farm stops, so it is not left `running`. A second
    Ctrl-C skips the wait."""
    from renderfarm.client import order_job
    from renderfarm.errors import RenderFarmError

    err().print(f"cancelling job {job_id}...", style="dim")
    try:
        order_job(settings, "cancel", job_id)
    except RenderFarmError as e:
        note(f"job {job_id} was not cancelled: {e}")
    except KeyboardInterrupt:
        note(f"job {job_id} was not cancelled (interrupted again)")


def find_example(name: str) -> Path:
    """An example shot: shipped inside the package, or in the repository's examples/."""
    import renderfarm

    from renderfarm.errors import SceneError

    package = Path(renderfarm.__file__).parent
    for candidate in (package / "_examples" / name, package.parent / "examples" / name, Path("examples") / name):
        if candidate.is_file():
            return candidate
    raise SceneError(f"example {name}: not found next to the renderfarm package or in ./examples")


def env() -> None:
    """Print shell exports that point renderfarm, the AWS CLI and `rq info` at the farm.

    A password is exported only with the place it is for (FARM_REDIS_URL and RQ_REDIS_URL hold
    both; the S3 keys come with AWS_ENDPOINT_URL). redis-cli is left alone: it reads a password
    from REDISCLI_AUTH but its server only from its command line, so a plain `redis-cli` would
    hand the farm's password to whatever listens on port 6379. `redis-cli -u "$FARM_REDIS_URL"`
    reaches the farm (the password then shows in `ps` to the host's other users)."""
    from renderfarm.config import read_local_file, settings_env
    from renderfarm.errors import ConfigError
    from renderfarm.storage.s3 import local_credentials

    settings = _settings()
    if not settings.redis_url and not read_local_file(settings.state_dir):
        raise ConfigError(f"no farm configured and no local farm ever started in {settings.state_dir} (`farm up -d` first)")
    exports = settings_env(settings)
    if settings.s3_endpoint_url:
        exports["AWS_ENDPOINT_URL"] = settings.s3_endpoint_url
        creds = local_credentials(settings)  # only ever for the local farm's own endpoint
        if creds:
            exports["AWS_ACCESS_KEY_ID"], exports["AWS_SECRET_ACCESS_KEY"] = creds
    exports["AWS_DEFAULT_REGION"] = settings.s3_region
    if settings.redis_url:
        exports["RQ_REDIS_URL"] = settings.redis_url
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")


def config(json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the effective settings and where each came from (secrets masked), sites included."""
    from renderfarm.config import effective_settings
    from renderfarm.sites import site_settings

    settings = _settings()
    rows = effective_settings(settings)
    for site in sorted(settings.sites.values(), key=lambda site: site.name):
        rows += [(key, value, site.source) for key, value in site_settings(site)]
    if not settings.sites:
        rows.append(("sites", "none (add [sites.NAME] to farm.toml to price energy)", "default"))
    if json_:
        print_json({name: {"value": value, "source": source} for name, value, source in rows})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("SETTING", "VALUE", "FROM"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out().print(table)


def manager() -> None:
    """Run the manager in the foreground (the farm's only database writer)."""
    import logging

    from renderfarm.manager import run_manager

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_manager(_settings())


def db_upgrade() -> None:
    """Apply database migrations (the manager also does this when it starts)."""
    from renderfarm.db import current_revision, head_revision, make_engine, upgrade

    engine = make_engine(_settings().database_url, writer=True)
    before = current_revision(engine)
    upgrade(engine)
    out().print(f"database at revision {head_revision()} (was {before or 'empty'})")
