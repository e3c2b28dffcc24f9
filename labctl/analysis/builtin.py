"""labctl's own analyses: ionic conductivity from PEIS, the electrochemical stability
window from LSV, coulombic efficiency and capacity retention from GCPL. Registered through
the `labctl.analyses` entry points of labctl's pyproject, like any plugin's."""

from __future__ import annotations

from typing import Any

import numpy as np

from labctl.analysis import cycling, eis, voltammetry
from labctl.analysis.base import AnalysisSpec, ArgSpec, Files, Refusal, fig, load
from labctl.bdf import (
    APPLIED_POTENTIAL,
    CURRENT,
    CYCLE,
    FREQUENCY,
    TEMPERATURE,
    TEST_TIME,
    VOLTAGE,
    WE_POTENTIAL,
    Z_IMAG,
    Z_REAL,
    pick,
)

EMMO_EC = "https://w3id.org/emmo/domain/electrochemistry#"
IRI_IONIC_CONDUCTIVITY = EMMO_EC + "electrochemistry_25dabdc2_68bf_4a38_8cbe_11be017358bc"
IRI_COULOMBIC_EFFICIENCY = EMMO_EC + "electrochemistry_a5962e05_466d_46a4_8951_bea59d7326e5"
IRI_WINDOW = EMMO_EC + "electrochemistry_129926b6_fc30_441d_b359_29b44c988514"
IRI_CYCLING = EMMO_EC + "electrochemistry_79a8802e_8296_459a_b65d_6e5c79e1bf37"


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


_STEP = ArgSpec(None, None, False, "step whose data file to analyse (default: the one "
                "that has the needed columns)")
COULOMBIC_EFFICIENCY = AnalysisSpec(
    "coulombic_efficiency", "Coulombic efficiency and capacity retention per cycle (GCPL).",
    {"step": _STEP, "reference_cycle": ArgSpec(None, 1), "end_of_life": ArgSpec(None, 80.0)},
    coulombic_efficiency, IRI_COULOMBIC_EFFICIENCY, (CURRENT, CYCLE),
    (("coulombic_efficiency", "%"), ("capacity_retention", "%")),
)
IONIC_CONDUCTIVITY = AnalysisSpec(
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
    prepare=eis.prepare,
)
STABILITY_WINDOW = AnalysisSpec(
    "stability_window",
    "Electrochemical stability window from LSV at a threshold current density.",
    {"step": _STEP, "anodic_step": ArgSpec(), "cathodic_step": ArgSpec(),
     "threshold": ArgSpec("A/m^2", "0.05 mA/cm^2", False, "current density threshold"),
     "area": ArgSpec("m^2", "0.196 cm^2", False, "working electrode area"),
     "reference": ArgSpec(None, "", False, "reference electrode of the potentials")},
    stability_window, IRI_WINDOW, (CURRENT,),
    (("anodic_limit", "V"), ("cathodic_limit", "V"), ("electrochemical_window", "V")),
)
