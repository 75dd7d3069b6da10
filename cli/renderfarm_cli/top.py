"""`farm top`: the wranglers' terminal view of the farm, with keys to steer its jobs.

The screens are Textual classes defined inside builder functions: the CLI imports this module at
start-up, and importing Textual (~250 ms, Rich with it) there would slow down every `farm --help`.
The data comes from renderfarm.dashboard; the formatters are plain functions in top_view, the
dialogs are in top_dialogs.
"""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING

from renderfarm_cli.console import counted
from renderfarm_cli.top_dialogs import dialogs
from renderfarm_cli.top_view import (
    WORKER_COLUMNS,
    activity_text,
    cost_story,
    error_text,
    failures_text,
    job_cells,
    job_columns,
    job_story,
    keyed_table_class,
    styled,
    summary_text,
    task_cells,
    task_columns,
    worker_cells,
)

if TYPE_CHECKING:
    from rich.text import Text
    from textual.app import App

    from renderfarm.config import Settings
    from renderfarm.dashboard import Snapshot

REFRESH = 1.0  # seconds between snapshots of the farm
TASKS_REFRESH = 2.0  # a job's task list costs more to read
MESSAGE_SECONDS = 8.0  # how long a verb's answer stays in the status line


def top() -> None:
    """Watch and steer the farm in a terminal UI: jobs, workers, queues, throughput, failures."""
    import sys

    from renderfarm.config import load_settings
    from renderfarm.errors import InputError

    # Without a terminal the app would draw escape codes into a file or pipe (Textual draws on
    # stderr), and wait for keys that never come, until it is killed.
    for name, stream in (("input", sys.stdin), ("output", sys.stdout), ("error output", sys.stderr)):
        if stream is None or not stream.isatty():
            raise InputError(f"top: its {name} is not a terminal (`farm top` is interactive; "
                             "`farm jobs --json` and `farm status --json` serve scripts)")
    farm_top(load_settings()).run()


def farm_top(settings: Settings) -> App:
    """The `farm top` app for the farm these settings point at (not started)."""
    return _app_class()(settings)


