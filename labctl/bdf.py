"""Battery Data Format (BDF) CSV: a streaming writer for measurements and a reader for
analysis (shared/formats.md).

Columns are named `Quantity / unit` with BDF's fixed units; labctl adds
`Working Electrode Potential / V` and `Applied Potential / V` (BDF has no such columns).
`Voltage / V` is the measured potential where there is one (else the applied potential);
`Current / A` is positive when anodic/charging. Which columns a file has depends on the
technique. The writer writes each point as it comes, flushes at least once a second (a timer
catches the last rows of a burst) and fsyncs on close, so a run killed at any instant leaves
a readable file with nothing held only in memory.
"""

from __future__ import annotations

import asyncio
import csv
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

TEST_TIME = "Test Time / s"
UNIX_TIME = "Unix Time / s"
RECORD_INDEX = "Record Index / 1"
VOLTAGE = "Voltage / V"
CURRENT = "Current / A"
WE_POTENTIAL = "Working Electrode Potential / V"
APPLIED_POTENTIAL = "Applied Potential / V"
CYCLE = "Cycle Count / 1"
STEP = "Step Count / 1"
STEP_TYPE = "Step Type"
CHARGE_CAPACITY = "Charging Capacity / Ah"
DISCHARGE_CAPACITY = "Discharging Capacity / Ah"
NET_CAPACITY = "Net Capacity / Ah"
FREQUENCY = "Frequency / Hz"
Z_REAL = "Real Impedance / ohm"
Z_IMAG = "Imaginary Impedance / ohm"
Z_ABS = "Absolute Impedance / ohm"
PHASE = "Phase / deg"
TEMPERATURE = "Ambient Temperature / degC"

BASE_COLUMNS = (TEST_TIME, UNIX_TIME, RECORD_INDEX, VOLTAGE, CURRENT, WE_POTENTIAL,
                APPLIED_POTENTIAL)
TECHNIQUE_COLUMNS: dict[str, tuple[str, ...]] = {
    "ocv": BASE_COLUMNS,
    "ca": BASE_COLUMNS,
    "cp": BASE_COLUMNS,
    "lsv": BASE_COLUMNS,
    "cv": (*BASE_COLUMNS, CYCLE),
    "peis": (*BASE_COLUMNS, FREQUENCY, Z_REAL, Z_IMAG, Z_ABS, PHASE),
    "gcpl": (*BASE_COLUMNS, CYCLE, STEP, STEP_TYPE, CHARGE_CAPACITY, DISCHARGE_CAPACITY,
             NET_CAPACITY),
}
#: columns kept as text by the reader
TEXT_COLUMNS = {STEP_TYPE, "Step ID"}


def columns_for(technique: Any) -> tuple[str, ...]:
    """The BDF columns of a technique (a labctl.techniques model or its name). A plugin's
    technique of another kind (a spectrum) states its own as `columns`: the time columns
    are put first."""
    own = getattr(technique, "columns", None)
    if isinstance(own, (tuple, list)) and all(isinstance(c, str) for c in own):
        return (TEST_TIME, UNIX_TIME, RECORD_INDEX,
                *(c for c in own if c not in (TEST_TIME, UNIX_TIME, RECORD_INDEX)))
    name = getattr(technique, "technique", technique)
    return TECHNIQUE_COLUMNS.get(str(name).lower(), (*BASE_COLUMNS, CYCLE, STEP))


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value))


