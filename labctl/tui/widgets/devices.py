"""One row per device: state, key readings, faults highlighted, stale readings marked.

Rows are updated cell by cell (never cleared and rebuilt) so the table stays still at the
refresh rate. Everything shown in colour is also said in text: a fault row reads `✖ FAULT`,
a stale reading `idle~ (stale 12s) …`, so the panel reads the same on a monochrome terminal.
The age column says how old every reading is (the backend re-reads a device after every
change of run or step state, so a reading is never older than the last change).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

from labctl.tui.model import STALE_AFTER_S, BenchView, DeviceRow
from labctl.tui.readings import STATE_SYMBOLS, format_readings


def state_cell(row: DeviceRow, now: float, stale_after_s: float) -> Text:
    sym = STATE_SYMBOLS.get(row.state, "?")
    if row.fault or row.state in ("fault", "offline"):
        return Text(f"{sym} {row.state.upper()}", style="bold reverse")
    if row.stale(now, stale_after_s):
        return Text(f"{sym} {row.state}~", style="italic")
    return Text(f"{sym} {row.state}", style="bold" if row.state == "busy" else "")


def readings_cell(row: DeviceRow, action: str | None, now: float, stale_after_s: float) -> Text:
    line = format_readings(row.readings, action)
    if row.fault:
        return Text(f"FAULT: {row.fault}" + (f"  {line}" if line else ""), style="bold reverse")
    if row.error and not row.readings:
        return Text(f"no reading: {row.error}", style="italic")
    if row.stale(now, stale_after_s):
        age = row.age_s(now)
        why = f"stale {age:.0f}s" if age is not None else "stale"
        if row.error:
            why += f", {row.error}"
        return Text(f"({why}) {line or 'no reading yet'}", style="dim italic")
    return Text(line)


def age_cell(row: DeviceRow, now: float, stale_after_s: float) -> Text:
    """How old the reading shown is (`0s`, `42s`, `3m`, `—` for none yet): every reading
    says its age, not only the stale ones."""
    age = row.age_s(now)
    if age is None:
        return Text("—", style="dim")
    text = f"{age:.0f}s" if age < 100 else f"{age / 60:.0f}m" if age < 6000 else (
        f"{age / 3600:.0f}h")
    return Text(text, style="dim italic" if row.stale(now, stale_after_s) else "")


class DevicesPanel(DataTable[Text]):
    """The devices table; `show(view)` updates it in place."""

    def __init__(self, *, stale_after_s: float = STALE_AFTER_S, now: float | None = None,
                 **kw: object):
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)  # type: ignore[arg-type]
        self.stale_after_s = stale_after_s
        self.frozen_now = now  # snapshots: a fixed "now" makes staleness deterministic
        self._names: list[str] = []
        self._cells: dict[tuple[str, str], tuple[str, str, str]] = {}

    def on_mount(self) -> None:
        self.add_column("device", key="device")
        self.add_column("state", key="state", width=9)
        self.add_column("age", key="age", width=5)
        self.add_column("readings", key="readings")

    def show(self, view: BenchView) -> None:
        now = self.frozen_now if self.frozen_now is not None else time.time()
        names = list(view.devices)
        doing: dict[str, str] = {}
        if view.run is not None:
            for s in view.run.steps:
                if s.device and s.state in ("running", "paused", "retrying") and s.action:
                    doing[s.device] = f"[{s.action}]" if s.state == "running" else (
                        f"[{s.action} {s.state}]")
        if names != self._names:
            self.clear()
            self._cells.clear()
            for n in names:
                self.add_row(Text(n), Text(""), Text(""), Text(""), key=n)
            self._names = names
        for n in names:
            row = view.devices[n]
            self._set(n, "state", state_cell(row, now, self.stale_after_s))
            self._set(n, "age", age_cell(row, now, self.stale_after_s))
            self._set(n, "readings", readings_cell(row, doing.get(n), now, self.stale_after_s))

    def _set(self, row: str, column: str, value: Text) -> None:
        """Only cells whose text or style changed are touched (no redraw otherwise)."""
        sig = (value.plain, str(value.style), repr(value.spans))
        if self._cells.get((row, column)) != sig:
            self._cells[(row, column)] = sig
            self.update_cell(row, column, value, update_width=column == "readings")
