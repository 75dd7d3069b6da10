"""The wrangler's verbs: cancel, suspend, resume, retry and priority of a job; drain, disable and
enable of a worker (applied by the manager)."""

from __future__ import annotations

from typing import Annotated

import typer

from renderfarm_cli.console import out, state_text

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
