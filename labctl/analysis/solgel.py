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

`SOL_GEL` is registered through the `labctl.analyses` entry points of labctl's pyproject,
like the built-in analyses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labctl.analysis.base import AnalysisSpec, ArgSpec, Files, Refusal, fig, load
from labctl.bdf import MEDIUM_TEMPERATURE, TEST_TIME, VISCOSITY_TREND

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


def sol_gel(files: Files, *, step: str | None = None, sol_viscosity: float,
            withdrawal_speed: float, surface_tension: float, density: float
            ) -> list[dict[str, Any]]:
    """Gel time and the wet film a dip coating would leave, from a monitored sol."""
    sid, cols = load(files, step, (TEST_TIME, VISCOSITY_TREND))
    t, trend = cols[TEST_TIME], cols[VISCOSITY_TREND]
    try:
        t_gel, r2, n = gel_time_s(t, trend)
    except ValueError as exc:
        raise Refusal(f"step {sid}: {exc}", step=sid) from None
    last = trend[np.isfinite(trend)][-3:]
    eta = sol_viscosity * (1.0 + float(np.mean(last)) / 100.0)
    h = landau_levich_m(eta, withdrawal_speed, surface_tension, density)
    common: dict[str, Any] = {"step": sid, "readings": n, "monitored_s": float(np.nanmax(t))}
    temps = cols.get(MEDIUM_TEMPERATURE)
    if temps is not None and np.isfinite(temps).any():
        common["temperature_c"] = float(np.nanmean(temps))
    return [
        fig("gel_time", t_gel, "s", "time-axis intercept of a straight line through the "
            "reciprocal relative viscosity (stirrer viscosity trend), from the start of the "
            "monitoring", fit_r2=r2, **common),
        fig("gel_time_h", t_gel / 3600.0, "h", "same as gel_time", **common),
        fig("dip_viscosity", eta, "Pa*s", "sol_viscosity x (1 + trend/100), mean of the "
            "last 3 readings", **common),
        fig("wet_film_thickness", h, "m", "Landau-Levich: h = 0.94 (eta U)^(2/3) / "
            "(gamma^(1/6) (rho g)^(1/2)) at the end of the monitoring",
            withdrawal_speed_m_s=withdrawal_speed, surface_tension_n_m=surface_tension,
            density_kg_m3=density, **common),
    ]


SOL_GEL = AnalysisSpec(
    "sol_gel",
    "Gel time of a sol from a stirrer's viscosity trend, and the wet film a dip coating "
    "would leave (Landau-Levich).",
    {"step": ArgSpec(None, None, False, "step whose data file to analyse (default: the one "
                     "that has the needed columns)"),
     "sol_viscosity": ArgSpec("Pa*s", "1.5 mPa*s", False, "viscosity of the fresh sol "
                              "(the trend is relative to it)"),
     "withdrawal_speed": ArgSpec("m/s", "1 mm/s", False, "dip-coating withdrawal speed"),
     "surface_tension": ArgSpec("N/m", "22 mN/m", False, "surface tension of the sol"),
     "density": ArgSpec("kg/m^3", "0.88 g/mL", False, "density of the sol")},
    sol_gel, "", (TEST_TIME, VISCOSITY_TREND),
    (("gel_time", "s"), ("wet_film_thickness", "m")),
)
