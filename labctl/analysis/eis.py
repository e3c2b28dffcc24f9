"""Bulk resistance and ionic conductivity from impedance spectra.

σ = K_cell / R_b (shared/formats.md). R_b is either the high-frequency intercept of the
Nyquist plot with the real axis, or, as the better estimate, R0 of an equivalent circuit
fitted with impedance.py (default `R0-p(R1,CPE1)` on the high-frequency arc, the points
above the diffusion tail). Before either, the spectrum must pass two checks, or it is refused
with the reason (`SpectrumRefused`), never turned into a number:

- it reaches the real axis: an open circuit (a cell in an empty vial, in air) is a stray
  capacitance, capacitive at every frequency, with a huge |Z| and no real-axis intercept;
- the Lin-KK test (Schönleber et al. 2014, impedance.py's `linKK`): a spectrum whose
  Kramers-Kronig residuals exceed the limit is not the response of a linear, stable, causal
  system (drift, a loose contact, noise) and its circuit parameters mean nothing.

impedance.py is imported when a spectrum is analysed, not when labctl is, and without the
plotting modules it would import and labctl never calls (`labctl.analysis.impedance_py`).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from labctl.analysis import impedance_py
from labctl.analysis.base import Refusal

DEFAULT_CIRCUIT = "R0-p(R1,CPE1)"
#: Lin-KK: largest |residual| (real or imaginary part, relative to |Z|) of a valid spectrum
KK_LIMIT = 0.01
#: a spectrum reaches the real axis when some point's phase is within this of 0°
INTERCEPT_PHASE_DEG = 20.0
#: a circuit fit describes the spectrum when its RMS residual (relative to |Z|) is below this
FIT_RMS_LIMIT = 0.05
MIN_POINTS = 5
#: Lin-KK's over-fit cut-off μ: the paper's 0.85 stops at 3–8 RC elements on these spectra
#: (noise-free CPE arcs then show 20 % residuals); 0.5 keeps valid ones under 0.2 % while a
#: drifting spectrum stays above 4 %
KK_MU_CUTOFF = 0.5


class SpectrumRefused(Refusal):
    """The spectrum cannot give a bulk resistance; `reason` says why (for the record)."""

    def __init__(self, reason: str, **details: Any):
        super().__init__(reason)
        self.reason = reason
        self.details = details


def _sorted(freq: np.ndarray, zre: np.ndarray, zim: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite points, highest frequency first."""
    f, r, i = (np.asarray(a, dtype=float) for a in (freq, zre, zim))
    ok = np.isfinite(f) & np.isfinite(r) & np.isfinite(i) & (f > 0)
    f, r, i = f[ok], r[ok], i[ok]
    order = np.argsort(-f)
    return f[order], r[order], i[order]


def first_apex(zim: np.ndarray, prominence: float = 0.05) -> int:
    """Index of the first local maximum of −Z'' from the high-frequency end (the top of the
    first arc), looking two points ahead so that noise does not stop it early. It must also
    rise above the lowest −Z'' before it by `prominence` of the spectrum's −Z'' range: where
    the arc starts far from the origin (a resistive electrolyte) the first points scatter
    around −Z'' = 0 and their noise makes small maxima of its own."""
    neg = -np.asarray(zim, dtype=float)
    n = len(neg)
    if n == 0:
        return 0
    need = prominence * float(np.max(neg) - np.min(neg))
    low = float(neg[0])
    for k in range(1, n - 2):
        low = min(low, float(neg[k - 1]))
        if (neg[k] >= neg[k - 1] and neg[k] > neg[k + 1] and neg[k] > neg[k + 2]
                and neg[k] - low >= need):
            return k
    return int(np.argmax(neg))


def hf_intercept(freq: np.ndarray, zre: np.ndarray, zim: np.ndarray) -> float:
    """Z' where −Z'' reaches 0 at the high-frequency end: interpolated at a sign change of
    Z'' (inductive tail), else Z' of the highest-frequency point with the smallest |Z''|
    before the arc's apex."""
    f, r, i = _sorted(freq, zre, zim)
    if len(f) == 0:
        raise ValueError("no impedance points")
    for k in range(len(f) - 1):
        if i[k] >= 0 > i[k + 1] or i[k] == 0:  # from inductive (or zero) to capacitive
            if i[k] == 0:
                return float(r[k])
            frac = i[k] / (i[k] - i[k + 1])
            return float(r[k] + frac * (r[k + 1] - r[k]))
    head = slice(0, max(1, first_apex(i)))
    k = int(np.argmin(np.abs(i[head])))
    return float(r[head][k])


