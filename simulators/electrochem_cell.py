"""The simulated electrochemical cell behind the potentiostat simulator.

What it models (shared/protocols/palmsens-methodscript.md, "Electrochemistry of the simulated
cell"), so that analyses have a known truth to recover:

- ohmic resistance R_s = K_cell / σ, σ from the electrolyte (simulators.conductivity);
- a Randles circuit for impedance: R_s + (C_dl ‖ (R_ct + Warburg));
- a reversible, diffusion-controlled redox couple (only the reduced form in the bulk). Its
  current is the semi-derivative of the Nernstian surface flux (semi-integral formalism,
  Oldham & Spanier), computed with Grünwald–Letnikov weights on the sampling grid: a linear
  sweep gives the Randles–Ševčík peak (∝ √scan rate), a potential step gives Cottrell decay.
  The history is limited to a convection time, so a step decays towards a steady state;
- capacitive current C_dl·A·dE/dt, and exponential (Tafel-like) oxidation/reduction onsets at
  the electrolyte's stability limits, limited by R_s (solved exactly with Lambert's W);
- an insertion electrode for galvanostatic work: state of charge, Nernst-like OCV curve
  (E_ocp at half charge, a linear span over the SOC range plus the (RT/F)·ln(x/(1−x)) term),
  iR drop and a Butler–Volmer charge-transfer overpotential at the applied current, charge
  lost to side reactions (coulombic efficiency < 1) and capacity fade (host sites lost, the
  charge already stored kept, so the fade shows in the retention and the measured CE is the
  configured one). The OCP is its OCV (constant while no current flows). Simplification: the
  voltammetric response does not include the insertion electrode, and the sweeps ignore iR
  drop;
- a dry cell (no electrolyte in its vial, electrodes in air) is an open circuit: its
  impedance is the stray capacitance of the leads (10 pF) in parallel with a 1 TΩ leak, no
  DC current flows (sweeps read only noise, a galvanostat cannot drive its current).

Units: SI throughout (m, m², F, A, V, s, mol/m³).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FARADAY = 96485.33212
GAS_R = 8.314462618
OPEN_CIRCUIT_OHM = 1e12


@dataclass
class CellParams:
    """Parameters of the simulated cell (simulator options override them)."""

    cell_constant_m: float = 100.0  # K_cell, 1/m (1.0 /cm)
    area_m2: float = 0.196e-4  # working electrode area (0.196 cm²)
    cdl_f_m2: float = 0.20  # double layer, 20 µF/cm²
    i0_a_m2: float = 10.0  # exchange current density of the charge transfer, 1 mA/cm²
    warburg_ohm_s05: float = 100.0  # Warburg coefficient σ_W (Ω s^-½)
    redox_e0_v: float = 3.25  # formal potential of the dissolved couple
    redox_conc_mol_m3: float = 1.0  # bulk concentration of the reduced form (1 mM)
    diffusion_m2_s: float = 1.0e-9  # 1e-5 cm²/s
    n_electrons: int = 1
    ox_limit_v: float = 4.5  # electrolyte oxidation onset
    red_limit_v: float = 0.9  # electrolyte reduction onset
    onset_slope_v: float = 0.08  # e-fold per this many volts past a limit
    onset_j_ref_a_m2: float = 0.1  # current density at the limit (0.01 mA/cm²)
    ocp_v: float = 3.0  # OCV of the insertion electrode at half charge
    ocv_span_v: float = 0.1  # linear rise of the OCV from empty to full (besides the ln term)
    capacity_c: float = 0.36  # insertion capacity (0.1 mAh)
    initial_soc: float = 0.5
    coulombic_efficiency: float = 0.98  # fraction of the charge current that is stored
    capacity_fade: float = 0.01  # capacity lost per full charge, as a fraction
    convection_time_s: float = 30.0  # diffusion-layer growth stops after this (stirring)
    temperature_c: float = 25.0  # used when the electrolyte gives none
    stray_capacitance_f: float = 10e-12  # leads and electrodes: all a dry cell shows


def _w_of_exp(y: float) -> float:
    """Lambert W(e^y) for real y, by Newton on w + ln w = y (no overflow for large y)."""
    if y < -8:  # W(x) = x − x² + 1.5x³ − … for small x
        x = math.exp(y)
        return x * (1.0 - x + 1.5 * x * x)
    w = y - math.log(y) if y > 1.0 else math.exp(y) / (1.0 + math.exp(y)) + 0.1
    w = max(w, 1e-12)
    for _ in range(50):
        f = w + math.log(w) - y
        step = f / (1.0 + 1.0 / w)
        w_new = w - step
        if w_new <= 0:
            w_new = w / 10
        if abs(w_new - w) <= 1e-13 * max(1.0, w):
            return w_new
        w = w_new
    return w


_GL_CACHE: dict[int, np.ndarray] = {}


def gl_weights(n: int) -> np.ndarray:
    """Grünwald–Letnikov weights of the semi-derivative, w_0..w_{n-1}."""
    size = 1
    while size < n:
        size *= 2
    w = _GL_CACHE.get(size)
    if w is None:
        w = np.empty(size)
        w[0] = 1.0
        for k in range(1, size):
            w[k] = w[k - 1] * (1.0 - 1.5 / k)
        _GL_CACHE[size] = w
    return w[:n]


@dataclass
class Cell:
    """The cell's state and responses. `conductivity` is a callable giving the present
    electrolyte (σ in S/m, temperature in °C), read at every measurement."""

    params: CellParams = field(default_factory=CellParams)
    conductivity: object = None  # Callable[[], tuple[float, float]]
    soc: float = 0.5
    capacity_c: float = 0.0
    charge_in_c: float = 0.0  # total charge passed anodically (truth for tests)
    charge_out_c: float = 0.0  # total charge passed cathodically

    def __post_init__(self) -> None:
        self.soc = self.params.initial_soc
        self.capacity_c = self.params.capacity_c
        self._electrolyte: tuple[float, float] | None = None

    # -- electrolyte ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the electrolyte again at the next use (called once per sample)."""
        self._electrolyte = None

    def electrolyte(self) -> tuple[float, float]:
        """(σ S/m, temperature °C), as read at the last `refresh`."""
        if self._electrolyte is None:
            if self.conductivity is None:
                self._electrolyte = (1.15, self.params.temperature_c)
            else:
                sigma, temp = self.conductivity()  # type: ignore[operator]
                self._electrolyte = (float(sigma), float(temp))
        return self._electrolyte

    @property
    def open_circuit(self) -> bool:
        """No electrolyte between the electrodes (an empty vial): no current path."""
        return self.electrolyte()[0] <= 0

    def r_s(self) -> float:
        """Ohmic (solution) resistance K_cell/σ; a dry cell is an open circuit (1 TΩ)."""
        sigma, _ = self.electrolyte()
        if sigma <= 0:
            return OPEN_CIRCUIT_OHM
        return min(OPEN_CIRCUIT_OHM, self.params.cell_constant_m / sigma)

    def thermal_voltage(self) -> float:
        _, t_c = self.electrolyte()
        return GAS_R * (t_c + 273.15) / FARADAY

    def r_ct(self) -> float:
        p = self.params
        return self.thermal_voltage() / (p.n_electrons * p.i0_a_m2 * p.area_m2)

    def c_dl(self) -> float:
        return self.params.cdl_f_m2 * self.params.area_m2

    # -- impedance -----------------------------------------------------------------------
    def impedance(self, f_hz: float) -> complex:
        """Randles: R_s + 1/(jωC_dl + 1/(R_ct + σ_W(1−j)/√ω)). Im < 0 when capacitive."""
        w = 2 * math.pi * f_hz
        if self.open_circuit:  # the leads' stray capacitance and a 1 TΩ leak
            return 1.0 / (1.0 / OPEN_CIRCUIT_OHM + 1j * w * self.params.stray_capacitance_f)
        zw = self.params.warburg_ohm_s05 * (1 - 1j) / math.sqrt(w)
        zf = self.r_ct() + zw
        return self.r_s() + 1.0 / (1j * w * self.c_dl() + 1.0 / zf)

    # -- DC currents -----------------------------------------------------------------------
    def onset_current(self, e_v: float) -> float:
        """Electrolyte oxidation (+) and reduction (−) beyond its stability limits, with the
        ohmic drop: i = I0 exp((E − i R_s − E_lim)/β) solved with Lambert's W."""
        p = self.params
        i0 = p.onset_j_ref_a_m2 * p.area_m2
        beta = p.onset_slope_v
        rs = self.r_s()
        base = math.log(i0 * rs / beta)
        i_ox = beta / rs * _w_of_exp(base + (e_v - p.ox_limit_v) / beta)
        i_red = beta / rs * _w_of_exp(base + (p.red_limit_v - e_v) / beta)
        return i_ox - i_red

    def nernst_fraction(self, e_v: float) -> float:
        """Surface fraction of the couple in oxidised form (Nernst, equal diffusivities)."""
        x = self.params.n_electrons * (e_v - self.params.redox_e0_v) / self.thermal_voltage()
        if x > 60:
            return 1.0
        if x < -60:
            return 0.0
        return 1.0 / (1.0 + math.exp(-x))

    def flux_scale(self) -> float:
        """nFA√D·C*: the semi-integral of the current at full oxidation (A s^½)."""
        p = self.params
        return (p.n_electrons * FARADAY * p.area_m2 * math.sqrt(p.diffusion_m2_s)
                * p.redox_conc_mol_m3)

    def randles_sevcik_peak(self, scan_rate_v_s: float) -> float:
        """Reference peak current of a reversible couple (0.4463 nFAC√(nFvD/RT))."""
        p = self.params
        n = p.n_electrons
        return 0.4463 * n * FARADAY * p.area_m2 * p.redox_conc_mol_m3 * math.sqrt(
            n * scan_rate_v_s * p.diffusion_m2_s / self.thermal_voltage()
        )

    def onset_potentials(self, threshold_a_m2: float) -> tuple[float, float]:
        """Where the electrolyte's own current density reaches a threshold (no iR, no
        capacitive current): the true stability window (E_red, E_ox)."""
        p = self.params
        shift = p.onset_slope_v * math.log(threshold_a_m2 / p.onset_j_ref_a_m2)
        return p.red_limit_v - shift, p.ox_limit_v + shift

    # -- galvanostatic insertion electrode ---------------------------------------------------
    def ocv(self) -> float:
        """OCV of the insertion electrode: E_ocp + span·(x−½) + (RT/F)·ln(x/(1−x))."""
        x = min(1 - 1e-9, max(1e-9, self.soc))
        return self.params.ocp_v + self.params.ocv_span_v * (x - 0.5) + (
            self.thermal_voltage() * math.log(x / (1 - x))
        )

    def pass_current(self, i_a: float, dt_s: float) -> None:
        """Galvanostatic charge (i > 0) or discharge (i < 0) for dt: stores what the
        efficiency allows (the rest goes to side reactions) and fades the capacity on
        charge. The fade removes host sites, not the charge already stored in them: the
        loss shows in the next cycles' capacity, not as a lower coulombic efficiency."""
        if dt_s <= 0 or i_a == 0:
            return
        p = self.params
        q = i_a * dt_s
        held = self.soc * self.capacity_c
        if q > 0:
            self.charge_in_c += q
            stored = min(q * p.coulombic_efficiency, self.capacity_c - held)
            held += stored
            self.capacity_c *= 1.0 - p.capacity_fade * stored / p.capacity_c
        else:
            self.charge_out_c -= q
            held -= min(-q, held)
        self.soc = min(1.0, max(0.0, held / self.capacity_c)) if self.capacity_c > 0 else 0.0

    def charge_transfer_overpotential(self, i_a: float) -> float:
        """Butler–Volmer (α = ½) overpotential at current i: (2RT/nF)·asinh(i / 2i₀A).
        Its small-signal slope is R_ct, the EIS charge-transfer resistance."""
        p = self.params
        b = 2.0 * self.thermal_voltage() / p.n_electrons
        return b * math.asinh(i_a / (2.0 * p.i0_a_m2 * p.area_m2))

    def galvanostatic_potential(self, i_a: float) -> float:
        """E = OCV + i·R_s + η_ct(i) while a current flows."""
        return self.ocv() + i_a * self.r_s() + self.charge_transfer_overpotential(i_a)


