"""The analyses a recipe can name: `ANALYSES[name](files, **args)` → figures of merit.

`files` is `{step_id: path}` or a list of BDF paths (data/<step_id>.bdf.csv); args are
quantities with units (strings like "1.0 /cm", "25 degC") or floats already in the unit the
spec states. The result holds `figures` (each with name, value, unit, method and the
ontology IRI of formats.md where one exists) and the same figures by name.

Physically meaningless input (an open-circuit spectrum, a sweep that never sweeps, cycles
without current) is refused: `AnalysisRefused` carries the reason and the analysis's main
figures marked `"status": "failed"` with `value` None, which the executor records before the
step fails. A refusal never yields a number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labctl.analysis import cycling, eis, solgel, voltammetry
from labctl.bdf import (
    APPLIED_POTENTIAL,
    CURRENT,
    CYCLE,
    FREQUENCY,
    TEMPERATURE,
    TEST_TIME,
    VISCOSITY_TREND,
    VOLTAGE,
    WE_POTENTIAL,
    Z_IMAG,
    Z_REAL,
    pick,
    read_bdf,
)

EMMO_EC = "https://w3id.org/emmo/domain/electrochemistry#"
IRI_IONIC_CONDUCTIVITY = EMMO_EC + "electrochemistry_25dabdc2_68bf_4a38_8cbe_11be017358bc"
IRI_COULOMBIC_EFFICIENCY = EMMO_EC + "electrochemistry_a5962e05_466d_46a4_8951_bea59d7326e5"
IRI_WINDOW = EMMO_EC + "electrochemistry_129926b6_fc30_441d_b359_29b44c988514"
IRI_CYCLING = EMMO_EC + "electrochemistry_79a8802e_8296_459a_b65d_6e5c79e1bf37"

Files = Mapping[str, Any] | Sequence[Any]


class Refusal(ValueError):
    """Raised inside an analysis: this input has no meaningful figure; `details` go to the
    record."""

    def __init__(self, reason: str, **details: Any):
        super().__init__(reason)
        self.reason = reason
        self.details = details


class AnalysisRefused(ValueError):
    """An analysis refused its input: the reason, and its main figures marked failed."""

    def __init__(self, analysis: str, reason: str, failed_figures: list[dict[str, Any]]):
        super().__init__(f"{analysis} refused its input: {reason}")
        self.analysis = analysis
        self.reason = reason
        self.failed_figures = failed_figures


@dataclass(frozen=True)
class ArgSpec:
    unit: str | None = None  # None: taken as it is (text, integer)
    default: Any = None
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis: its arguments (with units) and the function computing it."""

    name: str
    description: str
    args: dict[str, ArgSpec]
    func: Callable[..., list[dict[str, Any]]]
    iri: str = ""
    columns: tuple[str, ...] = field(default_factory=tuple)
    #: (name, unit) of the figures a refusal marks failed
    main_figures: tuple[tuple[str, str], ...] = ()

    def convert(self, args: Mapping[str, Any]) -> dict[str, Any]:
        from labctl.units import to

        out: dict[str, Any] = {}
        for name, spec in self.args.items():
            value = args.get(name, spec.default)
            if value is None:
                if spec.required:
                    raise ValueError(f"{self.name}: argument {name!r} is required")
                out[name] = None
                continue
            if spec.unit is not None and isinstance(value, str):
                value = to(value, spec.unit)
            elif spec.unit is not None:
                value = float(value)
            out[name] = value
        return out

    def __call__(self, files: Files, **args: Any) -> dict[str, Any]:
        known = self.convert(args)
        try:
            figures = self.func(files, **known)
        except (Refusal, eis.SpectrumRefused) as exc:
            failed = [fig(name, None, unit, self.description, self.iri, status="failed",
                          reason=exc.reason, **exc.details)
                      for name, unit in self.main_figures]
            raise AnalysisRefused(self.name, exc.reason, failed) from exc
        return {"analysis": self.name, "figures": figures,
                **{f["name"]: f for f in figures}}