def arc_points(f: np.ndarray, r: np.ndarray, i: np.ndarray) -> slice:
    """The high-frequency arc (points sorted highest frequency first): down to the local
    minimum of −Z'' after its apex, at most symmetric about the apex."""
    neg = -i
    apex = first_apex(i)
    end = len(f)
    for k in range(apex + 1, len(f) - 1):
        if neg[k] <= neg[k - 1] and neg[k] < neg[k + 1]:
            end = k + 1
            break
    # as many points past the apex as before it: the arc's low-frequency half is where a
    # diffusion tail starts to bend it
    return slice(0, min(end, 2 * apex + 1))


# -- validity ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class KramersKronig:
    """Outcome of the Lin-KK test: M RC elements (μ the over-fit measure), the largest
    relative residuals, and whether they stay below the limit."""

    valid: bool
    m_elements: int
    mu: float
    max_residual_real: float
    max_residual_imag: float
    limit: float
    points: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare() -> None:
    """Import what fitting a spectrum needs (scipy, impedance.py) ahead of the first one."""
    _impedance_py()


def _impedance_py() -> None:
    """Import impedance.py (without its plotting stack: `impedance_py.load`), working around
    its Lin-KK evaluating `repr`s of numpy 2 scalars (`np.float64(…)`) in a namespace
    without `np` (impedance 1.7.1)."""
    impedance_py.load()
    from impedance.models.circuits.elements import circuit_elements

    circuit_elements.setdefault("np", np)


def lin_kk(freq: np.ndarray, zre: np.ndarray, zim: np.ndarray,
           limit: float = KK_LIMIT) -> KramersKronig:
    """The Lin-KK test on the finite points (complex fit, with a series capacitance so that
    blocking electrodes and diffusion tails pass)."""
    _impedance_py()
    from impedance.validation import linKK

    f, r, i = _sorted(freq, zre, zim)
    if len(f) < MIN_POINTS:
        raise SpectrumRefused(f"{len(f)} finite impedance points, need {MIN_POINTS}",
                              points=len(f))
    # linKK prints progress every 10 elements: keep it off labctl's stdout (--json output)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, mu, _, res_re, res_im = linKK(f, r + 1j * i, c=KK_MU_CUTOFF, max_M=50,
                                         fit_type="complex", add_cap=True)
    worst_re, worst_im = float(np.max(np.abs(res_re))), float(np.max(np.abs(res_im)))
    return KramersKronig(bool(max(worst_re, worst_im) <= limit), int(m), float(mu),
                         worst_re, worst_im, float(limit), len(f))


def check_spectrum(freq: np.ndarray, zre: np.ndarray, zim: np.ndarray,
                   kk_limit: float = KK_LIMIT) -> KramersKronig:
    """Refuse a spectrum that cannot give a bulk resistance (open circuit, too few points,
    failing Lin-KK); the Lin-KK outcome of one that can."""
    f, r, i = _sorted(freq, zre, zim)
    n_all = len(np.asarray(freq))
    if len(f) < MIN_POINTS:
        raise SpectrumRefused(
            f"{len(f)} of {n_all} impedance points are finite, need {MIN_POINTS} "
            "(was the cell switched on?)", points=len(f))
    phase = np.degrees(np.arctan2(i, r))
    crosses_axis = bool(np.any(i >= 0))
    if not crosses_axis and float(np.min(np.abs(phase))) > INTERCEPT_PHASE_DEG:
        mod = np.hypot(r, i)
        raise SpectrumRefused(
            "open circuit: no real-axis intercept, the spectrum is capacitive at every "
            f"frequency (phase {float(np.max(phase)):.0f}° to {float(np.min(phase)):.0f}°, "
            f"|Z| {float(np.min(mod)):.3g} to {float(np.max(mod)):.3g} ohm): is the cell in "
            "electrolyte?", phase_deg_max=float(np.max(phase)), z_abs_min_ohm=float(np.min(mod)))
    kk = lin_kk(f, r, i, kk_limit)
    if not kk.valid:
        worst = max(kk.max_residual_real, kk.max_residual_imag)
        raise SpectrumRefused(
            f"Lin-KK test failed: residuals up to {100 * worst:.2g} % of |Z| "
            f"(limit {100 * kk_limit:g} %): not the response of a linear, stable system "
            "(drift, loose contact, noise)",
            lin_kk=kk.as_dict())
    return kk


# -- equivalent-circuit fit --------------------------------------------------------------------

@dataclass(frozen=True)
class CircuitFit:
    """An impedance.py circuit fitted to (part of) a spectrum."""

    circuit: str
    parameters: dict[str, float]
    units: dict[str, str]
    std_errors: dict[str, float | None]
    rms_relative: float  # RMS of (model − data)/|data|, real and imaginary parts
    points: int
    f_min_hz: float
    f_max_hz: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def predict(self, freq: np.ndarray) -> np.ndarray:
        """The model's complex impedance at these frequencies."""
        return predict(self.circuit, self.parameters, freq)


