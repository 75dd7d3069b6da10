"""`farm top`'s dialogs: the cancel confirmation and the priority input (modal screens, built on
first use: Textual is slow to import)."""

from __future__ import annotations

from functools import cache

from renderfarm_cli.top_view import styled


@cache
def dialogs():
    """The cancel confirmation and the priority input (modal screens)."""
    from textual.app import ComposeResult
    from textual.binding import Binding
    from textual.containers import Vertical
    from textual.screen import ModalScreen
    from textual.widgets import Label, Static

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

    return Confirm, AskPriority