def _paths(files: Files) -> list[tuple[str, Path]]:
    if isinstance(files, Mapping):
        return [(str(k), Path(v)) for k, v in files.items()]
    out = []
    for p in files:
        path = Path(p)
        out.append((path.name.split(".", 1)[0], path))
    return out


def load(files: Files, step: str | None, needs: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The columns of the named step's file, or of the first file having `needs`."""
    candidates = _paths(files)
    if step is not None:
        chosen = [(s, p) for s, p in candidates if s == step]
        if not chosen:
            raise ValueError(f"no data file for step {step!r} (have {[s for s, _ in candidates]})")
        candidates = chosen
    for sid, path in candidates:
        cols = read_bdf(path)
        if all(pick(cols, n) is not None for n in needs):
            return sid, cols
    raise ValueError(f"no data file with columns {', '.join(needs)}")


def fig(name: str, value: Any, unit: str, method: str, iri: str = "", **extra: Any
        ) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "method": method, "iri": iri, **extra}


# -- ionic conductivity ------------------------------------------------------------------------

def ionic_conductivity(files: Files, *, step: str | None = None, cell_constant: float,
                       temperature: float | None, method: str = "fit",
                       measured_temperature: float | None = None,
                       temperature_source: str | None = None,
                       circuit: str = eis.DEFAULT_CIRCUIT, kk_limit: float = eis.KK_LIMIT
                       ) -> list[dict[str, Any]]:
    if method not in ("fit", "intercept"):
        raise ValueError(f"method must be 'fit' or 'intercept', got {method!r}")
    sid, cols = load(files, step, (FREQUENCY, Z_REAL, Z_IMAG))
    kk_limit = float(kk_limit)
    f, zr, zi = cols[FREQUENCY], cols[Z_REAL], cols[Z_IMAG]
    kk = eis.check_spectrum(f, zr, zi, kk_limit)  # refuses open circuits and invalid spectra
    validity = kk.as_dict()
    r_hf = eis.hf_intercept(f, zr, zi)
    figures = [
        fig("spectrum_validity", 100 * max(kk.max_residual_real, kk.max_residual_imag), "%",
            "Lin-KK test (Schönleber et al. 2014, impedance.py): largest residual, "
            "relative to |Z|", step=sid, **validity),
        fig("bulk_resistance_intercept", r_hf, "ohm", "high-frequency intercept", step=sid),
    ]
    r_b, how = r_hf, "high-frequency intercept of the Nyquist plot"
    fit_info: dict[str, Any] = {}
    if method == "fit":
        fit = eis.fit_circuit(f, zr, zi, circuit)
        if not fit.rms_relative <= eis.FIT_RMS_LIMIT:
            raise Refusal(f"circuit {circuit} does not describe the spectrum: RMS residual "
                          f"{100 * fit.rms_relative:.3g} % of |Z| (limit "
                          f"{100 * eis.FIT_RMS_LIMIT:g} %)", circuit=circuit,
                          fit_rms_relative=fit.rms_relative)
        r_b = eis.bulk_resistance(fit)
        if not r_b > 0:
            raise Refusal(f"circuit {circuit}: fitted R0 = {r_b:.3g} ohm, no bulk resistance",
                          circuit=circuit)
        figures.append(fig("bulk_resistance_fit", r_b, "ohm", f"R0 of a {circuit} fit "
                           "(impedance.py, residuals weighted by |Z|)", step=sid,
                           **fit.as_dict()))
        how = f"R0 of a {circuit} equivalent-circuit fit (impedance.py)"
        fit_info = {"circuit": circuit, "fit_rms_relative": fit.rms_relative,
                    "fit_points": fit.points}
    # A conductivity is only comparable at the temperature the cell really had: a measured
    # cell temperature wins over the recipe's (a setpoint), which wins over nothing.
    t_k, t_source, t_measured = None, "unknown: no temperature measured or given", False
    if measured_temperature is not None:
        t_k, t_measured = measured_temperature, True
        t_source = temperature_source or "measured cell temperature"
    elif TEMPERATURE in cols and np.isfinite(cols[TEMPERATURE]).any():
        t_k, t_measured = float(np.nanmean(cols[TEMPERATURE])) + 273.15, True
        t_source = f"mean of the {TEMPERATURE} column of step {sid}'s data"
    elif temperature is not None:
        t_k = temperature
        t_source = "as given to the analysis (the recipe's temperature, not measured)"
    sigma = eis.conductivity_s_m(cell_constant, r_b)
    common: dict[str, Any] = {"step": sid, "temperature_k": t_k,
                              "temperature_source": t_source,
                              "temperature_measured": t_measured,
                              "cell_constant_per_m": cell_constant, "bulk_resistance_ohm": r_b,
                              **fit_info,
                              "lin_kk": {"valid": kk.valid,
                                         "max_residual_real": kk.max_residual_real,
                                         "max_residual_imag": kk.max_residual_imag,
                                         "limit": kk.limit}}
    requested: dict[str, Any] = {}
    if temperature is not None and t_measured:
        requested["temperature_requested_k"] = temperature
    common.update(requested)
    figures += [
        fig("ionic_conductivity", sigma, "S/m", f"EIS: sigma = K_cell/R_b, R_b from the {how}",
            IRI_IONIC_CONDUCTIVITY, **common),
        fig("ionic_conductivity_mS_cm", sigma * 10.0, "mS/cm", "same as ionic_conductivity",
            IRI_IONIC_CONDUCTIVITY, **common),
        fig("temperature", t_k, "K", t_source, step=sid, temperature_measured=t_measured,
            **requested),
    ]
    return figures


