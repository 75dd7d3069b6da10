"""The `farm` command: the Typer app, its command list, and the one place errors become exit codes."""

from __future__ import annotations

import sys

import typer
import typer.core

from renderfarm_cli import (
    doctor_commands,
    farm_commands,
    job_commands,
    node_commands,
    preview_commands,
    top,
    wrangle_commands,
)

# Typer 0.19 escapes the brackets of `[default: 1]` and `[required]` for Rich whenever Rich is
# installed, even with rich_markup_mode=None, so plain help showed `\[required]` (later Typers
# escape only for Rich help). Our help is plain: Typer need not know Rich is there.
typer.core.HAS_RICH = False

app = typer.Typer(
    name="farm",
    help="renderfarm: submit shots, watch them render, and run the farm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: importing Rich would double `farm --help`'s start-up time
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an unexpected error."),
) -> None:
    """renderfarm: submit shots, watch them render, and run the farm."""
    if ctx.invoked_subcommand not in ("up", "down") and not {"-h", "--help"} & set(sys.argv[1:]):
        farm_commands.note_other_farm()  # a shell pointed at another farm than the running one


# The command line contract (DESIGN.md): names here are what scripts rely on.
app.command("up")(farm_commands.up)
app.command("down")(farm_commands.down)
app.command("demo")(farm_commands.demo)
app.command("env")(farm_commands.env)
app.command("config")(farm_commands.config)
app.command("manager")(farm_commands.manager)
app.command("doctor")(doctor_commands.doctor)
app.command("dead-letters")(doctor_commands.dead_letters)
app.command("submit")(job_commands.submit)
app.command("jobs")(job_commands.jobs)
app.command("top")(top.top)
app.command("status")(job_commands.status)
app.command("tasks")(job_commands.tasks)
app.command("workers")(job_commands.workers)
app.command("download")(job_commands.download)
app.command("log")(job_commands.log)
app.command("report")(job_commands.report)
app.command("cancel")(wrangle_commands.cancel)
app.command("suspend")(wrangle_commands.suspend)
app.command("resume")(wrangle_commands.resume)
app.command("retry")(wrangle_commands.retry)
app.command("priority")(wrangle_commands.priority)
app.command("set")(wrangle_commands.set_)
app.command("delete")(wrangle_commands.delete)
app.command("archive")(wrangle_commands.archive)
app.command("contact-sheet")(preview_commands.contact_sheet)
app.command("movie")(preview_commands.movie)

node = typer.Typer(help="Render nodes: enroll them, list them, revoke them.", no_args_is_help=True)
node.command("add")(node_commands.add)
node.command("list")(node_commands.list_)
node.command("revoke")(node_commands.revoke)
app.add_typer(node, name="node")

task = typer.Typer(help="Tasks: kill, retry or skip some of a job's.", no_args_is_help=True)
task.command("kill")(wrangle_commands.task_kill)
task.command("retry")(wrangle_commands.task_retry)
task.command("skip")(wrangle_commands.task_skip)
app.add_typer(task, name="task")

worker = typer.Typer(help="Workers: drain, disable or enable one.", no_args_is_help=True)
worker.command("drain")(wrangle_commands.drain)
worker.command("disable")(wrangle_commands.disable)
worker.command("enable")(wrangle_commands.enable)
app.add_typer(worker, name="worker")

db = typer.Typer(help="Database maintenance.", no_args_is_help=True)
db.command("upgrade")(farm_commands.db_upgrade)
app.add_typer(db, name="db")


def main() -> None:
    """Entry point: run the app; a RenderFarmError or a usage error is one red line and exit 1."""
    try:  # Typer >= 0.22 carries its own copy of Click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click import ClickException

    from renderfarm_cli.console import error_line

    debug = "--debug" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        error_line("aborted")
        code = 130
    except ClickException as e:
        hint = f" (see `farm {e.ctx.info_name} --help`)" if getattr(e, "ctx", None) and e.ctx.parent else ""
        error_line(f"{e.format_message()}{hint}")
        code = 2
    except KeyboardInterrupt:
        error_line("interrupted")
        code = 130
    except Exception as e:
        from renderfarm.errors import RenderFarmError

        if debug:
            raise
        if isinstance(e, RenderFarmError):
            error_line(str(e))
        else:
            error_line(f"unexpected error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