@cache
def _job_screens():
    """A job's tasks, and a task's log."""
    import asyncio

    from textual import events
    from textual.app import ComposeResult
    from textual.binding import Binding
    from textual.screen import Screen
    from textual.widgets import DataTable, Footer, Log, Static

    class TaskLog(Screen):
        """The stored renderer log of a task's latest attempt (or a running one's output so far)."""

        BINDINGS = [Binding("escape,q", "app.pop_screen", "Back"), Binding("r", "reload", "Reload")]

        def __init__(self, dashboard, task_ref: str) -> None:
            super().__init__()
            self.dashboard, self.task_ref = dashboard, task_ref

        def compose(self) -> ComposeResult:
            yield Static(f" log of task {self.task_ref}", classes="title")
            yield Log(id="log", highlight=False)
            yield Static("", id="status")
            yield Footer()

        async def on_mount(self) -> None:
            await self.action_reload()

        async def action_reload(self) -> None:
            log, status = self.query_one("#log", Log), self.query_one("#status", Static)
            try:
                text = await asyncio.to_thread(self.dashboard.task_log, self.task_ref)
            except Exception as e:  # a status line, never a traceback
                status.update(styled(" " + error_text(e), "error"))
                return
            log.clear()
            log.write(text)
            read = time.strftime("%H:%M:%S")
            status.update(styled(f" {counted(len(text.splitlines()), 'line')}, read {read} · r reads it again", "dim"))

    class JobTasks(Screen):
        """A job's tasks, refreshed in place; Enter opens the selected task's log."""

        BINDINGS = [
            Binding("escape", "app.pop_screen", "Back"),
            Binding("l", "open_log", "Log"),
            Binding("f", "toggle_failed", "Failed only"),
            Binding("k", "task('kill')", "Kill"),
            Binding("r", "task('retry')", "Retry"),
            Binding("s", "task('skip')", "Skip"),
        ]

        def __init__(self, dashboard, job_id: str) -> None:
            super().__init__()
            self.dashboard, self.job_id = dashboard, job_id
            self.only_failed = False
            self.reading = False  # not `loading`: that is Textual's, and covers the screen with a spinner
            self.next_read = 0.0  # monotonic time before which a timer tick reads nothing
            self.message = None  # (when, text): a verb's answer, kept over reloads as on the jobs screen
            self.read_at = "-"  # when the list was last read

        def compose(self) -> ComposeResult:
            yield Static(f" tasks of job {self.job_id}", id="title", classes="title")
            yield keyed_table_class()(task_columns(self.app.size.width), id="tasks", cursor_type="row",
                                      zebra_stripes=True)
            yield Static("", id="status")
            yield Footer()

        def on_resize(self, event: events.Resize) -> None:
            self.query_one("#tasks", DataTable).set_columns(task_columns(event.size.width))

        async def on_mount(self) -> None:
            self.set_interval(TASKS_REFRESH, self.tick)
            await self.reload()

        async def tick(self) -> None:
            if time.monotonic() >= self.next_read:
                await self.reload()

        async def reload(self) -> None:
            if self.reading:
                return
            self.reading = True
            state = "failed" if self.only_failed else None
            started = time.monotonic()
            try:
                rows = await asyncio.to_thread(self.dashboard.tasks, self.job_id, state=state)
            except Exception as e:  # whatever it is, a status line and not a traceback
                self.query_one("#status", Static).update(styled(" " + error_text(e), "error"))
                return
            finally:
                self.reading = False
                # A job of many tasks is slow to read: read it less often rather than all the time.
                self.next_read = time.monotonic() + 4 * (time.monotonic() - started)
            now = time.time()
            self.query_one("#tasks", DataTable).sync([(t.id, task_cells(t, now)) for t in rows])
            which = "failed task(s)" if self.only_failed else "task(s)"
            self.query_one("#title", Static).update(f" {len(rows)} {which} of job {self.job_id}")
            self.read_at = time.strftime("%H:%M:%S")
            self.show_status()

        def say(self, message: str, *, error: bool = False) -> None:
            self.message = (time.monotonic(), styled(" " + message, "error" if error else "ok"))
            self.show_status()

        def show_status(self) -> None:
            """A verb's answer for MESSAGE_SECONDS (a reload must not wipe a refusal at once), else
            when the list was read and the keys."""
            if self.message and time.monotonic() - self.message[0] < MESSAGE_SECONDS:
                text = self.message[1]
            else:
                text = styled(f" read {self.read_at} · Enter or l opens a task's log · "
                              "k kill, r retry, s skip it", "dim")
            self.query_one("#status", Static).update(text)

        def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
            key = event.data_table.id_at(event.cursor_row)
            if key is not None:
                self.app.push_screen(TaskLog(self.dashboard, key))

        def action_open_log(self) -> None:
            key = self.query_one("#tasks", DataTable).selected_id()
            if key is not None:
                self.app.push_screen(TaskLog(self.dashboard, key))

        async def action_toggle_failed(self) -> None:
            self.only_failed = not self.only_failed
            await self.reload()

        def action_task(self, action: str) -> None:
            """Kill, retry or skip the task under the cursor (the manager applies it)."""
            key = self.query_one("#tasks", DataTable).selected_id()
            if key is None:
                return
            self.message = (time.monotonic(), styled(f" task {key}: {action}…", "dim"))
            self.show_status()
            self.run_worker(self._send_task(action, key), group="verbs")

        async def _send_task(self, action: str, key: str) -> None:
            from renderfarm.client import task_verb

            try:
                await asyncio.to_thread(task_verb, self.dashboard.settings, action, [key])
            except Exception as e:
                self.say(error_text(e), error=True)
                return
            self.say(f"task {key}: {action} applied")
            await self.reload()

    return JobTasks, TaskLog


