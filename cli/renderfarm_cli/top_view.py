"""`farm top`'s formatting: the cells of its tables and the text of its panels, as plain functions
(testable without a terminal), and keeping a Textual DataTable in step with fresh rows."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from renderfarm_cli.console import STYLES, duration

if TYPE_CHECKING:
    from rich.text import Text

    from renderfarm.dashboard import Snapshot

SPARKS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_WIDTH = 6


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


def job_cells(j) -> dict[str, Any]:
    return {
        "id": j.id, "name": clip(j.name, 10), "owner": clip(j.owner, 8), "state": styled(j.state),
        "priority": str(j.priority), "progress": _bar_text(j.progress, j.state),
        "frames": f"{short_count(j.frames_done)}/{short_count(j.frames)}",
        # Only a running job's ETA means anything: a suspended one's would grow while it waits.
        "eta": duration(j.eta) if j.state == "running" else "-",
    }


def worker_cells(w) -> dict[str, Any]:
    return {
        "name": clip(w.name, 18), "state": styled(w.state), "task": w.current_task or "-",
        "beat": duration(w.heartbeat_age), "queued": "-" if w.queued is None else str(w.queued),
        "pool": clip(w.pool, 10),
    }


def task_cells(t, now: float) -> dict[str, Any]:
    took = None
    if t.started_at is not None:
        took = (t.finished_at or now) - t.started_at
    error = t.error.strip().splitlines()[0] if t.error and t.error.strip() else ""
    return {
        "task": str(t.index), "frames": clip(t.frames, 9), "state": styled(t.state),
        "worker": clip(t.worker or "-", 12), "tries": str(len(t.attempts)), "time": duration(took),
        "error": error,
    }


def _bar_text(progress: float, state: str) -> Text:
    from rich.text import Text

    bar = progress_bar(progress)
    colour = {"done": "green", "failed": "red", "suspended": "yellow", "cancelled": "dim"}.get(state, "blue")
    text = Text(bar[:BAR_WIDTH], style=f"{colour} on grey23")
    text.append(bar[BAR_WIDTH:])
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
    active = sum(1 for j in snap.jobs if j.state in ("queued", "running", "suspended"))
    text.append(f" · {len(live)} worker(s), {busy} busy · {active} active job(s)")
    if snap.queues is not None:
        text.append(f" · {sum(snap.queues.values())} queued")
    text.append(" · " + time.strftime("%H:%M:%S", time.localtime(snap.taken_at)), style="dim")
    return text


def activity_text(snap: Snapshot) -> Text:
    from rich.text import Text

    tp = snap.throughput
    text = Text(" done/min ")
    text.append(sparkline(tp.per_minute), style="cyan")
    text.append(f" {tp.last} now, {tp.average:.1f} avg over {len(tp.per_minute)} min")
    failed = len(snap.failures)
    text.append(" · " + ("no recent failures" if not failed else f"latest {failed} failure(s):"),
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


# -- the Textual app --------------------------------------------------------------------------


JOB_COLUMNS = [("id", "JOB", 8), ("name", "NAME", 10), ("owner", "OWNER", 8), ("state", "STATE", 9),
               ("priority", "PRI", 3), ("progress", "PROGRESS", 11), ("frames", "FRAMES", 9), ("eta", "ETA", 5)]
WORKER_COLUMNS = [("name", "WORKER", 18), ("state", "STATE", 8), ("task", "TASK", 13), ("beat", "BEAT", 5),
                  ("queued", "Q", 2), ("pool", "POOL", 10)]
TASK_COLUMNS = [("task", "TASK", 5), ("frames", "FRAMES", 9), ("state", "STATE", 9), ("worker", "WORKER", 12),
                ("tries", "TRY", 3), ("time", "TIME", 5), ("error", "ERROR", 21)]


def sync_table(table, columns, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """Make a DataTable show `rows` (key, cells) in order, in place: changed cells are updated;
    the rows are laid anew only when the keys or their order change, and the cursor stays on
    the same key (so a refresh never moves the wrangler's selection to another job)."""
    keys = [key for key, _ in rows]
    if [r.key.value for r in table.ordered_rows] == keys:
        for key, cells in rows:
            for col, _label, _width in columns:
                if not _same(table.get_cell(key, col), cells[col]):
                    table.update_cell(key, col, cells[col])
        return
    selected = selected_key(table)
    table.clear()
    for key, cells in rows:
        table.add_row(*(cells[col] for col, _label, _width in columns), key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False)


def _same(old: Any, new: Any) -> bool:
    """Whether a cell would look the same (Rich's Text compares text and spans, not its style)."""
    from rich.text import Text

    if isinstance(old, Text) and isinstance(new, Text):
        return (old.plain, str(old.style), old.spans) == (new.plain, str(new.style), new.spans)
    return old == new


def selected_key(table) -> str | None:
    """The key of the row under the table's cursor, or None for an empty table."""
    from textual.coordinate import Coordinate

    if table.row_count == 0:
        return None
    row = min(max(table.cursor_row, 0), table.row_count - 1)
    return table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value


def add_columns(table, columns) -> None:
    for key, label, width in columns:
        table.add_column(label, width=width, key=key)
