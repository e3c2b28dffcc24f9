"""Tables for a terminal that fit 80 columns, and values with the units people use.

Tables use a light box (no vertical rules, the columns get the room), never cut an id (ids
are copied into the next command) and fold long text instead of cutting it. Values come
from labctl.display (mL/µL, `0.5 C`, `1 mAh`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from labctl.display import UNIT_LABELS, quantity, reading, short_time, unit_symbol

__all__ = ["UNIT_LABELS", "console", "fit_ids", "quantity", "reading", "short_time", "table",
           "unit_symbol"]

def table(title: str | None, *columns: str, ids: tuple[str, ...] = ()) -> Table:
    """A table that fits the terminal: light box, long text folds onto more lines; columns
    named in `ids` (ids, names, short words) never wrap (an id must stay copyable)."""
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
              title_justify="left")
    for col in columns:
        if col in ids:
            t.add_column(col, no_wrap=True, overflow="ignore")
        else:
            t.add_column(col, overflow="fold")
    return t


def fit_ids(t: Table, rows: Sequence[Sequence[Any]], ids: tuple[int, ...] = ()) -> None:
    """Add the rows, giving the no-wrap columns the width of their longest value (so rich
    shrinks the others)."""
    for i in ids or tuple(i for i, c in enumerate(t.columns) if c.no_wrap):
        header = t.columns[i].header
        width = max([len(header) if isinstance(header, str) else 0]
                    + [max(map(len, str(r[i]).splitlines() or [""])) for r in rows])
        t.columns[i].min_width = width
    for r in rows:
        t.add_row(*r)


def console() -> Console:
    """A console of the terminal's width (COLUMNS when set, as rich reads it)."""
    return Console()