# -- stability window ----------------------------------------------------------------------------

NO_CURRENT_A_M2 = 1e-4
"""Below this current density in both sweeps no current flows at all (an open circuit)."""

def stability_window(files: Files, *, step: str | None = None, anodic_step: str | None = None,
                     cathodic_step: str | None = None, threshold: float, area: float,
                     reference: str | None = None) -> list[dict[str, Any]]:
    def sweep(s: str | None) -> tuple[str, dict[str, Any]]:
        return load(files, s, (CURRENT,))

    limits: dict[str, float | None] = {}
    rates: list[float] = []
    peak_j: dict[str, float] = {}
    sids: dict[str, str] = {}
    for direction, s in (("anodic", anodic_step or step), ("cathodic", cathodic_step or step)):
        sid, cols = sweep(s)
        sids[direction] = sid
        e = pick(cols, APPLIED_POTENTIAL, WE_POTENTIAL, VOLTAGE)
        if e is None:
            raise ValueError(f"step {sid}: no potential column")
        check = voltammetry.check_sweep(e, cols[CURRENT], area, threshold, direction)
        if check is not None:
            raise Refusal(f"step {sid}: {check}", step=sid, direction=direction)
        limits[direction] = voltammetry.onset_potential(e, cols[CURRENT], area, threshold,
                                                        direction)
        peak_j[direction] = float(np.nanmax(np.abs(np.asarray(cols[CURRENT], float)))) / area
        rates.append(voltammetry.scan_rate_v_s(cols[TEST_TIME], e))
    if max(peak_j.values()) < NO_CURRENT_A_M2:
        # An electrolyte stable over the whole sweep still draws its double-layer charging
        # current (~20 uF/cm^2 x scan rate, 1e-2 A/m^2 at 50 mV/s); an open circuit draws
        # picoamperes. Only the second is meaningless: the first is a window wider than
        # the sweep, both limits null with their reason.
        raise Refusal(
            f"no current flows: the largest current density in either sweep is "
            f"{max(peak_j.values()):.3g} A/m^2, below {NO_CURRENT_A_M2:g} A/m^2 "
            "(open circuit: is the cell in electrolyte?)",
            largest_j_a_m2=max(peak_j.values()))
    if (limits["anodic"] is not None and limits["cathodic"] is not None
            and limits["anodic"] <= limits["cathodic"]):
        raise Refusal(f"anodic limit {limits['anodic']:.3g} V is not above the cathodic limit "
                      f"{limits['cathodic']:.3g} V: no window")
    w = voltammetry.Window(limits["anodic"], limits["cathodic"])
    common = {"threshold_a_m2": threshold, "threshold_mA_cm2": threshold / 10.0,
              "area_m2": area, "scan_rate_v_s": float(np.nanmedian(rates)),
              "reference": reference or "", "anodic_step": sids["anodic"],
              "cathodic_step": sids["cathodic"]}
    method = "LSV: first potential where |j| exceeds the threshold current density"
    unreached = {d: {"reason": "the threshold was not reached within the sweep"}
                 for d, v in limits.items() if v is None}
    return [
        fig("anodic_limit", w.e_ox_v, "V", method, IRI_WINDOW, **common,
            **unreached.get("anodic", {})),
        fig("cathodic_limit", w.e_red_v, "V", method, IRI_WINDOW, **common,
            **unreached.get("cathodic", {})),
        fig("electrochemical_window", w.width_v, "V", "E_ox - E_red, " + method, IRI_WINDOW,
            **common, **({"reason": "one limit was not reached"} if unreached else {})),
    ]


