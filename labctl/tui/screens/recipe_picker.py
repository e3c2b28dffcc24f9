"""Pick a recipe file of the recipe folder (arrows and Enter, or a click)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from labctl.tui.backend import RecipeEntry


def _label(e: RecipeEntry) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(e.path.name, style="bold")
    t.append(f"  {e.name}")
    if e.error:
        t.append(f"  UNREADABLE: {e.error}", style="reverse")
    elif e.description:
        t.append(f"  {e.description}", style="dim")
    return t


class RecipePickerScreen(ModalScreen[RecipeEntry | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("e", "app.estop", "E-STOP"),  # e-stop works over every dialog
    ]

    def __init__(self, folder: str, entries: list[RecipeEntry]):
        super().__init__()
        self.folder = folder
        self.entries = entries

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="dialog"):
            yield Static(f"Start a recipe from {self.folder}/  (Enter to choose, Esc to cancel)",
                         classes="dialog-title")
            if self.entries:
                yield OptionList(*[Option(_label(e), id=str(i))
                                   for i, e in enumerate(self.entries)], id="recipe-list")
            else:
                yield Static(f"no *.json recipes in {self.folder}/", id="recipe-none")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        entry = self.entries[int(event.option.id or 0)]
        if entry.error:
            self.notify(f"{entry.path.name} is unreadable: {entry.error}", severity="error")
            return
        self.dismiss(entry)

    def action_cancel(self) -> None:
        self.dismiss(None)