@cache
def _farm_screen():
    """The main screen: jobs, workers, throughput, failures, and the verbs on the selected job."""
    import asyncio

    from textual import events
    from textual.app import ComposeResult
    from textual.binding import Binding
    from textual.screen import Screen
    from textual.widgets import DataTable, Footer, Static

    KeyedTable = keyed_table_class()
    Confirm, AskPriority, AskSettings = dialogs()
    JobTasks, _TaskLog = _job_screens()

    class Farm(Screen):
        BINDINGS = [
            Binding("s", "verb('suspend')", "Suspend"),
            Binding("S", "verb('suspend', True)", "Suspend+kill", show=False),
            Binding("r", "verb('resume')", "Resume"),
            Binding("f", "verb('retry')", "Retry"),
            Binding("p", "priority", "Priority"),
            Binding("o", "settings", "Settings"),
            Binding("c", "cancel", "Cancel"),
            Binding("x", "delete", "Delete"),
            Binding("a", "remove('archive')", "Archive"),
            Binding("enter", "open_tasks", "Tasks"),
            Binding("d", "hold('drain')", "Drain worker"),
            Binding("D", "hold('disable')", "Disable worker", show=False),
            Binding("e", "hold('enable')", "Enable worker", show=False),
        ]

        def __init__(self, dashboard) -> None:
            super().__init__()
            self.dashboard = dashboard
            self.snap: Snapshot | None = None
            self.reading = False  # not `loading`: that is Textual's, and covers the screen with a spinner
            self.message: tuple[float, Text] | None = None

        def compose(self) -> ComposeResult:
            yield Static(" reading the farm…", id="summary")
            yield KeyedTable(job_columns(self.app.size.width), id="jobs", cursor_type="row", zebra_stripes=True)
            # Tab moves between the tables: the job keys act on the job under the jobs' cursor,
            # the worker keys (d, D, e) on the worker under the workers' cursor.
            yield KeyedTable(WORKER_COLUMNS, id="workers", cursor_type="row")
            yield Static("", id="activity")
            yield Static("", id="failures")
            yield Static("", id="status")
            yield Footer()

        def on_resize(self, event: events.Resize) -> None:
            self.query_one("#jobs", DataTable).set_columns(job_columns(event.size.width))

        async def on_mount(self) -> None:
            self.query_one("#jobs", DataTable).focus()
            self.timer = self.set_interval(REFRESH, self.reload)
            await self.reload()

        async def on_screen_resume(self) -> None:
            # Another screen covered this one: read the farm again at once, then every second.
            if hasattr(self, "timer"):
                self.timer.resume()
                await self.reload()

        def on_screen_suspend(self) -> None:
            if hasattr(self, "timer"):
                self.timer.pause()

        async def reload(self) -> None:
            """Read a snapshot in a thread (a slow database or Redis never blocks the keys) and
            show it; an error keeps the last snapshot on screen and says what went wrong."""
            if self.reading:
                return
            self.reading = True
            try:
                snap = await asyncio.to_thread(self.dashboard.snapshot)
            except Exception as e:  # whatever it is, a status line and not a traceback
                self.say(error_text(e), error=True)
                return
            finally:
                self.reading = False
            self.snap = snap
            self.show(snap)

        def show(self, snap: Snapshot) -> None:
            from renderfarm.localfarm.health import restart_summary

            summary, restarts = summary_text(snap), restart_summary(self.dashboard.settings.state_dir)
            summary.append(f" · {restarts}" if restarts else "", "yellow")  # the local farm's restarts
            self.query_one("#summary", Static).update(summary)
            self.query_one("#jobs", DataTable).sync([(j.id, job_cells(j)) for j in snap.jobs])
            self.query_one("#workers", DataTable).sync([(w.name, worker_cells(w)) for w in snap.workers])
            self.query_one("#activity", Static).update(activity_text(snap))
            self.query_one("#failures", Static).update(failures_text(snap))
            self.query_one("#failures", Static).display = bool(snap.failures)
            self.show_status()

        def say(self, message: str, *, error: bool = False) -> None:
            self.message = (time.monotonic(), styled(" " + message, "error" if error else "ok"))
            self.show_status()

        def show_status(self) -> None:
            if self.message and time.monotonic() - self.message[0] < MESSAGE_SECONDS:
                text = self.message[1]
            elif self.snap and self.snap.notes:
                text = styled(" " + self.snap.notes[0], "warn")
            elif (job := self.highlighted()) is not None and (story := job_story(job)):
                text = styled(" " + story, "warn")
            elif (job := self.highlighted()) is not None and (spent := cost_story(job)):
                text = styled(" " + spent, "dim")
            elif self.snap and not self.snap.jobs:
                text = styled(" no jobs yet: `farm submit SCENE` queues one", "dim")
            else:
                text = styled(" ↑↓ select a job · Enter: its tasks · Tab: the workers (d drain, D disable, e enable)"
                              " · ?: all keys", "dim")
            self.query_one("#status", Static).update(text)

        def highlighted(self):
            """The job under the cursor, or None."""
            key = self.query_one("#jobs", DataTable).selected_id()
            return next((j for j in (self.snap.jobs if self.snap else []) if j.id == key), None)

        def selected(self):
            """The selected job's row, or None (saying so)."""
            job = self.highlighted()
            if job is None:
                self.say("no job selected", error=True)
            return job

        def action_hold(self, hold: str) -> None:
            """Drain, disable or enable the worker under the workers' cursor."""
            workers = self.query_one("#workers", DataTable)
            name = workers.selected_id() if workers.has_focus else None
            if name is None:
                self.say("no worker selected: Tab moves to the workers", error=True)
                return
            self.say(f"worker {name}: {hold}…")
            self.run_worker(self._hold(name, hold), group="verbs")

        async def _hold(self, name: str, hold: str) -> None:
            from renderfarm.client import hold_worker

            try:
                reply = await asyncio.to_thread(hold_worker, self.dashboard.settings, name, hold)
            except Exception as e:
                self.say(error_text(e), error=True)
                return
            self.say(f"worker {name}: {hold} applied; now {reply.state}")
            await self.reload()

        def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
            if event.data_table.id == "jobs":
                self.show_status()

        def action_verb(self, verb: str, kill: bool = False) -> None:
            job = self.selected()
            if job is None:
                return
            body = {"kill": kill} if verb == "suspend" else {"all": False} if verb == "retry" else {}
            self.send(verb, job.id, **body)

        def action_priority(self) -> None:
            job = self.selected()
            if job is None:
                return

            def chosen(value: int | None) -> None:
                if value is not None:
                    self.send("priority", job.id, priority=value)

            self.app.push_screen(AskPriority(job.id, job.priority), chosen)

        def action_settings(self) -> None:
            job = self.selected()
            if job is None:
                return

            def chosen(body: dict | None) -> None:
                if body:
                    self.send("set", job.id, **body)

            self.app.push_screen(AskSettings(job.id), chosen)

        def action_cancel(self) -> None:
            job = self.selected()
            if job is None:
                return
            if job.steps:  # an OpenJD job has tasks, not frames
                left = counted(job.tasks - job.counts.get("done", 0), "task")
            else:
                left = counted(job.frames - job.frames_done, "frame")
            question = (f"Cancel job {job.id} ({job.name}, {job.owner}), {left} not done?\n"
                        "Queued work is dropped and running renders are killed.")

            def answered(yes: bool | None) -> None:
                if yes:
                    self.send("cancel", job.id)

            self.app.push_screen(Confirm(question), answered)

        def action_delete(self) -> None:
            from renderfarm.states import JOB_FINAL

            job = self.selected()
            if job is None:
                return
            running = job.state not in {s.value for s in JOB_FINAL}
            question = (f"{'Cancel and delete' if running else 'Delete'} job {job.id} ({job.name}, {job.owner})?\n"
                        "Its records and every file of it in storage, frames included, are deleted.")

            def answered(yes: bool | None) -> None:
                if yes:
                    self.action_remove("delete", cancel=running)

            self.app.push_screen(Confirm(question), answered)

        def action_remove(self, verb: str, cancel: bool = False) -> None:
            """Delete (after its dialog) or archive the selected job."""
            job = self.selected()
            if job is None:
                return
            self.say(f"job {job.id}: {verb}…")
            self.run_worker(self._remove(verb, job.id, cancel), group="verbs")

        async def _remove(self, verb: str, job_id: str, cancel: bool) -> None:
            from renderfarm.client import remove_jobs

            try:
                [reply] = await asyncio.to_thread(remove_jobs, self.dashboard.settings, verb, [job_id], cancel=cancel)
            except Exception as e:
                self.say(error_text(e), error=True)
                return
            done = "deleted" if verb == "delete" else "archived"
            self.say(f"job {reply.job_id}: {done}" if reply.changed else f"job {reply.job_id}: already {done}")
            await self.reload()

        def action_open_tasks(self) -> None:
            job = self.selected()
            if job is not None:
                self.app.push_screen(JobTasks(self.dashboard, job.id))

        def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
            key = event.data_table.id_at(event.cursor_row)
            if event.data_table.id == "jobs" and key is not None:
                self.app.push_screen(JobTasks(self.dashboard, key))

        def send(self, verb: str, job_id: str, **body) -> None:
            """Hand a verb to the manager without blocking the keys; its answer goes to the status line."""
            self.say(f"job {job_id}: {verb}…")
            self.run_worker(self._send(verb, job_id, body), group="verbs")

        async def _send(self, verb: str, job_id: str, body: dict) -> None:
            from renderfarm.client import send_verb

            try:
                reply = await asyncio.to_thread(send_verb, self.dashboard.settings, verb, job_id, **body)
            except Exception as e:
                self.say(error_text(e), error=True)
                return
            extra = f", priority {reply.priority}" if verb == "priority" else ""
            self.say(f"job {reply.job_id}: {verb} applied; now {reply.state}{extra}")
            await self.reload()

    return Farm