# -- cycling ------------------------------------------------------------------------------------

def coulombic_efficiency(files: Files, *, step: str | None = None, reference_cycle: int = 1,
                         end_of_life: float = 80.0) -> list[dict[str, Any]]:
    sid, cols = load(files, step, (CURRENT, CYCLE))
    cyc = cycling.charges_per_cycle(cols[TEST_TIME], cols[CURRENT], cols[CYCLE])
    full = [c for c in cyc if c.charge_ah > 0 and c.discharge_ah > 0]
    if not full:
        raise Refusal(f"step {sid}: no cycle with both charge and discharge", step=sid)
    check = cycling.check_cycles(cols[CURRENT], cols[CYCLE], [c.cycle for c in full])
    if check is not None:
        raise Refusal(f"step {sid}: {check}", step=sid)
    ce = [c.efficiency_pct for c in full]
    ret = cycling.retention_pct(cyc, int(reference_cycle))
    method = "integral of current per cycle: CE_n = Q_dis,n / Q_ch,n x 100 %"
    per = {"step": sid, "cycles": [c.cycle for c in full]}
    last = full[-1].cycle
    return [
        fig("coulombic_efficiency", ce[-1], "%", method + f" (cycle {last})",
            IRI_COULOMBIC_EFFICIENCY, cycle=last, step=sid),
        fig("coulombic_efficiency_mean", float(np.mean(ce)), "%", method,
            IRI_COULOMBIC_EFFICIENCY, step=sid),
        fig("coulombic_efficiency_per_cycle", ce, "%", method, IRI_COULOMBIC_EFFICIENCY, **per),
        fig("charge_capacity_per_cycle", [c.charge_ah for c in full], "Ah", method,
            IRI_CYCLING, **per),
        fig("discharge_capacity_per_cycle", [c.discharge_ah for c in full], "Ah", method,
            IRI_CYCLING, **per),
        fig("capacity_retention", ret.get(last), "%",
            f"Q_dis,n / Q_dis,{int(reference_cycle)} x 100 %", IRI_CYCLING, cycle=last,
            step=sid),
        fig("capacity_retention_per_cycle", [ret.get(c.cycle) for c in full], "%",
            "Q_dis,n / Q_dis,ref x 100 %", IRI_CYCLING, **per),
        fig("end_of_life_cycle", cycling.end_of_life_cycle(ret, end_of_life), "1",
            f"first cycle with retention below {end_of_life:g} %", IRI_CYCLING, step=sid),
    ]


# -- sol-gel -------------------------------------------------------------------------------------

def sol_gel(files: Files, *, step: str | None = None, sol_viscosity: float,
            withdrawal_speed: float, surface_tension: float, density: float
            ) -> list[dict[str, Any]]:
    sid, cols = load(files, step, (TEST_TIME, VISCOSITY_TREND))
    t, trend = cols[TEST_TIME], cols[VISCOSITY_TREND]
    try:
        t_gel, r2, n = solgel.gel_time_s(t, trend)
    except ValueError as exc:
        raise Refusal(f"step {sid}: {exc}", step=sid) from None
    last = trend[np.isfinite(trend)][-3:]
    eta = sol_viscosity * (1.0 + float(np.mean(last)) / 100.0)
    h = solgel.landau_levich_m(eta, withdrawal_speed, surface_tension, density)
    common: dict[str, Any] = {"step": sid, "readings": n, "monitored_s": float(np.nanmax(t))}
    temps = cols.get("Medium Temperature / degC")
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


