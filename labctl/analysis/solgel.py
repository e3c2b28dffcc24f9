"""Sol-gel figures of merit from a stirrer's recorded viscosity trend.

Gel time: near the gel point a sol's viscosity diverges as eta ~ (t_gel - t)^-s (Brinker &
Scherer, *Sol-Gel Science*, 1990, ch. 5); with s ~ 1 the reciprocal relative viscosity
falls linearly and reaches zero at the gel time, so t_gel is the time-axis intercept of a
straight line through eta_0/eta(t) (the usual extrapolation of a viscosity trace). The
trend a stirrer reports is the torque change since its motor started, in %, so
eta(t)/eta(0) = 1 + trend/100 and t_gel counts from the start of the monitoring.

Film thickness: the wet film a dip coater would leave if the substrate were withdrawn at
the end of the monitoring, by the Landau-Levich relation for a Newtonian liquid at low
capillary number, h = 0.94 (eta U)^(2/3) / (gamma^(1/6) (rho g)^(1/2)) (Landau & Levich,
Acta Physicochim. URSS 17 (1942) 42; Brinker & Scherer ch. 13), with eta = eta_0 (1 +
trend/100) from the last readings.
"""

from __future__ import annotations

import numpy as np

G = 9.80665
#: a trace whose reciprocal viscosity changes by less than this shows no gelation
MIN_CHANGE = 0.01


def gel_time_s(t_s: np.ndarray, trend_pct: np.ndarray) -> tuple[float, float, int]:
    """(gel time from the first reading, R^2 of the straight line, points used). Raises
    ValueError (the reason) when the trace shows no gelation."""
    t = np.asarray(t_s, float)
    inv = 1.0 / (1.0 + np.asarray(trend_pct, float) / 100.0)
    ok = np.isfinite(t) & np.isfinite(inv)
    t, inv = t[ok], inv[ok]
    if t.size < 3:
        raise ValueError(f"{t.size} readings: at least 3 are needed")
    change = float(inv[0] - inv.min())
    if change < MIN_CHANGE:
        raise ValueError(f"the viscosity trend rose by {100 * (1 / (1 - change) - 1):.3g} % "
                         f"over {t[-1] - t[0]:.4g} s: no gelation seen (is there water "
                         f"and catalyst in the sol?)")
    slope, intercept = np.polyfit(t, inv, 1)
    if not slope < 0:
        raise ValueError("the reciprocal viscosity does not fall: no gelation seen")
    fit = slope * t + intercept
    ss = float(np.sum((inv - inv.mean()) ** 2))
    r2 = 1.0 - float(np.sum((inv - fit) ** 2)) / ss if ss > 0 else 0.0
    return float(-intercept / slope - t[0]), r2, int(t.size)


def landau_levich_m(viscosity_pa_s: float, speed_m_s: float, surface_tension_n_m: float,
                    density_kg_m3: float) -> float:
    """Wet film thickness (m) of a dip coating, Landau-Levich."""
    return float(0.94 * (viscosity_pa_s * speed_m_s) ** (2 / 3)
                 / (surface_tension_n_m ** (1 / 6) * (density_kg_m3 * G) ** 0.5))
