"""The bench's events as they happen, newest at the bottom; errors marked in text too."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from labctl.tui.model import BenchView, EventLine

LEVEL = {"error": ("!!", "bold reverse"), "warning": ("! ", "bold"), "info": ("  ", "")}


def event_text(line: EventLine) -> Text:
    mark, style = LEVEL.get(line.level, LEVEL["info"])
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"{line.time} ", style="dim")
    t.append(mark + line.text, style=style)
    return t


class EventLog(RichLog):
    """Appends only the lines it has not shown yet (no redraw of the whole log)."""

    def __init__(self, **kw: object):
        super().__init__(max_lines=1000, min_width=20, wrap=False, markup=False,
                         **kw)  # type: ignore[arg-type]
        self._shown = 0

    def show(self, view: BenchView) -> None:
        new = view.events_total - self._shown
        if new <= 0:
            return
        for line in list(view.events)[-min(new, len(view.events)):]:
            self.write(event_text(line))
        self._shown = view.events_total