def predict(circuit: str, parameters: dict[str, float], freq: np.ndarray) -> np.ndarray:
    """Complex impedance of an impedance.py circuit with these parameters (as recorded in a
    figure of merit: in the circuit's parameter order)."""
    _impedance_py()
    from impedance.models.circuits import CustomCircuit

    values = [float(v) for v in parameters.values()]
    c = CustomCircuit(circuit, initial_guess=values)
    with warnings.catch_warnings():  # "simulating from initial parameters": they are the fit
        warnings.simplefilter("ignore")
        return np.asarray(c.predict(np.asarray(freq, dtype=float), use_initial=True))


def _guess(circuit: str, f: np.ndarray, r: np.ndarray, i: np.ndarray) -> list[float]:
    """Starting values from the spectrum's shape for each element of the circuit."""
    from impedance.models.circuits.elements import circuit_elements, get_element_from_name
    from impedance.models.circuits.fitting import extract_circuit_elements

    r0 = max(hf_intercept(f, r, i), 1e-6)
    span = max(float(np.max(r) - r0), 1e-3 * r0)
    w_apex = 2 * np.pi * f[first_apex(i)]
    guess: list[float] = []
    for name in extract_circuit_elements(circuit):
        kind = get_element_from_name(name)
        if kind == "R":
            guess.append(r0 if name == "R0" else span)
        elif kind == "C":
            guess.append(1.0 / (span * w_apex))
        elif kind == "CPE":
            guess += [1.0 / (span * w_apex), 0.9]
        elif kind == "W":
            guess.append(span / 10)
        elif kind == "L":
            guess.append(1e-7)
        else:  # other elements: 1 for each parameter, as impedance.py's examples do
            guess += [1.0] * circuit_elements[kind].num_params
    return guess


def fit_circuit(freq: np.ndarray, zre: np.ndarray, zim: np.ndarray,
                circuit: str = DEFAULT_CIRCUIT, *, arc_only: bool | None = None) -> CircuitFit:
    """Fit `circuit` (impedance.py syntax) with residuals weighted by |Z|. The default
    circuit is fitted to the high-frequency arc only (the simple model does not describe a
    diffusion tail); another circuit to the whole spectrum unless `arc_only`."""
    _impedance_py()
    from impedance.models.circuits import CustomCircuit

    f, r, i = _sorted(freq, zre, zim)
    if arc_only is None:
        arc_only = circuit == DEFAULT_CIRCUIT
    if arc_only:
        sl = arc_points(f, r, i)
        f, r, i = f[sl], r[sl], i[sl]
    try:
        model = CustomCircuit(circuit, initial_guess=_guess(circuit, f, r, i))
    except Exception as exc:
        raise ValueError(f"circuit {circuit!r}: {exc}") from exc
    names, units = model.get_param_names()
    if len(f) < max(4, len(names)):
        raise SpectrumRefused(f"{len(f)} points to fit {circuit} ({len(names)} parameters)",
                              points=len(f))
    z = r + 1j * i
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(f, z, weight_by_modulus=True, maxfev=20000)  # bounds: R, C, Q ≥ 0, α ≤ 1
    params = np.asarray(model.parameters_, dtype=float)
    conf = model.conf_ if model.conf_ is not None else [None] * len(params)
    d = (np.asarray(model.predict(f), dtype=complex) - z) / np.abs(z)
    rms = float(np.sqrt(np.mean(np.concatenate([d.real, d.imag]) ** 2)))
    return CircuitFit(
        circuit, {n: float(p) for n, p in zip(names, params, strict=True)},
        dict(zip(names, units, strict=True)),
        {n: (float(c) if c is not None and np.isfinite(c) else None)
         for n, c in zip(names, conf, strict=True)},
        rms, len(f), float(np.min(f)), float(np.max(f)))


def bulk_resistance(fit: CircuitFit) -> float:
    """R0, the circuit's series resistance: the bulk (electrolyte) resistance."""
    if "R0" not in fit.parameters:
        raise ValueError(f"circuit {fit.circuit!r} has no series resistance named R0")
    return fit.parameters["R0"]


def conductivity_s_m(cell_constant_m: float, r_bulk_ohm: float) -> float:
    """σ = K_cell / R_b (K_cell in 1/m, σ in S/m)."""
    if not r_bulk_ohm > 0:
        raise ValueError(f"bulk resistance must be positive, got {r_bulk_ohm}")
    return cell_constant_m / r_bulk_ohm
