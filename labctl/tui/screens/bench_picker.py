"""Every bench on the broker (from their retained online and status topics); pick one."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from labctl.tui.backend import BenchDirectory


class BenchPickerScreen(Screen[str]):
    """Dismissed with the chosen bench id."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Operate this bench", show=True)]

    def __init__(self, directory: BenchDirectory):
        super().__init__()
        self.directory = directory
        self._version = -1
        self._rows: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="benches-box"):
            yield Static(f"Benches on {self.directory.settings.url()}  "
                         "(Enter or click to operate one)", classes="dialog-title")
            yield Static("", id="benches-status")
            yield DataTable(cursor_type="row", id="benches")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#benches", DataTable)
        for c in ("bench", "online", "state", "run", "recipe", "progress"):
            table.add_column(c, key=c)
        self.set_interval(0.25, self.refresh_list)
        self.refresh_list()

    def refresh_list(self) -> None:
        d = self.directory
        if d.version == self._version:
            return
        self._version = d.version
        status = self.query_one("#benches-status", Static)
        if not d.connected:
            status.update(Text(f"NOT CONNECTED: {d.error or 'connecting…'}", style="reverse"))
        elif not d.benches:
            status.update(Text("no bench has announced itself on this broker yet",
                               style="italic"))
        else:
            status.update("")
        table = self.query_one("#benches", DataTable)
        ids = sorted(d.benches)
        if ids != self._rows:
            table.clear()
            for b in ids:
                table.add_row(*([Text("")] * 6), key=b)
            self._rows = ids
        for b in ids:
            e = d.benches[b]
            online = e.online or "?"
            table.update_cell(b, "bench", Text(b, style="bold"))
            table.update_cell(b, "online", Text(online, style="" if online == "online"
                                                else "reverse"))
            table.update_cell(b, "state", Text(str(e.state or "?")))
            table.update_cell(b, "run", Text(str(e.run_id or "")))
            table.update_cell(b, "recipe", Text(str(e.recipe or "")))
            prog = f"{100 * e.progress:.0f}%" if isinstance(e.progress, int | float) else ""
            table.update_cell(b, "progress", Text(prog))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.dismiss(str(event.row_key.value))

    def action_choose(self) -> None:
        table = self.query_one("#benches", DataTable)
        if self._rows and 0 <= table.cursor_row < len(self._rows):
            self.dismiss(self._rows[table.cursor_row])
