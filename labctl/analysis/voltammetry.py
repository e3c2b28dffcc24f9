"""Electrochemical stability window from linear sweeps (pure functions).

The anodic limit is the first potential, on a sweep of rising potential, where the current
density exceeds +threshold; the cathodic limit the first potential, on a falling sweep,
where it goes below −threshold (shared/formats.md). Both are interpolated between the two
bracketing points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _first_crossing(e: np.ndarray, j: np.ndarray, threshold: float, sign: float
                    ) -> float | None:
    direction = np.sign(np.diff(e))
    for k in range(1, len(e)):
        if direction[k - 1] != sign:
            continue
        if sign * j[k] > threshold:
            prev = sign * j[k - 1]
            if prev >= threshold or direction[k - 1] == 0:
                return float(e[k])
            frac = (threshold - prev) / (sign * j[k] - prev)
            return float(e[k - 1] + frac * (e[k] - e[k - 1]))
    return None


def onset_potential(potential_v: np.ndarray, current_a: np.ndarray, area_m2: float,
                    threshold_a_m2: float, direction: str) -> float | None:
    """First potential where |j| exceeds the threshold on an "anodic" (rising) or
    "cathodic" (falling) sweep; None when it never does."""
    e = np.asarray(potential_v, dtype=float)
    i = np.asarray(current_a, dtype=float)
    ok = np.isfinite(e) & np.isfinite(i)
    e, i = e[ok], i[ok]
    if len(e) < 2:
        return None
    sign = 1.0 if direction == "anodic" else -1.0
    return _first_crossing(e, i / area_m2, threshold_a_m2, sign)


MIN_SPAN_V = 0.01  # a "sweep" over less than this is not one


def check_sweep(potential_v: np.ndarray, current_a: np.ndarray, area_m2: float,
                threshold_a_m2: float, direction: str) -> str | None:
    """Why this data cannot give an onset in `direction` (None when it can): no finite
    points, no sweep in that direction, or a current already beyond the threshold at the
    sweep's first point (a short circuit, or a start outside the window)."""
    e = np.asarray(potential_v, dtype=float)
    i = np.asarray(current_a, dtype=float)
    ok = np.isfinite(e) & np.isfinite(i)
    e, i = e[ok], i[ok]
    if len(e) < 2:
        return f"{len(e)} finite points: nothing to analyse (was the cell switched on?)"
    sign = 1.0 if direction == "anodic" else -1.0
    moving = np.sign(np.diff(e)) == sign
    if not moving.any() or float(np.ptp(e)) < MIN_SPAN_V:
        word = "rises" if sign > 0 else "falls"
        return (f"the potential never {word} by {MIN_SPAN_V * 1000:g} mV: not an {direction} "
                "sweep")
    first = int(np.argmax(moving))  # the point the first sweep in this direction starts at
    if sign * i[first] / area_m2 > threshold_a_m2:
        return (f"the current density is beyond the threshold at the sweep's start "
                f"({e[first]:.3g} V): a short circuit, or the sweep starts outside the window")
    return None


def scan_rate_v_s(time_s: np.ndarray, potential_v: np.ndarray) -> float:
    """Median |dE/dt| of a sweep."""
    t, e = np.asarray(time_s, dtype=float), np.asarray(potential_v, dtype=float)
    dt, de = np.diff(t), np.diff(e)
    ok = dt > 0
    return float(np.median(np.abs(de[ok] / dt[ok]))) if ok.any() else float("nan")


@dataclass(frozen=True)
class Window:
    e_ox_v: float | None
    e_red_v: float | None

    @property
    def width_v(self) -> float | None:
        if self.e_ox_v is None or self.e_red_v is None:
            return None
        return self.e_ox_v - self.e_red_v
