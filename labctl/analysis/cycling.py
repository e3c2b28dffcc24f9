"""Coulombic efficiency and capacity retention from galvanostatic cycling (pure functions).

Charge passed per cycle is the integral of the current over time (each point's current over
the interval it closes): Q_charge from positive, Q_discharge from negative current. Test Time
counts from the start of the test (BDF), so the first point closes the interval from 0 when
it comes at most one sampling interval after it (otherwise its interval is unknown: 0).
CE_n = Q_discharge,n / Q_charge,n × 100 %; retention_n = Q_discharge,n / Q_discharge,ref × 100 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CycleCharge:
    cycle: int
    charge_ah: float
    discharge_ah: float

    @property
    def efficiency_pct(self) -> float:
        return 100.0 * self.discharge_ah / self.charge_ah if self.charge_ah > 0 else float("nan")


def charges_per_cycle(time_s: np.ndarray, current_a: np.ndarray, cycle: np.ndarray
                      ) -> list[CycleCharge]:
    t = np.asarray(time_s, dtype=float)
    i = np.nan_to_num(np.asarray(current_a, dtype=float))
    c = np.asarray(cycle, dtype=float)
    dt = np.diff(t, prepend=t[0] if len(t) else 0.0)
    if len(t) > 1 and 0.0 < t[0] <= (t[1] - t[0]) * (1 + 1e-6):
        dt[0] = t[0]
    dq = i * dt / 3600.0
    out = []
    for n in sorted({int(x) for x in c[np.isfinite(c)]}):
        sel = c == n
        q = dq[sel]
        out.append(CycleCharge(n, float(q[q > 0].sum()), float(-q[q < 0].sum())))
    return out


MIN_SAMPLES = 3  # a charge "integrated" over fewer consecutive samples is no charge


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for m in mask:
        run = run + 1 if m else 0
        best = max(best, run)
    return best


def check_cycles(current_a: np.ndarray, cycle: np.ndarray, cycles: list[int]) -> str | None:
    """Why these cycles give no meaningful efficiency (None when they do): a cycle whose
    charge or discharge current flows for fewer than MIN_SAMPLES consecutive samples, as
    when the galvanostat meets an open circuit and every phase ends at its first point."""
    i = np.asarray(current_a, dtype=float)
    c = np.asarray(cycle, dtype=float)
    for n in cycles:
        sel = i[c == n]
        for word, mask in (("charge", sel > 0), ("discharge", sel < 0)):
            run = _longest_run(mask)
            if run < MIN_SAMPLES:
                return (f"cycle {n}: the {word} current flows for {run} consecutive sample(s) "
                        "only: no current path (open circuit: is the cell in electrolyte?) "
                        "or every phase ended at its first point")
    return None


def retention_pct(cycles: list[CycleCharge], reference_cycle: int = 1) -> dict[int, float]:
    ref = next((c.discharge_ah for c in cycles if c.cycle == reference_cycle), None)
    if not ref:
        return {}
    return {c.cycle: 100.0 * c.discharge_ah / ref for c in cycles}


def end_of_life_cycle(retention: dict[int, float], threshold_pct: float = 80.0) -> int | None:
    """The first cycle whose retention falls below the threshold (None if none does)."""
    for n in sorted(retention):
        if retention[n] < threshold_pct:
            return n
    return None