_STEP = ArgSpec(None, None, False, "step whose data file to analyse (default: the one "
                "that has the needed columns)")
_CE = AnalysisSpec(
    "coulombic_efficiency", "Coulombic efficiency and capacity retention per cycle (GCPL).",
    {"step": _STEP, "reference_cycle": ArgSpec(None, 1), "end_of_life": ArgSpec(None, 80.0)},
    coulombic_efficiency, IRI_COULOMBIC_EFFICIENCY, (CURRENT, CYCLE),
    (("coulombic_efficiency", "%"), ("capacity_retention", "%")),
)
ANALYSES: dict[str, AnalysisSpec] = {
    "ionic_conductivity": AnalysisSpec(
        "ionic_conductivity",
        "Ionic conductivity sigma = K_cell / R_b from a PEIS spectrum (S/m, with T in K).",
        {"step": _STEP,
         "cell_constant": ArgSpec("1/m", "1.0 /cm", False, "cell constant K_cell"),
         "temperature": ArgSpec("K", None, False, "electrolyte temperature as requested "
                                "(used only when none was measured)"),
         "measured_temperature": ArgSpec("K", None, False, "the cell's measured temperature "
                                         "(filled in by the executor from the measurement "
                                         "step's record)"),
         "temperature_source": ArgSpec(None, None, False, "where measured_temperature came "
                                       "from"),
         "method": ArgSpec(None, "fit", False, "'fit' (equivalent circuit) or 'intercept'"),
         "circuit": ArgSpec(None, eis.DEFAULT_CIRCUIT, False,
                            "impedance.py circuit string; its series resistance R0 is R_b"),
         "kk_limit": ArgSpec(None, eis.KK_LIMIT, False,
                             "largest Lin-KK residual (fraction of |Z|) of a valid spectrum")},
        ionic_conductivity, IRI_IONIC_CONDUCTIVITY, (FREQUENCY, Z_REAL, Z_IMAG),
        (("ionic_conductivity", "S/m"), ("ionic_conductivity_mS_cm", "mS/cm")),
    ),
    "stability_window": AnalysisSpec(
        "stability_window",
        "Electrochemical stability window from LSV at a threshold current density.",
        {"step": _STEP, "anodic_step": ArgSpec(), "cathodic_step": ArgSpec(),
         "threshold": ArgSpec("A/m^2", "0.05 mA/cm^2", False, "current density threshold"),
         "area": ArgSpec("m^2", "0.196 cm^2", False, "working electrode area"),
         "reference": ArgSpec(None, "", False, "reference electrode of the potentials")},
        stability_window, IRI_WINDOW, (CURRENT,),
        (("anodic_limit", "V"), ("cathodic_limit", "V"), ("electrochemical_window", "V")),
    ),
    "coulombic_efficiency": _CE,
    "capacity_retention": _CE,
    "sol_gel": AnalysisSpec(
        "sol_gel",
        "Gel time of a sol from a stirrer's viscosity trend, and the wet film a dip coating "
        "would leave (Landau-Levich).",
        {"step": _STEP,
         "sol_viscosity": ArgSpec("Pa*s", "1.5 mPa*s", False, "viscosity of the fresh sol "
                                  "(the trend is relative to it)"),
         "withdrawal_speed": ArgSpec("m/s", "1 mm/s", False, "dip-coating withdrawal speed"),
         "surface_tension": ArgSpec("N/m", "22 mN/m", False, "surface tension of the sol"),
         "density": ArgSpec("kg/m^3", "0.88 g/mL", False, "density of the sol")},
        sol_gel, "", (TEST_TIME, VISCOSITY_TREND),
        (("gel_time", "s"), ("wet_film_thickness", "m")),
    ),
}
