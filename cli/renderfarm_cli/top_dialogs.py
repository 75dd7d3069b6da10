"""`farm top`'s dialogs: the cancel confirmation, the priority input and the job settings form
(modal screens, built on first use: Textual is slow to import)."""

from __future__ import annotations

from functools import cache

from renderfarm_cli.top_view import styled


@cache
def dialogs():
    """The cancel confirmation, the priority input and the settings form (modal screens)."""
    from textual.app import ComposeResult
    from textual.binding import Binding
    from textual.containers import Vertical
    from textual.screen import ModalScreen
    from textual.widgets import Input, Label, Static

    class Confirm(ModalScreen[bool]):
        """A yes/no question: only y says yes (a stray Enter must not cancel a shot); n or Escape says no."""

        BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

        def __init__(self, question: str) -> None:
            super().__init__()
            self.question = question

        def compose(self) -> ComposeResult:
            with Vertical(classes="dialog"):
                yield Static(self.question, id="question", markup=False)
                yield Label("[b]y[/b] yes   [b]n[/b] no", classes="hint")

        def action_answer(self, yes: bool) -> None:
            self.dismiss(yes)

    class AskPriority(ModalScreen[int | None]):
        """A job's new priority, 0-100: the digits typed replace the current one; Enter sets it,
        Escape leaves it as it is. The field is the screen's own (its keys are the screen's
        bindings), not a focused Input: keys typed right after `p` are still on their way to the
        jobs table when this opens, and only bindings of the screen on top reach them."""

        BINDINGS = [
            Binding("escape", "dismiss(None)", "Back"),
            Binding("enter", "submit", "Set"),
            Binding("backspace", "erase", "Erase", show=False),
            *(Binding(str(d), f"digit('{d}')", str(d), show=False) for d in range(10)),
        ]
        DIGITS = 3

        def __init__(self, job_id: str, current: int) -> None:
            super().__init__()
            self.job_id = job_id
            self.value, self.fresh = str(current), True  # fresh: the first digit replaces it

        def compose(self) -> ComposeResult:
            with Vertical(classes="dialog"):
                yield Label(f"Priority of job {self.job_id} (0-100, higher renders first):")
                yield Static("", id="priority")
                yield Label("Enter to set, Escape to leave it", classes="hint", id="priority-hint")

        def on_mount(self) -> None:
            self.show_value()

        def action_digit(self, digit: str) -> None:
            if self.fresh:
                self.value, self.fresh = "", False
            if len(self.value) < self.DIGITS:
                self.value += digit
            self.show_value()

        def action_erase(self) -> None:
            self.value, self.fresh = self.value[:-1], False
            self.show_value()

        def action_submit(self) -> None:
            from renderfarm.errors import InputError
            from renderfarm.planning import check_priority

            try:
                self.dismiss(check_priority(self.value))
            except InputError as e:
                self.query_one("#priority-hint", Label).update(styled(str(e), "error"))

        def show_value(self) -> None:
            from rich.text import Text

            if not self.is_mounted:
                return
            field = Text(" ")
            field.append(self.value, style="reverse" if self.fresh else "bold")
            if not self.fresh:
                field.append("▏", style="blink")
            self.query_one("#priority", Static).update(field)

    class AskSettings(ModalScreen[dict | None]):
        """`farm set` for one job: each field left empty stays as it is. Enter in any field sets
        what was typed (checked as `farm set` checks it), Escape leaves the job alone."""

        BINDINGS = [Binding("escape", "dismiss(None)", "Back")]
        FIELDS = (("timeout", "Timeout (s)"), ("max_workers", "Max workers (0: no cap)"), ("retries", "Retries"),
                  ("pool", "Pool"), ("requires", "Require tags (a,b; - for none)"))

        def __init__(self, job_id: str) -> None:
            super().__init__()
            self.job_id = job_id

        def compose(self) -> ComposeResult:
            with Vertical(classes="dialog"):
                yield Label(f"Settings of job {self.job_id} (empty: unchanged; running tasks keep theirs):")
                for name, label in self.FIELDS:
                    yield Input(placeholder=label, id=f"set-{name}")
                yield Label("Tab: next field · Enter to set, Escape to leave it", classes="hint", id="set-hint")

        def on_input_submitted(self, event: Input.Submitted) -> None:
            import json

            from renderfarm.capabilities import check_tags
            from renderfarm.client import cli_number
            from renderfarm.errors import InputError
            from renderfarm.wire import SetIntent

            typed = {name: self.query_one(f"#set-{name}", Input).value.strip() for name, _ in self.FIELDS}
            body = {"timeout": cli_number(typed["timeout"], real=True), "max_workers": cli_number(typed["max_workers"]),
                    "retries": cli_number(typed["retries"]), "pool": typed["pool"]}
            try:
                if typed["requires"]:
                    body["requires"] = [] if typed["requires"] == "-" else list(check_tags(typed["requires"]))
                body = {k: v for k, v in body.items() if v not in (None, "")}
                SetIntent.parse(json.dumps({"request_id": "0" * 32, "job": "00000000", **body}))
            except InputError as e:
                self.query_one("#set-hint", Label).update(styled(str(e), "error"))
                return
            self.dismiss(body)

    return Confirm, AskPriority, AskSettings
