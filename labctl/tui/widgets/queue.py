"""Runs waiting their turn on the bench."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from labctl.tui.model import BenchView


class QueuePanel(Static):
    """One line per queued run: position, recipe (its priority when not 0), run id;
    runs running beside the one the run panel shows come first, marked ▶."""

    def show(self, view: BenchView) -> None:
        if not view.queue:
            self.update(Text("queue empty", style="dim"))
            return
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, q in enumerate(view.queue):
            if i:
                t.append("\n")
            if not q.queued:  # running beside the run shown
                t.append(f" ▶ {q.recipe or '?'}  {q.run_id}  [{q.state}]")
                continue
            pos = "?" if q.position is None else str(q.position)
            t.append(f"{pos:>2}. {q.recipe or '?'}  ")
            if q.priority:  # before the long run id, which a narrow panel cuts off
                t.append(f"priority {q.priority}  ", style="bold")
            t.append(q.run_id)
        self.update(t)
