"""`farm top`'s formatting: the cells of its tables and the text of its panels, as plain functions
(testable without a terminal), and keeping a Textual DataTable in step with fresh rows."""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING, Any

from renderfarm_cli.console import STYLES, counted, duration

if TYPE_CHECKING:
    from rich.text import Text

    from renderfarm.dashboard import Snapshot

SPARKS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_WIDTH = 6
JOB_BAR_WIDTH = 4  # the jobs table's bar: 80 columns leave no more
COST_WIDTH = 10  # an amount in 6 characters, a space and a 3-letter currency code: `12.35 CNY`


# -- formatting (plain text, testable without a terminal) ----------------------------------------


def progress_bar(progress: float, width: int = BAR_WIDTH) -> str:
    """A bar of `width` cells in eighths of a cell, and a percentage: `███    50%`."""
    progress = max(0.0, min(1.0, progress))
    full, part = divmod(int(progress * width * 8), 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width) + f" {progress:4.0%}"


def sparkline(counts: list[int]) -> str:
    """One character per count, scaled to the largest; zero is the lowest bar."""
    top_count = max(counts, default=0)
    if top_count == 0:
        return SPARKS[0] * len(counts)
    return "".join(SPARKS[min(len(SPARKS) - 1, round(n / top_count * (len(SPARKS) - 1)))] for n in counts)


def short_count(n: int) -> str:
    """12, 9999, 12k, 100k: frame counts that fit a narrow column."""
    return str(n) if n < 10_000 else f"{n // 1000}k"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def styled(text: str, style_of: str | None = None) -> Text:
    """Text in the CLI's named style for a state (running, failed...), if it has one."""
    from rich.text import Text

    key = text if style_of is None else style_of
    return Text(text, style=STYLES.get(key, ""))


def short_duration(seconds: float | None) -> str:
    """At most 5 characters: 45s, 9m59s, 59m, 9h59m, 99h, 12d, 99d+ (an ETA needs no more)."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 36_000:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s < 360_000:
        return f"{s // 3600}h"
    return f"{s // 86_400}d" if s < 100 * 86_400 else "99d+"


def money(value: float, width: int = 6) -> str:
    """An amount of a currency in at most `width` characters, with the decimals money needs: below
    1 as `farm status` shows it (0.0123, 0.0001 at 4 decimals), from 1 up in cents (12.35), whole
    once the cents do not fit (12346), then in k and M (1235k); an amount too small for the
    decimals that fit is `<.0001`, never 1e-05."""
    if value == 0:
        return "0"
    decimals = width - 2
    if value < 0.5 * 10**-decimals:
        return "<" + f"{10**-decimals:.{decimals}f}"[1:]
    if round(value, decimals) < 1:
        return f"{value:.{decimals}f}"
    for decimals in (2, 0):
        text = f"{value:.{decimals}f}"
        if len(text) <= width:
            return text
    for suffix, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        for decimals in (1, 0):
            text = f"{value / scale:.{decimals}f}{suffix}"
            if len(text) <= width:
                return text
    return "huge"


def cost_text(cost: dict[str, float], width: int = COST_WIDTH) -> str:
    """A job's cost so far for a narrow column, with its currency as `farm report` shows it
    (`12.35 CNY`): `-` where no site has a price (no currency, nothing spent), `mixed` where it was
    spent in several currencies (which do not add up; `cost_story` lists them)."""
    priced = {c: v for c, v in cost.items() if c or v}
    if not priced:
        return "-"
    if len(priced) > 1:
        return "mixed"
    ((currency, value),) = priced.items()
    return f"{money(value, max(4, width - 1 - len(currency)))} {currency}".strip()


def cost_story(j) -> str | None:
    """The highlighted job's cost in each currency, for the status line, where its cell can only
    say `mixed` (None otherwise)."""
    priced = {c: v for c, v in j.cost.items() if c or v}
    if len(priced) < 2:
        return None
    return "cost so far: " + ", ".join(f"{v:.4f} {c}".strip() for c, v in sorted(priced.items()))


def job_state(j) -> str:
    """A job's state as top shows it: why a queued job does not start, when it cannot."""
    if j.blocked:
        return "blocked"
    if j.waiting_on:
        return "waiting"
    if j.held_until is not None:
        return "held"
    return j.state


def job_story(j) -> str | None:
    """One line on what keeps the highlighted job from rendering, for the status line (None if
    nothing does)."""
    if j.blocked:
        return f"blocked: {j.blocked}; it starts once that job is retried (f) and done"
    if j.waiting_on:
        return f"waiting on job {j.after} ({j.after_state}): it starts once that job is done"
    if j.unschedulable and j.state in ("queued", "running"):
        return f"unschedulable: {j.unschedulable}"
    if j.plan and j.state in ("queued", "running"):
        return j.plan  # waiting for a band, or late
    return None