TOP_CSS = """
Screen { layout: vertical; }
#summary, .title { height: 1; background: $panel; }
#jobs { height: 1fr; min-height: 4; scrollbar-size-vertical: 1; }
#workers { height: auto; max-height: 6; scrollbar-size-vertical: 1; }
#activity { height: 1; background: $panel; }
#failures { height: auto; max-height: 3; text-wrap: nowrap; text-overflow: ellipsis; }
#status { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
#tasks { height: 1fr; scrollbar-size-vertical: 1; }
#log { height: 1fr; }
ModalScreen { align: center middle; }
.dialog { width: 64; height: auto; border: thick $accent; background: $surface; padding: 0 1; }
.hint { color: $text-muted; }
"""


@cache
def _app_class():
    from textual.app import App
    from textual.binding import Binding

    from renderfarm.dashboard import Dashboard

    Farm = _farm_screen()

    class FarmTop(App):
        """`farm top`."""

        TITLE = "farm top"
        ENABLE_COMMAND_PALETTE = False  # its footer entry would not fit 80 columns; ? lists the keys
        CSS = TOP_CSS
        BINDINGS = [Binding("q", "quit", "Quit"), Binding("question_mark", "toggle_keys", "Keys")]

        def __init__(self, settings: Settings) -> None:
            super().__init__()
            self.dashboard = Dashboard(settings)

        def on_mount(self) -> None:
            self.push_screen(Farm(self.dashboard))

        def on_unmount(self) -> None:
            self.dashboard.close()

        def action_toggle_keys(self) -> None:
            if self.screen.query("HelpPanel"):
                self.action_hide_help_panel()
            else:
                self.action_show_help_panel()

        @property
        def farm(self):
            """The main screen (for tests and scripts)."""
            return next(s for s in self.screen_stack if isinstance(s, Farm))

    return FarmTop