class Voltammetry:
    """One potentiostatic measurement on a uniform time grid h: feed the applied potential
    at every sample, get the cell current (faradaic + capacitive + electrolyte onsets)."""

    MAX_HISTORY = 8192

    def __init__(self, cell: Cell, h_s: float, n_max: int, *, rest_v: float | None = None):
        self.cell = cell
        self.h = h_s
        window = math.ceil(cell.params.convection_time_s / h_s)
        self.k_max = max(1, min(self.MAX_HISTORY, window, n_max + 1))
        self.weights = gl_weights(self.k_max)
        self.hist = np.zeros(n_max + 2)
        self.n = 0
        self.scale = cell.flux_scale()
        self.rest_v = rest_v
        self.last_e: float | None = None
        self.faradaic = self.scale > 0

    def seed(self, e_v: float) -> None:
        """The potential step at t = 0 (chronoamperometry): no sample, history starts."""
        self._push(e_v)

    def _push(self, e_v: float) -> float:
        if not self.faradaic:
            self.n += 1
            return 0.0
        if self.n >= len(self.hist):
            self.hist = np.concatenate([self.hist, np.zeros(len(self.hist))])
        self.hist[self.n] = self.scale * self.cell.nernst_fraction(e_v)
        self.n += 1
        k = min(self.n, self.k_max)
        recent = self.hist[self.n - k : self.n][::-1]
        return float(np.dot(self.weights[:k], recent)) / math.sqrt(self.h)

    def sample(self, e_v: float, de_dt: float, t_since_step: float | None = None) -> float:
        """Current (A, anodic positive) at the next grid point with potential e_v."""
        if self.cell.open_circuit:  # electrodes in air: only the leads' charging current
            self.n += 1
            return self.cell.params.stray_capacitance_f * de_dt
        i_f = self._push(e_v)
        i_c = self.cell.c_dl() * de_dt
        if t_since_step is not None and self.rest_v is not None:
            rs = self.cell.r_s()
            tau = rs * self.cell.c_dl()
            if tau > 0 and t_since_step / tau < 700:
                i_c += (e_v - self.rest_v) / rs * math.exp(-t_since_step / tau)
        return i_f + i_c + self.cell.onset_current(e_v)