def job_cells(j) -> dict[str, Any]:
    state = job_state(j)
    return {
        "id": j.id, "name": j.name, "owner": j.owner, "state": styled(state),
        "priority": str(j.priority), "progress": _bar_text(j.progress, j.state),
        # An OpenJD job has tasks, not frames (as in `farm jobs`): its count says so.
        "frames": (f"{short_count(j.counts.get('done', 0))}/{short_count(j.tasks)} tasks" if j.steps
                   else f"{short_count(j.frames_done)}/{short_count(j.frames)}"),
        # Only a running job's ETA means anything: a suspended one's would grow while it waits.
        "eta": short_duration(j.eta) if j.state == "running" and state == "running" else "-",
        "cost": cost_text(j.cost),
    }


def worker_cells(w) -> dict[str, Any]:
    return {
        "name": w.name, "state": styled(w.state), "task": w.current_task or "-",
        "beat": duration(w.heartbeat_age), "queued": "-" if w.queued is None else str(w.queued),
        "pool": w.pool,
    }


def task_cells(t, now: float) -> dict[str, Any]:
    took = None
    if t.started_at is not None:
        took = (t.finished_at or now) - t.started_at
    error = t.error.strip().splitlines()[0] if t.error and t.error.strip() else ""
    what = t.frames if t.kind == "render" else f"{t.frames} {t.what()}"
    return {
        "task": str(t.index), "frames": what, "state": styled(t.state),
        "worker": t.worker or "-", "tries": str(len(t.attempts)), "time": short_duration(took),
        "error": error,
    }


def _bar_text(progress: float, state: str) -> Text:
    from rich.text import Text

    bar = progress_bar(progress, JOB_BAR_WIDTH)
    colour = {"done": "green", "failed": "red", "suspended": "yellow", "cancelled": "dim"}.get(state, "blue")
    text = Text(bar[:JOB_BAR_WIDTH], style=f"{colour} on grey23")
    text.append(bar[JOB_BAR_WIDTH:])
    return text


def summary_text(snap: Snapshot) -> Text:
    from rich.text import Text

    text = Text(" ")
    if not snap.farm_running:
        text.append("farm not running", style="bold red")
    elif not snap.manager_running:
        text.append("manager not running", style="bold yellow")
    else:
        text.append("farm running", style="bold green")
    live = [w for w in snap.workers if w.state not in ("offline", "missing")]
    busy = sum(1 for w in live if w.state == "busy")
    # An asleep node (FARM_SLEEP_AFTER) is there but takes no work until woken: say how many.
    asleep = sum(1 for w in live if w.state in ("asleep", "waking"))
    active = sum(1 for j in snap.jobs if j.state in ("queued", "running", "suspended"))
    text.append(f" · {counted(len(live), 'worker')}{f' ({asleep} asleep)' if asleep else ''}, {busy} busy"
                f" · {counted(active, 'active job')}")
    if snap.queues is not None:
        text.append(f" · {sum(snap.queues.values())} queued")
    if snap.dead_letters:
        text.append(f" · {snap.dead_letters} dead letter{'s' if snap.dead_letters != 1 else ''}", style="yellow")
    text.append(" · " + time.strftime("%H:%M:%S", time.localtime(snap.taken_at)), style="dim")
    return text


def activity_text(snap: Snapshot) -> Text:
    from rich.text import Text

    tp = snap.throughput
    text = Text(" done/min ")
    text.append(sparkline(tp.per_minute), style="cyan")
    text.append(f" {tp.last} now, {tp.average:.1f} avg over {len(tp.per_minute)} min")
    failed = len(snap.failures)
    text.append(" · " + ("no recent failures" if not failed else f"latest {counted(failed, 'failure')}:"),
                style="dim" if not failed else "bold red")
    return text


def failures_text(snap: Snapshot, limit: int = 3) -> Text:
    from rich.text import Text

    text = Text()
    for i, f in enumerate(snap.failures[:limit]):
        if i:
            text.append("\n")
        ago = "-" if f.finished_at is None else duration(max(0.0, snap.taken_at - f.finished_at))
        text.append(" ✗ ", style="bold red")
        text.append(f"{f.task} ", style="bold")
        text.append(f"{f.worker} {ago} ago: ", style="dim")
        text.append(f.first_line)
    return text


def error_text(e: BaseException) -> str:
    """One line for the status line: our own errors as they are, others with their type."""
    from renderfarm.errors import RenderFarmError

    if isinstance(e, RenderFarmError):
        return str(e)
    return f"unexpected error: {type(e).__name__}: {e}"


# -- the tables ---------------------------------------------------------------------------------

# (key, label, width): the width of a column's text; one space separates the columns. None: the
# column takes what the others leave (at least MIN_FLEX).
Columns = list[tuple[str, str, int]]
SCROLLBAR = 1
MIN_FLEX = 10

JOB_COLUMNS_SPEC = [("id", "JOB", 8), ("name", "NAME", None), ("owner", "OWNER", 6), ("state", "STATE", 9),
                    ("priority", "PRI", 3), ("progress", "PROGRESS", JOB_BAR_WIDTH + 5), ("frames", "FRAMES", 9),
                    ("eta", "ETA", 5), ("cost", "COST", COST_WIDTH)]
