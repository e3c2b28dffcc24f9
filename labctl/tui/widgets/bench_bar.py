"""The top line: which bench, how it is reached, and what it is doing, in words."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from labctl.tui.model import BenchView

STATE_STYLE = {
    "running": "bold", "paused": "bold reverse", "pausing": "bold", "stopping": "bold reverse",
    "held": "bold reverse", "failed": "bold reverse", "aborted": "bold reverse",
}


class BenchBar(Static):
    """`labctl │ sim-bench-1 local simulated │ RUNNING │ connected`"""

    def show(self, view: BenchView) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" labctl ", style="bold reverse")
        t.append(f" {view.bench_id or '?'} ", style="bold")
        sim = " simulated" if view.simulated else ""
        t.append(f"{view.mode}{sim} ")
        t.append("│ bench ")
        t.append(view.state.upper(), style=STATE_STYLE.get(view.state, "bold"))
        if view.state == "held":
            t.append(" (after e-stop: r releases the queue)")
        t.append(" │ ")
        if view.connected:
            t.append(view.connection)
        else:
            t.append(f"NOT CONNECTED: {view.connection}", style="bold reverse")
        self.update(t)
