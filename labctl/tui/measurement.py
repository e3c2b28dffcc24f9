"""Follow a measurement's BDF data file while it is written, for the live plot.

The executor's writer appends whole rows and flushes at least once a second; this reads only
what was added since the last call and never a partial last line, so a local bench's plot
follows the file without loading it again (and without touching the instrument).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from labctl import bdf
from labctl.tui.model import Measurement

MAX_READ = 1 << 20  # bytes per call: a burst is caught up over a few refreshes


def xy_columns(technique: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """Candidate x columns, y columns, and whether y is negated (-Im Z), by technique."""
    t = technique.lower()
    if t in ("cv", "lsv"):
        return (bdf.WE_POTENTIAL, bdf.VOLTAGE, bdf.APPLIED_POTENTIAL), (bdf.CURRENT,), False
    if t in ("peis", "eis", "geis"):
        return (bdf.Z_REAL,), (bdf.Z_IMAG,), True
    if t == "ca":
        return (bdf.TEST_TIME,), (bdf.CURRENT,), False
    return (bdf.TEST_TIME,), (bdf.VOLTAGE, bdf.WE_POTENTIAL), False


class BdfTail:
    """Incremental reader of one `.bdf.csv` file into a Measurement."""

    def __init__(self, path: str | Path, measurement: Measurement):
        self.path = Path(path)
        self.measurement = measurement
        self._offset = 0
        self._header: list[str] | None = None
        self._x: list[int] = []
        self._y: list[int] = []
        self._negate = False

    def poll(self) -> int:
        """Read the rows added since the last call; the number of points added."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(MAX_READ)
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0
        self._offset += end + 1
        lines = chunk[: end + 1].decode("utf-8", errors="replace").splitlines()
        added = 0
        for row in csv.reader(lines):
            if self._header is None:
                self._set_header(row)
                continue
            if self._add(row):
                added += 1
        return added

    def _set_header(self, header: list[str]) -> None:
        self._header = header
        xs, ys, self._negate = xy_columns(self.measurement.technique)
        self._x = [header.index(c) for c in xs if c in header]
        self._y = [header.index(c) for c in ys if c in header]

    def _add(self, row: list[str]) -> bool:
        x = _first_number(row, self._x)
        y = _first_number(row, self._y)
        if x is None or y is None:
            return False
        self.measurement.add(x, -y if self._negate else y)
        return True


def _first_number(row: list[str], columns: list[int]) -> float | None:
    for i in columns:
        if i < len(row) and row[i] != "":
            try:
                v = float(row[i])
            except ValueError:
                continue
            if math.isfinite(v):
                return v
    return None
