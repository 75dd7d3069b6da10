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
