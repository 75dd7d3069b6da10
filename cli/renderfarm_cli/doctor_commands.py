"""`farm doctor`: check every part the configuration names and say how to fix what is broken."""

from __future__ import annotations

from typing import Annotated

import typer

from renderfarm_cli.console import counted, out, print_json

# The status column's words and styles (console.STYLES); a failure is written loud.
LABELS = {"ok": ("ok", "ok"), "warn": ("warn", "warn"), "fail": ("FAIL", "error")}


def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Check Redis, the database, storage and renderers, with a fix for each problem
    (exit 1 when any check fails; warnings pass)."""
    from renderfarm.doctor import CheckStatus, diagnose

    checks = diagnose()
    if json_out:
        print_json([c.as_dict() for c in checks])
    else:
        _print_table(checks)
    if any(c.status is CheckStatus.FAIL for c in checks):
        raise typer.Exit(1)


def _print_table(checks) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for col in ("PART", "STATUS", "DETAIL", "FIX"):
        table.add_column(col, overflow="fold")
    for c in checks:
        label, style = LABELS[c.status.value]
        # Text, not markup: a server's error message may hold [brackets].
        table.add_row(Text(c.part), Text(label, style=style), Text(c.detail), Text(c.fix or "", style="warn"))
    out().print(table)
    failed = sum(c.status.value == "fail" for c in checks)
    warned = sum(c.status.value == "warn" for c in checks)
    if failed or warned:
        out().print(Text(f"{failed} failed, {counted(warned, 'warning')}", style="error" if failed else "warn"))
    else:
        out().print(Text(f"all {len(checks)} checks passed", style="ok"))


def dead_letters(
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the entries the manager put aside (could not parse or apply), with the reason of each."""
    from rich.table import Table
    from rich.text import Text

    from renderfarm import streams
    from renderfarm.config import load_settings
    from renderfarm.redisconn import connect

    r = connect(load_settings())
    letters = streams.dead_letters(r, count=max(1, min(limit, streams.DEAD_LETTERS_KEPT)))
    total = streams.dead_letter_count(r)
    if json_out:
        print_json([{"id": entry_id, **letter.model_dump(mode="json")} for entry_id, letter in letters])
        return
    if not letters:
        out().print("no dead letters")
        return
    from renderfarm_cli.console import age

    table = Table(box=None, header_style="bold")
    for col in ("AGE", "SOURCE", "ENTRY", "WORKER", "REASON"):
        table.add_column(col, overflow="fold")
    for _entry_id, letter in letters:
        # Text, not markup: a dead letter holds whatever its sender wrote.
        table.add_row(age(letter.at), Text(letter.source), Text(letter.entry), Text(letter.worker or "-"),
                      Text(letter.reason))
    out().print(table)
    if total > len(letters):
        out().print(Text(f"{len(letters)} of {total} shown (--limit)", style="warn"))
