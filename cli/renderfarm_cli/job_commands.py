"""Artist and admin commands on jobs: submit, jobs, status, tasks, workers, download, log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from renderfarm_cli.console import (
    age,
    counted,
    duration,
    note,
    one_line,
    out,
    print_json,
    state_text,
)

JobArg = Annotated[str, typer.Argument(help="Job id, or a unique prefix of one.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _path(field: str, text: str) -> Path:
    """A path from the command line, refused in one line if the system could never open it."""
    from renderfarm.errors import InputError, shown

    if not text or "\x00" in text:
        raise InputError(f"{field}: {shown(text)} is not a usable path")
    return Path(text)


def _settings():
    from renderfarm.config import load_settings

    return load_settings()


def farm_state_note(settings) -> dict | None:
    """Live worker heartbeats when the farm runs; otherwise say on stderr that it is not running."""
    return _farm_state(settings)[0]


def _farm_state(settings):
    """(live worker heartbeats, the manager's last sign of life), or (None, None) when Redis does
    not answer; says on stderr what is not running."""
    from renderfarm import presence
    from renderfarm.errors import FarmNotRunningError
    from renderfarm.localfarm.health import manager_life
    from renderfarm.redisconn import NOT_RUNNING_HINT, connect

    try:
        r = connect(settings, timeout=1.0)
        live = presence.live_workers(r)
        life = manager_life(r)  # a manager killed outright still holds its lock for up to 10 s
        if not life.running:
            note(f"the farm's manager is not running; {NOT_RUNNING_HINT}")
        return live, life
    except FarmNotRunningError:
        note(f"the farm is not running (showing the database only); {NOT_RUNNING_HINT}")
        return None, None


def _read(settings):
    """A read-only session on the farm's database, or None if it does not exist yet."""
    from renderfarm.db import session_scope
    from renderfarm.status import reader_engine

    engine = reader_engine(settings)
    return None if engine is None else session_scope(engine)


def _job_session(settings, job: str):
    """A read-only session for a command about one job; no database means no such job."""
    from renderfarm.errors import NotFoundError

    reader = _read(settings)
    if reader is None:
        raise NotFoundError(f"job {job!r}: no such job (no job was ever submitted here)")
    return reader


def _idle_report(settings, json_: bool) -> None:
    from renderfarm.idlepower import idle_report

    reader = _read(settings)
    rows = []
    if reader is not None:
        with reader as session:
            rows = idle_report(session)
    if json_:
        print_json({"idle": rows})
        return
    if not rows:
        out().print("no idle power counted yet (a site counts once farm.toml gives it idle_watts)")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("SITE", "IDLE h", "IDLE kWh", "IDLE COST", "ASLEEP h", "ASLEEP kWh", "SAVED kWh", "SAVED COST"):
        table.add_column(col, justify="left" if col == "SITE" else "right")
    for r in rows:
        table.add_row(r["site"], f"{r['idle_hours']:.2f}", f"{r['idle_kwh']:.3f}", f"{r['idle_cost']:.4g} {r['currency']}".strip(),
                      f"{r['asleep_hours']:.2f}", f"{r['asleep_kwh']:.3f}", f"{r['saved_kwh']:.3f}",
                      f"{r['saved_cost']:.4g} {r['currency']}".strip())
    out().print(table)


def submit(
    scene: Annotated[str, typer.Argument(help="The scene file to render, or an OpenJD job template (.yaml, .json) or job bundle directory.", show_default=False)],
    param: Annotated[Optional[list[str]], typer.Option("-p", "--param", help="An OpenJD job parameter's value, NAME=VALUE; repeat for several.")] = None,
    frames: Annotated[Optional[str], typer.Option(help="Frames to render, e.g. 1-100, 1-100x2, 1,5,10-20 (default: the scene's own range).")] = None,
    chunk: Annotated[str, typer.Option(help="Frames per task.")] = "1",
    renderer: Annotated[Optional[str], typer.Option(help="Renderer: builtin, blender, null (draws nothing: measures the farm) or command (default: blender for a .blend, else builtin).")] = None,
    priority: Annotated[str, typer.Option(help="0-100, higher renders first.")] = "50",
    pool: Annotated[str, typer.Option(help="Worker pool to render on.")] = "default",
    name: Annotated[Optional[str], typer.Option(help="Job name, used in frame file names (default: the scene's file name).")] = None,
    timeout: Annotated[Optional[str], typer.Option(help="Seconds a task may render before it is killed and retried (default: FARM_TASK_TIMEOUT).")] = None,
    tiles: Annotated[Optional[str], typer.Option(help="Split each frame into C columns by R rows of tiles, e.g. 2x2, 4x4.")] = None,
    tile_size: Annotated[Optional[str], typer.Option(help="Or split each frame into tiles of at most PX by PX pixels.")] = None,
    format_: Annotated[str, typer.Option("--format", help="Output format: png (8-bit), png16 (16-bit PNG) or exr (float RGBA).")] = "png",
    keep_tiles: Annotated[bool, typer.Option("--keep-tiles", help="Keep a tiled frame's tiles after it is assembled.")] = False,
    max_workers: Annotated[Optional[str], typer.Option(help="Render on at most N workers at once.")] = None,
    after: Annotated[Optional[str], typer.Option(help="Start only once this job (id or prefix) is done.")] = None,
    frame_by_frame: Annotated[bool, typer.Option("--frame-by-frame", help="With --after: start each frame once that job's same frame is done, not the whole job.")] = False,
    first_last: Annotated[bool, typer.Option("--first-last", help="Render the first, middle and last frames before the rest.")] = False,
    site: Annotated[Optional[str], typer.Option(help="Render only at this site (a [sites.NAME] of farm.toml).")] = None,
    prefer: Annotated[Optional[str], typer.Option(help="cheapest: the cheapest site with idle workers first; with --deadline, cheapest or greenest may wait for a cheaper (greener) band while the deadline still holds; fastest never waits.")] = None,
    deadline: Annotated[Optional[str], typer.Option(help="When the job must be done, e.g. 2026-12-06T09:00 (local time unless a zone is given): flagged late when it cannot be.")] = None,
    require: Annotated[Optional[list[str]], typer.Option("--require", help="Render only on workers with this tag (farm-worker --tag); repeat for several.")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="WxH instead of the scene's own resolution (blender).")] = None,
    samples: Annotated[Optional[str], typer.Option(help="Samples per pixel instead of the scene's own (blender).")] = None,
    allow_scripts: Annotated[bool, typer.Option("--allow-scripts", help="Let the .blend's auto-run scripts and drivers run (off by default).")] = False,
    blender_version: Annotated[Optional[str], typer.Option(help="Render only on workers with this Blender, e.g. 4.2 (default: the version that saved the .blend).")] = None,
    notify: Annotated[Optional[str], typer.Option(help="Also POST to this http(s) URL when the job ends or a task fails for good (signed like FARM_WEBHOOK_URL's).")] = None,
    request_id: Annotated[Optional[str], typer.Option(help="Send again a submission the manager did not answer in time (the id it printed): never makes a second job.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to finish, showing progress.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Submit a shot: split its frames into tasks and queue them on the farm. An OpenJD job
    template or bundle becomes one task per task of each of its steps."""
    from renderfarm.errors import InputError
    from renderfarm.openjd import is_template_path

    settings = _settings()
    if is_template_path(Path(scene)):
        from renderfarm.jobtemplates import TemplateSubmission, submit_template

        scene_only = {"--frames": frames, "--renderer": renderer, "--tiles": tiles, "--tile-size": tile_size,
                      "--resolution": resolution, "--samples": samples, "--blender-version": blender_version,
                      "--frame-by-frame": frame_by_frame or None, "--first-last": first_last or None,
                      "--keep-tiles": keep_tiles or None, "--allow-scripts": allow_scripts or None,
                      "--chunk": None if chunk == "1" else chunk, "--format": None if format_ == "png" else format_}
        given = next((flag for flag, value in scene_only.items() if value is not None), None)
        if given is not None:
            raise InputError(f"{given.lstrip('-')}: an OpenJD template's steps say what to run; {given} is for scenes")
        job_id = submit_template(settings, TemplateSubmission(
            Path(scene), tuple(param or ()), priority=priority, pool=pool, name=name, timeout=timeout,
            max_workers=max_workers, after=after, site=site, prefer=prefer, deadline=deadline,
            requires=tuple(require or ()), notify=notify), request_id=request_id, warn=note)
    else:
        if param:
            raise InputError("param: -p NAME=VALUE is for OpenJD job templates and bundles")
        from renderfarm.client import Submission
        from renderfarm.client import submit as submit_shot

        sub = Submission(scene=scene, frames=frames, chunk=chunk, renderer=renderer, priority=priority, pool=pool,
                         name=name, timeout=timeout, tiles=tiles, tile_size=tile_size, format=format_,
                         keep_tiles=keep_tiles, max_workers=max_workers, after=after, first_last=first_last,
                         frame_by_frame=frame_by_frame, site=site, prefer=prefer, deadline=deadline,
                         requires=tuple(require or ()), resolution=resolution, samples=samples,
                         allow_scripts=allow_scripts, renderer_version=blender_version,
                         notify=notify)
        job_id = submit_shot(settings, sub, request_id=request_id, warn=note)
    _report_submitted(settings, job_id, wait, json_)


def _report_submitted(settings, job_id: str, wait: bool, json_: bool) -> None:
    status = _status_of(settings, job_id)
    if wait:
        from renderfarm_cli.progress import follow_job

        if not json_:
            out().print(f"submitted job [bold]{job_id}[/] ({work_text(status)})")
        status = follow_job(settings, job_id, f"job {job_id}")
    if json_:
        print_json(status.to_json())
    elif not wait:
        out().print(f"submitted job [bold]{job_id}[/] ({work_text(status)})")
    if wait and status.state != "done":
        raise typer.Exit(1)


def work_text(s) -> str:
    """What a job renders: `15 frames in 15 tasks`, or an OpenJD job's `2 steps, 13 tasks`."""
    if s.steps:
        return f"{counted(len(s.steps), 'step')}, {counted(s.tasks, 'task')}"
    return f"{counted(s.frames, 'frame')} in {counted(s.tasks, 'task')}"


def _status_of(settings, job_id: str):
    """A job's status through the fast read path (plain SQL: `farm status` must answer at once)."""
    from renderfarm.errors import NotFoundError
    from renderfarm.quickread import QuickReader

    reader = QuickReader.open(settings)
    if reader is None:
        raise NotFoundError(f"job {job_id!r}: no such job (no job was ever submitted here)")
    try:
        return reader.job_status(job_id)
    finally:
        reader.close()


def quick_note(settings) -> None:
    """Say on stderr when the farm (or its manager) is not running, asking Redis over a bare socket."""
    from renderfarm.redisconn import NOT_RUNNING_HINT, probe

    reachable, manager = probe(settings)
    if not reachable:
        note(f"the farm is not running (showing the database only); {NOT_RUNNING_HINT}")
    elif not manager:
        note(f"the farm's manager is not running; {NOT_RUNNING_HINT}")


def jobs(
    limit: Annotated[int, typer.Option(help="Show at most this many jobs, newest first.")] = 50,
    all_: Annotated[bool, typer.Option("--all", help="Archived jobs too.")] = False,
    json_: JsonOpt = False,
) -> None:
    """List jobs, newest first, with their progress (archived ones with --all)."""
    from renderfarm.quickread import QuickReader

    settings = _settings()
    reader = QuickReader.open(settings)
    rows = []
    if reader is not None:
        try:
            rows = reader.list_jobs(limit, archived=all_)
        finally:
            reader.close()
    quick_note(settings)
    if json_:
        print_json([r.to_json() for r in rows])
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("JOB", "NAME", "OWNER", "STATE", "PRI", "FRAMES", "DONE", "ELAPSED", "ETA", "SUBMITTED"):
        table.add_column(col, justify="right" if col in ("PRI", "FRAMES", "DONE") else "left")
    for s in rows:
        table.add_row(
            s.id, s.name, s.owner, state_text(shown_state(s)) + (" (archived)" if s.archived_at else ""),
            str(s.priority),
            work_text(s) if s.steps else str(s.frames), f"{s.progress:.0%}",
            duration(s.elapsed), duration(s.eta), age(s.submitted_at),
        )
    out().print(table if rows else "no jobs yet")
    for s in [s for s in rows if s.blocked]:  # why, for each: the table has no room for it
        out().print(f"job {s.id} {after_line(s)}", markup=False)


def shown_state(s) -> str:
    """A job's state as listings show it: why a queued job does not start, when it cannot."""
    if s.blocked:
        return "blocked"
    if s.waiting_on:
        return "waiting"
    if s.held_until is not None:
        return "held"  # for a cheaper (greener) band, its deadline still met
    if (s.plan or "").startswith("late"):
        return "late"
    return "unschedulable" if s.unschedulable else s.state


def after_line(s) -> str | None:
    """What a job's --after job means for it now, in words (None when it no longer matters)."""
    if s.blocked and s.frame_by_frame:
        return (f"blocked: {s.blocked}; this job's frames not done there start once {s.after} is retried "
                f"(`farm retry {s.after}`) and renders them")
    if s.blocked:
        return (f"blocked: {s.blocked}; this job starts once {s.after} is retried "
                f"(`farm retry {s.after}`) and done")
    if s.waiting_on and s.frame_by_frame:
        return f"following job {s.after} ({s.after_state}) frame by frame: each frame starts once its own is done"
    if s.waiting_on:
        return f"waiting on job {s.after} ({s.after_state}): this job starts once it is done"
    return None


def status(
    job: Annotated[Optional[str], typer.Argument(help="Job id or prefix (default: the whole farm).", show_default=False)] = None,
    json_: JsonOpt = False,
) -> None:
    """Show a job's progress (tasks by state, elapsed, ETA), or the farm's."""
    settings = _settings()
    if job is None:
        return _farm_status(settings, json_)
    s = _status_of(settings, job)
    quick_note(settings)
    if json_:
        print_json(s.to_json())
        return
    renderer = s.renderer + (f" {s.renderer_version}" if s.renderer_version else "")
    out().print(f"[bold]job {s.id}[/] {s.name} ({s.owner}), priority {s.priority}, pool {s.pool}, renderer {renderer}")
    out().print("  state     ", state_text(s.state), sep="")
    if s.steps:  # an OpenJD job: steps and tasks, not frames
        out().print(f"  steps     {work_text(s)}")
        out().print(f"  progress  {s.progress:.1%}  ({s.frames_done}/{counted(s.tasks, 'task')} done)")
    else:
        out().print(f"  frames    {s.frames_spec} = {counted(s.frames, 'frame')} in {counted(s.tasks, 'task')} "
                    f"of up to {s.chunk}, {s.width}x{s.height}")
        out().print(f"  progress  {s.progress:.1%}  ({s.frames_done}/{counted(s.frames, 'frame')} done)")
    counts = ", ".join(f"{n} {state}" for state, n in s.counts.items() if n)
    out().print(f"  tasks     {counts or 'none'}")
    for step in s.steps:
        from rich.markup import escape

        out().print(f"  step      {escape(step_line(step))}")
    out().print(f"  elapsed   {duration(s.elapsed)}   ETA {duration(s.eta)}")
    if after_line(s):
        from rich.markup import escape

        out().print(f"  after     {'[warn]' if s.blocked else ''}{escape(after_line(s))}{'[/]' if s.blocked else ''}")
    if s.requires:
        out().print(f"  requires  {', '.join(s.requires)}")
    if s.max_failed_tasks is not None:
        out().print(f"  failures  {failures_line(s)}")
    if s.unschedulable:
        from rich.markup import escape

        out().print(f"  [error]unschedulable[/]: {escape(s.unschedulable)}; it waits until such a worker joins")
    if s.deadline is not None:
        from rich.markup import escape

        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.deadline))
        late = (s.plan or "").startswith("late")
        out().print(f"  deadline  {when}" + (f"; {'[error]' if late else ''}{escape(s.plan)}{'[/]' if late else ''}"
                                             if s.plan else ""))
    if s.cost:
        so_far = ", ".join(f"{v:.4f} {c}".strip() for c, v in s.cost.items())
        projected = ", ".join(f"{v:.4f} {c}".strip() for c, v in s.projected_cost.items()) or "-"
        out().print(f"  cost      {so_far} so far, {projected} projected")
    if s.error:
        out().print(f"  error     [error]{s.error}[/]")


def failures_line(s) -> str:
    """`the job fails once 5 tasks have failed (1 so far)`: its deadline:maxFailedTasksCount."""
    limit = max(1, s.max_failed_tasks)  # as the lifecycle counts it: a limit of 0 fails at the first
    return f"the job fails once {counted(limit, 'task')} {'has' if limit == 1 else 'have'} failed " \
           f"({s.counts.get('failed', 0)} so far)"


def step_line(step) -> str:
    """`Sheet: 4/10 tasks done, 2 running, 4 pending (52.0%); waits for Render; status: page 5`"""
    others = ", ".join(f"{n} {state}" for state, n in step.counts.items() if state != "done")
    text = f"{step.name}: {step.done}/{counted(step.tasks, 'task')} done{', ' + others if others else ''} " \
           f"({step.progress:.1%})"
    if step.waiting_on:
        text += f"; waits for {', '.join(step.waiting_on)}"
    if step.status:
        text += f"; status: {step.status}"
    return text


def _farm_status(settings, json_: bool) -> None:
    from renderfarm.localfarm.health import farm_health
    from renderfarm.status import list_jobs, list_workers

    live, life = _farm_state(settings)
    reader = _read(settings)
    jobs_, workers_ = [], []
    if reader is not None:
        with reader as session:
            jobs_ = list_jobs(session, 1000)
            workers_ = list_workers(session, live)
    active = [j for j in jobs_ if j.state in ("queued", "running")]
    local = farm_health(settings.state_dir)
    doc = {
        "running": life is not None and life.running,
        "redis": live is not None,
        "manager": life.to_json() if life else None,
        "local_farm": local.to_json() if local else None,
        "workers": {"live": len(live or {}), "known": len(workers_)},
        "jobs": {state: sum(1 for j in jobs_ if j.state == state) for state in ("queued", "running", "done", "failed", "cancelled")},
        "active": [j.to_json() for j in active],
    }
    if json_:
        print_json(doc)
        return
    state = "[ok]running[/]" if doc["running"] else "[warn]not running[/]"
    if live is not None and not doc["running"]:
        state = "[warn]manager not running[/]"  # Redis answers; a dead manager's lock does not count
    out().print(f"farm {state}, {counted(len(live or {}), 'live worker')}")
    if life is not None:
        from rich.markup import escape

        restarts = f"; local farm restarts: {local.restarts}" if local and local.restarts else ""
        out().print(f"  {escape(life.describe())}{restarts}")
    out().print("jobs: " + ", ".join(f"{n} {state}" for state, n in doc["jobs"].items() if n) if jobs_ else "jobs: none")
    for j in active:
        why = f" ({after_line(j)})" if j.waiting_on else ""
        size = work_text(j) if j.steps else counted(j.frames, 'frame')
        out().print(f"  {j.id} {j.name}: {j.progress:.0%} of {size}, {shown_state(j)}, "
                    f"ETA {duration(j.eta)}{why}", markup=False)


def tasks(
    job: JobArg,
    state: Annotated[Optional[str], typer.Option(help="Only tasks in this state (pending, queued, running, done, failed, cancelled).")] = None,
    json_: JsonOpt = False,
) -> None:
    """List a job's tasks with their frames, state and the worker of each attempt."""
    from renderfarm.status import list_tasks, resolve_job

    settings = _settings()
    with _job_session(settings, job) as session:
        rows = list_tasks(session, resolve_job(session, job), state)
    if json_:
        print_json([r.to_json() for r in rows])
        return
    from rich.table import Table

    tiled = any(t.kind in ("tile", "assemble") for t in rows)  # a tile or an assembly: say which, and where
    openjd = any(t.step is not None for t in rows)  # an OpenJD task: its step, and its status text
    table = Table(box=None, header_style="bold")
    for col in ("TASK", *(("KIND",) if tiled else ()), *(("STEP",) if openjd else ()),
                "PARAMETERS" if openjd else "FRAMES",
                *(("REGION",) if tiled else ()), "STATE", "WORKER", "ATTEMPTS", "TIME",
                *(("STATUS",) if openjd else ()), "ERROR"):
        table.add_column(col)
    for t in rows:
        took = (t.finished_at - t.started_at) if t.finished_at and t.started_at else None
        tries = ", ".join(f"{a['number']}:{a['worker']}:{a['state']}" for a in t.attempts) or "-"
        placed = ((t.what(),), (t.region_text(),)) if tiled else ((), ())
        step = ((t.step or "-",), ((t.status_text or "")[:40],)) if openjd else ((), ())
        what = " ".join(f"{k}={v['value']}" for k, v in (t.parameters or {}).items()) or t.frames
        table.add_row(t.id, *placed[0], *step[0], what if openjd else t.frames, *placed[1], state_text(t.state), t.worker or "-",
                      tries, duration(took), *step[1], (t.error or "")[:60])
    out().print(table if rows else "no tasks")


def workers(json_: JsonOpt = False) -> None:
    """List workers: name, host, pid, pool, state, current task, last heartbeat, what each can do."""
    from renderfarm.states import HELD, WORKER_SLEEPING
    from renderfarm.status import list_workers

    settings = _settings()
    live = farm_state_note(settings)
    reader = _read(settings)
    rows = []
    if reader is not None:
        with reader as session:
            rows = list_workers(session, live)
    if json_:
        print_json([r.to_json() for r in rows])
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    from renderfarm.capabilities import describe

    for col in ("WORKER", "HOST", "PID", "POOL", "STATE", "TASK", "HEARTBEAT", "CAN DO"):
        table.add_column(col)
    now = time.time()
    for w in rows:
        state = state_text(w.state)
        if w.hold and w.state in WORKER_SLEEPING:  # its hold holds once awake
            state.append(f", {HELD[w.hold]}")
        table.add_row(w.name, w.host, str(w.pid), w.pool, state, w.current_task or "-",
                      age(w.last_heartbeat, now), f"{w.cores} cores; {describe(w.capabilities)}")
    out().print(table if rows else "no workers yet")


def download(
    job: JobArg,
    dest: Annotated[str, typer.Argument(help="Directory to put the frames in.", show_default=False)],
    tiles: Annotated[bool, typer.Option("--tiles", help="Download the job's kept tiles (submitted with --keep-tiles) instead, as DEST/NAME.FRAME/TILE.EXT.")] = False,
) -> None:
    """Download a job's finished frames into DEST, each checked against its SHA-256 (an OpenJD
    job's output files, as DEST/<their path>). Exits 0 only when every one arrived intact;
    anything else stored beside them is skipped."""
    from renderfarm.downloads import download as fetch
    from renderfarm.errors import InputError, NotFoundError, VerificationError
    from renderfarm.status import resolve_job
    from renderfarm_cli.progress import Progress

    settings = _settings()
    with _job_session(settings, job) as session:
        found = resolve_job(session, job)
        job_id, tiled, kept, openjd = found.id, bool(found.tiles), found.keep_tiles, bool(found.openjd_template)
    if tiles and not tiled:
        raise InputError(f"tiles: job {job_id} is not tiled (it was submitted without --tiles or --tile-size)")
    what, unit = ("tiles", "tile") if tiles else ("files", "file") if openjd else ("frames", "frame")
    progress: dict[str, Progress] = {}

    def on_progress(i: int, total: int, name: str) -> None:
        if "p" not in progress:
            progress["p"] = Progress(f"download {job_id}", total, what).__enter__()
        progress["p"].update(i, name, force=i == total)

    target = _path("dest", dest)
    try:
        result = fetch(settings, job_id, target, on_progress, tiles=tiles)
    finally:
        if "p" in progress:
            progress["p"].__exit__(None, None, None)
    _report_skipped(job_id, what, result.skipped)
    if result.not_rendered:
        from renderfarm.frames import format_frames

        note(f"job {job_id}: {counted(len(result.not_rendered), 'frame')} skipped (`farm task skip`), never "
             f"rendered: {format_frames(result.not_rendered)}")
    for line in result.failed:
        note(one_line(f"not downloaded: {line}"))
    if tiles and not result.paths and not result.failed:
        why = "none are stored yet" if kept else "its tiles are deleted once each frame is assembled (submit with --keep-tiles to keep them)"
        raise NotFoundError(f"tiles: job {job_id} has no tiles in storage: {why}")
    out().print(f"{counted(len(result.paths), unit)} in {dest}")
    if result.failed:
        raise VerificationError(f"download: {counted(len(result.failed), unit)} of job {job_id} did not arrive intact")
    if result.missing and not tiles:  # tiles of assembled frames are deleted: none is missing
        n = len(result.missing)
        shown = ", ".join(result.missing[:3]) + (", ..." if n > 3 else "")
        raise NotFoundError(f"download: {n} of job {job_id}'s {counted(result.expected, unit)} "
                            f"{'is' if n == 1 else 'are'} not in storage (not rendered yet, or failed): {shown}")


SKIPPED_SHOWN = 10  # skipped objects named one a line; beyond that, a count


def _report_skipped(job_id: str, what: str, keys: list[str]) -> None:
    """Objects beside a job's outputs are none of its outputs: say so on stderr, the stored key
    shown escaped (it is anybody's text)."""
    for key in keys[:SKIPPED_SHOWN]:
        shown = key if len(key) <= 200 else key[:200] + "..."
        note(f"skipped {shown!r}: not one of job {job_id}'s {what}")
    if len(keys) > SKIPPED_SHOWN:
        note(f"skipped {len(keys) - SKIPPED_SHOWN} more objects that are not job {job_id}'s {what}")


def log(
    task: Annotated[str, typer.Argument(help="Task id JOB:INDEX, optionally /ATTEMPT (default: the latest attempt).", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow a running attempt's output as it comes.")] = False,
) -> None:
    """Print the stored renderer log of a task's attempt (or follow a running one)."""
    import sys

    from renderfarm.client import follow_task_log, read_task_log

    settings = _settings()
    if follow:
        follow_task_log(settings, task, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        return
    with _job_session(settings, task.split(":")[0]) as session:
        text = read_task_log(settings, session, task)
    out().file.write(text if text.endswith("\n") else text + "\n")


def report(
    job: Annotated[Optional[str], typer.Argument(help="Job id, or a unique prefix of one (none: the farm's idle power per site).", show_default=False)] = None,
    png: Annotated[Optional[str], typer.Option("--png", help="Also draw a chart: cost per frame by site, and the running total.")] = None,
    json_: JsonOpt = False,
) -> None:
    """What a job cost: time, energy, money and CO2 per frame, per site, per worker and in total.
    Without a job: what idle nodes drew per site, and what sleeping them (FARM_SLEEP_AFTER) saved."""
    from renderfarm.report import job_report
    from renderfarm.status import resolve_job

    settings = _settings()
    if job is None:
        return _idle_report(settings, json_)
    with _job_session(settings, job) as session:
        result = job_report(session, resolve_job(session, job), settings.sites)
    if png is not None:
        from renderfarm.charts import cost_chart
        from renderfarm.errors import InputError

        png = _path("png", png)
        if png.suffix.lower() != ".png":
            raise InputError(f"png: {str(png)[:100]!r} must end in .png")
        try:
            cost_chart(result, png)
        except OSError as e:
            raise InputError(f"png: cannot write {str(png)[:100]!r} ({e.strerror})") from None
    if json_:
        print_json(result.to_json())
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("", "ATTEMPTS", "WALL", "CPU", "ENERGY kWh", "COST", "CO2 kg"):
        table.add_column(col, justify="left" if not col else "right")

    def row(label: str, usage) -> None:
        doc = usage.to_json()
        cost = ", ".join(f"{v:.6g} {c}".strip() for c, v in doc["cost"].items()) or "-"
        table.add_row(label, str(doc["attempts"]), duration(doc["wall_seconds"]), duration(doc["cpu_seconds"]),
                      f"{doc['energy_kwh']:.6f}", cost, f"{doc['co2_kg']:.6f}")

    for name, usage in result.by_site.items():
        row(f"site {name}", usage)
    for name, usage in result.by_worker.items():
        row(f"worker {name}", usage)
    row("total", result.total)
    out().print(f"[bold]job {result.job_id}[/] {result.name} ({result.state})")
    out().print(table)
    if png is not None:
        out().print(f"chart in {png}")
