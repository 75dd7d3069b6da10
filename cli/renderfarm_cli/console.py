"""The CLI's consoles, styles and small formatters (durations, ages, one-line errors)."""

from __future__ import annotations

import json
import sys
import time
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# Rich is imported on first use, not at start-up: `farm --help` must stay fast.
STYLES = dict(
    {
        "error": "bold red",
        "warn": "yellow",
        "ok": "green",
        "dim": "dim",
        "queued": "cyan",
        "pending": "cyan",
        "running": "bold blue",
        "done": "green",
        "failed": "bold red",
        "cancelled": "dim",
        "skipped": "dim",  # `farm task skip`: never rendered
        "idle": "green",
        "busy": "bold blue",
        "stopping": "yellow",
        "offline": "dim",
        "asleep": "dim",  # FARM_SLEEP_AFTER: there, but takes no work until woken
        "waking": "dim",  # woken for work, not back yet
        "missing": "red",
        "draining": "yellow",  # `farm worker drain`: finishing what it has
        "drained": "magenta",
        "disabled": "magenta",
        "enabled": "green",
        "unschedulable": "yellow",
        "held": "cyan",  # its deadline plan waits for a cheaper (greener) band
        "late": "bold red",  # its deadline can no longer be met
        "waiting": "cyan",  # a job whose --after job is not done yet
        "blocked": "bold yellow",  # one whose --after job failed or was cancelled
    }
)


@cache
def out() -> Console:
    """The console for results (stdout). Not a terminal: no colours, wide lines."""
    from rich.console import Console
    from rich.theme import Theme

    return Console(theme=Theme(STYLES), highlight=False, width=None if sys.stdout.isatty() else 160)


@cache
def err() -> Console:
    """The console for errors, notes and progress (stderr)."""
    from rich.console import Console
    from rich.theme import Theme

    return Console(theme=Theme(STYLES), stderr=True, highlight=False, width=None if sys.stderr.isatty() else 400)


def one_line(text: str) -> str:
    """Control characters (a newline in a file name, say) shown escaped, so an error stays one line."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def error_line(message: str) -> None:
    """One line on stderr, never wrapped or read as markup."""
    from rich.text import Text

    err().print(Text(f"farm: {one_line(message)}", style="error"), soft_wrap=True)


def note(message: str) -> None:
    from rich.text import Text

    err().print(Text(message, style="warn"), soft_wrap=True)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def duration(seconds: float | None) -> str:
    """12s, 3m04s, 2h05m."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """1 frame, 2 frames, 0 frames: a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def age(epoch: float | None, now: float | None = None) -> str:
    if epoch is None:
        return "-"
    return duration(max(0.0, (now or time.time()) - epoch)) + " ago"


def state_text(state: str) -> Text:
    from rich.text import Text

    return Text(state, style=state if state in STYLES else "")
