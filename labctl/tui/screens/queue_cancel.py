"""Pick a queued run to cancel (arrows and Enter, or a click; Esc keeps them all)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from labctl.tui.model import QueueRow


def _label(q: QueueRow) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    pos = "?" if q.position is None else str(q.position)
    t.append(f"{pos:>2}. ", style="bold")
    t.append(f"{q.recipe or '?'}  {q.run_id}")
    if q.priority:
        t.append(f"  priority {q.priority}", style="dim")
    return t


class QueueCancelScreen(ModalScreen[str | None]):
    """Dismissed with the run id to cancel, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "keep", "Keep all"),
        Binding("e", "app.estop", "E-STOP"),  # e-stop works over every dialog
    ]

    def __init__(self, rows: list[QueueRow]):
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="dialog"):
            yield Static("Cancel a queued run (Enter to cancel it, Esc to keep all)",
                         classes="dialog-title")
            yield OptionList(*[Option(_label(q), id=q.run_id) for q in self.rows],
                             id="queue-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_keep(self) -> None:
        self.dismiss(None)
