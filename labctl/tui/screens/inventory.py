"""The bench's inventory: what each reservoir and dispenser head holds, its lot and refill
date, and a refill form (vessel, amount with its unit, lot). The bench decides whether the
operator may refill (over MQTT: operators only) and refuses bad input, shown inline."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from labctl.problems import BenchError
from labctl.tui.backend import BenchBackend


def levels_text(doc: dict[str, Any]) -> Text:
    t = Text()
    t.append(f"{'holding':<14}{'material':<10}{'amount':>12}  {'lot':<16}refilled\n",
             style="bold")
    for lv in doc.get("levels") or []:
        when = str(lv.get("lot_date") or "-")[:16]
        t.append(f"{lv['holding']:<14}{lv['material']:<10}{lv['amount']:>9.4g} "
                 f"{lv['unit']:<2}  {lv.get('lot') or '-':<16}{when}\n")
    return t


class InventoryScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "refill", "Refill"),
        Binding("e", "app.estop", "E-STOP"),  # e-stop works over every dialog
    ]

    def __init__(self, backend: BenchBackend):
        super().__init__()
        self.backend = backend

    def compose(self) -> ComposeResult:
        with Vertical(id="inventory-box", classes="dialog"):
            yield Static("Inventory  (Ctrl+S refill, Esc close)", classes="dialog-title")
            yield Static("loading…", id="inventory-levels")
            with Horizontal(id="inventory-form"):
                yield Input(placeholder="vessel", id="inv-vessel")
                yield Input(placeholder="amount, e.g. 100 mL", id="inv-amount")
                yield Input(placeholder="lot", id="inv-lot")
            yield Static("", id="inventory-error")

    def on_mount(self) -> None:
        self._load("show", {})

    @work(group="inventory", exclusive=True)
    async def _load(self, action: str, change: dict[str, Any]) -> None:
        err = self.query_one("#inventory-error", Static)
        try:
            doc = await self.backend.inventory(action, **change)
        except BenchError as exc:
            err.update(Text(exc.message, style="reverse"))
            return
        err.update("refilled" if action == "refill" else "")
        self.query_one("#inventory-levels", Static).update(levels_text(doc))

    def action_refill(self) -> None:
        vessel = self.query_one("#inv-vessel", Input).value.strip()
        amount = self.query_one("#inv-amount", Input).value.strip()
        lot = self.query_one("#inv-lot", Input).value.strip() or None
        if not vessel or not amount:
            self.query_one("#inventory-error", Static).update(
                Text("a refill needs a vessel and an amount", style="reverse"))
            return
        self._load("refill", {"vessel": vessel, "amount": amount, "lot": lot})

    def action_close(self) -> None:
        self.dismiss(None)
