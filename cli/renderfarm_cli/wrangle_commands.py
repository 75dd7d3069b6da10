"""The wrangler's verbs: cancel, suspend, resume, retry, priority, delete and archive of a job;
drain, disable and enable of a worker (applied by the manager)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from renderfarm_cli.console import out, print_json, state_text

JobArg = Annotated[str, typer.Argument(help="Job id, or a unique prefix of one.", show_default=False)]


def _verb(verb: str, job: str, **body) -> None:
    from renderfarm.client import send_verb
    from renderfarm.config import load_settings

    reply = send_verb(load_settings(), verb, job, **body)
    out().print(f"job [bold]{reply.job_id}[/]: {verb} applied; now ", state_text(reply.state),
                f", priority {reply.priority}" if verb == "priority" else "", sep="")


def cancel(job: JobArg) -> None:
    """Cancel a job: queued work is dropped and running renders are killed."""
    _verb("cancel", job)


def suspend(
    job: JobArg,
    kill: Annotated[bool, typer.Option("--kill", help="Also kill its running renders (they render again on resume).")] = False,
) -> None:
    """Suspend a job: no new task starts; running ones finish unless --kill."""
    _verb("suspend", job, kill=kill)


def resume(job: JobArg) -> None:
    """Resume a suspended job."""
    _verb("resume", job)


def retry(
    job: JobArg,
    all_: Annotated[bool, typer.Option("--all", help="Render every task again, not only the failed ones.")] = False,
) -> None:
    """Render a job's failed tasks again (each with its full number of attempts)."""
    _verb("retry", job, all=all_)


def priority(
    job: JobArg,
    value: Annotated[str, typer.Argument(metavar="N", help="0-100, higher renders first.", show_default=False)],
) -> None:
    """Change a job's priority (0-100, higher first)."""
    from renderfarm.planning import check_priority

    _verb("priority", job, priority=check_priority(value))  # a typed number, refused in its own words


def set_(
    job: JobArg,
    timeout: Annotated[Optional[str], typer.Option(help="Seconds a task may render before it is killed and retried.")] = None,
    max_workers: Annotated[Optional[str], typer.Option(help="Render on at most N workers at once (0: no cap).")] = None,
    pool: Annotated[Optional[str], typer.Option(help="Worker pool to render on.")] = None,
    require: Annotated[Optional[list[str]], typer.Option("--require", help="Render only on workers with this tag; repeat for several (replaces the job's).")] = None,
    any_worker: Annotated[bool, typer.Option("--any-worker", help="Drop the job's --require tags.")] = False,
    retries: Annotated[Optional[str], typer.Option(help="Times a failed task is tried again.")] = None,
) -> None:
    """Change a job's settings: running tasks keep those they started with, the rest get these."""
    from renderfarm.capabilities import check_tags
    from renderfarm.client import cli_number, send_verb
    from renderfarm.config import load_settings
    from renderfarm.errors import InputError
    from renderfarm.planning import slug
    from renderfarm.wire import SetIntent

    if require and any_worker:
        raise InputError("require: --require and --any-worker cannot go together")
    body = {
        "timeout": cli_number(timeout, real=True),
        "max_workers": cli_number(max_workers),
        "pool": slug(pool, "pool") if pool is not None else None,
        "requires": [] if any_worker else list(check_tags(require)) if require else None,
        "retries": cli_number(retries),
    }
    body = {k: v for k, v in body.items() if v is not None}
    SetIntent.parse(json.dumps({"request_id": "0" * 32, "job": "00000000", **body}))  # refused before the job is looked up
    reply = send_verb(load_settings(), "set", job, **body)
    out().print(f"job [bold]{reply.job_id}[/]: set applied; now ", state_text(reply.state), sep="")


JobsArg = Annotated[list[str], typer.Argument(help="Job ids, or unique prefixes of them.", show_default=False)]


def _remove(verb: str, jobs: list[str], json_: bool, **options: bool) -> None:
    from renderfarm.client import remove_jobs
    from renderfarm.config import load_settings

    replies = remove_jobs(load_settings(), verb, jobs, **options)
    if json_:
        print_json([{"job": r.job_id, "state": r.state, "changed": r.changed} for r in replies])
        return
    done = "deleted" if verb == "delete" else "archived"
    for reply in replies:
        out().print(f"job [bold]{reply.job_id}[/]: {done}" if reply.changed else
                    f"job [bold]{reply.job_id}[/]: already {done}")


def delete(
    jobs: JobsArg,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel a job that is not finished first (else it is refused).")] = False,
    keep_frames: Annotated[bool, typer.Option("--keep-frames", help="Keep the final frames in storage.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete finished jobs: their records and every object of theirs in storage (attempts,
    tiles, frames, logs), in the background; safe to repeat."""
    _remove("delete", jobs, json_, cancel=cancel, keep_frames=keep_frames)


def archive(
    jobs: JobsArg,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Archive finished jobs: hidden from `farm jobs` (`--all` lists them), their attempts'
    data deleted; their frames and logs stay."""
    _remove("archive", jobs, json_)


TasksArg = Annotated[list[str], typer.Argument(help="Tasks: JOB:INDEX, or JOB:frames=A-B for every task of those frames.",
                                               show_default=False)]


def _tasks(action: str, refs: list[str]) -> None:
    from renderfarm.client import task_verb
    from renderfarm.config import load_settings

    for reply in task_verb(load_settings(), action, refs):
        if reply.tasks:
            shown = ", ".join(f"{reply.job_id}:{i}" for i in reply.tasks[:20])
            more = f" and {len(reply.tasks) - 20} more" if len(reply.tasks) > 20 else ""
            out().print(f"task {action} applied to {shown}{more}; job now ", state_text(reply.state), sep="")


def task_kill(tasks: TasksArg) -> None:
    """Kill a task's running render: it counts as a failure and renders again (elsewhere, where
    another worker can) while the job's retries last."""
    _tasks("kill", tasks)


def task_retry(tasks: TasksArg) -> None:
    """Render finished tasks again (done, failed, cancelled or skipped), each with its full retries."""
    _tasks("retry", tasks)


def task_skip(tasks: TasksArg) -> None:
    """Skip tasks: final without rendering (their frames are recorded as skipped, never faked;
    `farm download` says which); a running render of them stops."""
    _tasks("skip", tasks)


WorkerArg = Annotated[str, typer.Argument(help="The worker's (its node's) name.", show_default=False)]


def _hold(name: str, hold: str) -> None:
    from renderfarm.client import hold_worker
    from renderfarm.config import load_settings

    reply = hold_worker(load_settings(), name, hold)
    out().print(f"worker [bold]{name}[/]: {hold} {'applied' if reply.changed else 'had nothing to do'}; now ",
                state_text(reply.state), sep="")


def drain(name: WorkerArg) -> None:
    """Drain a worker: it finishes what it renders and takes nothing new (its prefetched tasks
    render elsewhere); `draining`, then `drained`. The drain ends when the worker leaves the farm
    or with `farm worker enable`."""
    _hold(name, "drain")


def disable(name: WorkerArg) -> None:
    """Disable a worker: as a drain, but it stays disabled across its restarts until `enable`."""
    _hold(name, "disable")


def enable(name: WorkerArg) -> None:
    """Let a drained or disabled worker take work again."""
    _hold(name, "enable")