WORKER_COLUMNS = [("name", "WORKER", 18), ("state", "STATE", 8), ("task", "TASK", 13), ("beat", "BEAT", 5),
                  ("queued", "Q", 2), ("pool", "POOL", 10)]
TASK_COLUMNS_SPEC = [("task", "TASK", 5), ("frames", "FRAMES", 13), ("state", "STATE", 9),
                     ("worker", "WORKER", 12), ("tries", "TRY", 3), ("time", "TIME", 5), ("error", "ERROR", None)]


def fit_columns(spec, width: int) -> Columns:
    """The columns of `spec` for a screen `width` wide: the flexible one takes what is left after
    the others, their separating spaces and a scrollbar; OWNER grows too on wide screens."""
    extra = max(0, width - 80)
    fixed = {key: w + (min(extra // 4, 10) if key == "owner" else 0) for key, _label, w in spec if w is not None}
    left = width - SCROLLBAR - len(spec) - sum(fixed.values())
    return [(key, label, fixed.get(key, max(MIN_FLEX, left))) for key, label, _w in spec]


def job_columns(width: int) -> Columns:
    return fit_columns(JOB_COLUMNS_SPEC, width)


def task_columns(width: int) -> Columns:
    return fit_columns(TASK_COLUMNS_SPEC, width)


def fitted(value: Any, width: int) -> Any:
    """A cell's text clipped to its column (with an ellipsis) and led by the separating space."""
    from rich.text import Text

    if isinstance(value, Text):
        if value.cell_len > width:
            value = value.copy()
            value.truncate(width, overflow="ellipsis")
        return Text(" ") + value
    return " " + clip(str(value), width)


def _same(old: Any, new: Any) -> bool:
    """Whether a cell would look the same (Rich's Text compares text and spans, not its style)."""
    from rich.text import Text

    if isinstance(old, Text) and isinstance(new, Text):
        return (old.plain, str(old.style), old.spans) == (new.plain, str(new.style), new.spans)
    return old == new


@cache
def keyed_table_class():
    """KeyedTable: a DataTable refreshed in place whose cursor stays on the same id (a job, a
    worker, a task) whatever the new rows' order. (Built on first use: Textual is slow to import.)"""
    from textual.widgets import DataTable

    class KeyedTable(DataTable):
        """Rows are keyed by position and their ids kept beside them, so a refresh that re-sorts
        the rows only updates cells: the table is never cleared, its scroll stays where it was, and
        the cursor moves to wherever its id went (or stays at its place if that id is gone)."""

        def __init__(self, columns: Columns, **kwargs: Any) -> None:
            super().__init__(cell_padding=0, **kwargs)
            self.spec = columns
            self.ids: list[str] = []
            self.last: list[tuple[str, dict[str, Any]]] = []

        def on_mount(self) -> None:
            self._add_columns()

        def _add_columns(self) -> None:
            for key, label, width in self.spec:
                self.add_column(" " + label, width=width + 1, key=key)

        def set_columns(self, columns: Columns) -> None:
            """Lay the table out anew for other column widths (the terminal was resized)."""
            if columns == self.spec:
                return
            keep = self.selected_id()
            self.spec, rows = columns, self.last
            self.clear(columns=True)
            self.ids = []
            self._add_columns()
            self.sync(rows, keep=keep)

        def sync(self, rows: list[tuple[str, dict[str, Any]]], keep: str | None = None) -> None:
            """Show `rows` (id, cells by column key) in this order, changing only what changed."""
            keep = keep or self.selected_id()
            place = self.cursor_row
            self.last = rows
            while self.row_count > len(rows):
                self.remove_row(str(self.row_count - 1))
            for i, (_id, cells) in enumerate(rows):
                values = [fitted(cells[key], width) for key, _label, width in self.spec]
                if i >= self.row_count:
                    self.add_row(*values, key=str(i))
                    continue
                for (key, _label, _width), value in zip(self.spec, values):
                    if not _same(self.get_cell(str(i), key), value):
                        self.update_cell(str(i), key, value)
            self.ids = [row_id for row_id, _cells in rows]
            if not self.ids:
                return
            target = self.ids.index(keep) if keep in self.ids else min(max(place, 0), len(self.ids) - 1)
            if target != self.cursor_row:
                self.move_cursor(row=target, animate=False)

        def selected_id(self) -> str | None:
            """The id of the row under the cursor, or None for an empty table."""
            if not self.ids:
                return None
            return self.ids[min(max(self.cursor_row, 0), len(self.ids) - 1)]

        def id_at(self, row: int) -> str | None:
            return self.ids[row] if 0 <= row < len(self.ids) else None

        def cell(self, row_id: str, key: str) -> str:
            """The text a row's cell shows (without the separating space)."""
            return str(self.get_cell(str(self.ids.index(row_id)), key))[1:]

    return KeyedTable