class BdfWriter:
    """Append DataPoints (labctl.capabilities.potentiostat) to a `.bdf.csv` file."""

    def __init__(
        self,
        path: str | Path,
        technique: Any = None,
        *,
        columns: Iterable[str] | None = None,
        flush_interval_s: float = 0.5,
        start_unix_s: float | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.technique = str(getattr(technique, "technique", technique or ""))
        self.columns: tuple[str, ...] = tuple(columns) if columns else columns_for(technique)
        self.flush_interval_s = flush_interval_s
        self.start_unix_s = time.time() if start_unix_s is None else start_unix_s
        self.rows = 0
        self.overloads = 0
        self.underloads = 0
        self.flushes = 0
        self._file: TextIO | None = open(self.path, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(self.columns)
        self._file.flush()
        self._last_flush = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        # running integrals for cycling
        self._t_prev: float | None = None
        self._cycle_prev: int | None = None
        self._q_charge = self._q_discharge = self._q_net = 0.0

    # -- writing -------------------------------------------------------------------------------
    def row_for(self, point: Any) -> dict[str, Any]:
        """The column values of one point (updates the capacity integrals). A point may also
        be a mapping of column name to value (a plugin's own columns, `time_s` its time)."""
        if isinstance(point, Mapping):
            t = float(point.get("time_s", point.get(TEST_TIME, 0.0)))
            return {**{k: v for k, v in point.items() if k != "time_s"}, TEST_TIME: t,
                    UNIX_TIME: self.start_unix_s + t, RECORD_INDEX: self.rows}
        t = float(point.time_s)
        measured, applied = point.potential_v, point.applied_v
        current = point.current_a
        if current is None and self.technique == "ocv":
            current = 0.0
        row: dict[str, Any] = {
            TEST_TIME: t,
            UNIX_TIME: self.start_unix_s + t,
            RECORD_INDEX: self.rows,
            VOLTAGE: measured if measured is not None else applied,
            CURRENT: current,
            WE_POTENTIAL: measured,
            APPLIED_POTENTIAL: applied,
            CYCLE: point.cycle,
            STEP: point.step,
            STEP_TYPE: point.extra.get("step_type", ""),
            FREQUENCY: point.frequency_hz,
            Z_REAL: point.z_real_ohm,
            Z_IMAG: point.z_imag_ohm,
            Z_ABS: point.z_abs_ohm,
            PHASE: point.phase_deg,
        }
        if CHARGE_CAPACITY in self.columns:
            if self._cycle_prev is not None and point.cycle != self._cycle_prev:
                self._q_charge = self._q_discharge = 0.0
            if self._t_prev is not None and current is not None and not math.isnan(current):
                dq = current * (t - self._t_prev) / 3600.0  # Ah, the point's current over
                if dq > 0:  # the interval it closes
                    self._q_charge += dq
                else:
                    self._q_discharge -= dq
                self._q_net += dq
            self._t_prev, self._cycle_prev = t, point.cycle
            row[CHARGE_CAPACITY] = self._q_charge
            row[DISCHARGE_CAPACITY] = self._q_discharge
            row[NET_CAPACITY] = self._q_net
        return row

    def write(self, point: Any) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        row = self.row_for(point)
        out = []
        for col in self.columns:
            v = row.get(col)
            if col in TEXT_COLUMNS:
                out.append("" if v is None else str(v))
            elif col in (RECORD_INDEX, CYCLE, STEP):
                out.append(str(int(v)) if v is not None else "")
            else:
                out.append(_num(v))
        self._writer.writerow(out)
        self.rows += 1
        self.overloads += bool(getattr(point, "overload", False))
        self.underloads += bool(getattr(point, "underload", False))
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.flush_interval_s, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        if self._file is not None:
            self.flush()

    def flush(self) -> None:
        """Hand everything written so far to the operating system."""
        if self._file is None:
            return
        self._file.flush()
        self.flushes += 1
        self._last_flush = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        if self._file is None:
            return
        self.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": self.rows, "columns": list(self.columns),
                "overloads": self.overloads, "underloads": self.underloads}

    def __enter__(self) -> BdfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_writer(path: str | Path, technique: Any = None, **kwargs: Any) -> BdfWriter:
    return BdfWriter(path, technique, **kwargs)


def read_bdf(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a BDF CSV as numpy arrays (floats, NaN for empty cells; text columns as
    string arrays). Reads a file still being written (an incomplete last line is dropped)."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(header):
        cells = [r[i] for r in body]
        if name in TEXT_COLUMNS:
            out[name] = np.array(cells, dtype=str)
            continue
        try:
            out[name] = np.array([float(c) if c != "" else math.nan for c in cells], dtype=float)
        except ValueError:
            out[name] = np.array(cells, dtype=str)
    return out


def pick(columns: Mapping[str, np.ndarray], *names: str) -> np.ndarray | None:
    """The first of several column names present with at least one number."""
    for n in names:
        col = columns.get(n)
        if col is not None and col.dtype.kind == "f" and np.isfinite(col).any():
            return col
    return None
