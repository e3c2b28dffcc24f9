"""Bulk resistance and ionic conductivity from impedance spectra (pure functions).

σ = K_cell / R_b (shared/formats.md). R_b is either the high-frequency intercept of the
Nyquist plot with the real axis, or, as the better estimate, R0 of a least-squares fit of
R0 + (R_ct ‖ CPE) to the high-frequency arc (the points above the diffusion tail).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares


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


def _arc_points(f: np.ndarray, r: np.ndarray, i: np.ndarray) -> slice:
    """The high-frequency arc: down to the local minimum of −Z'' after its apex, at most
    symmetric about the apex."""
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


@dataclass(frozen=True)
class ArcFit:
    r0_ohm: float
    r_ct_ohm: float
    q: float  # CPE coefficient (F s^(n-1))
    n: float
    rms_relative: float
    points: int


def r_rc_cpe(freq: np.ndarray, r0: float, r_ct: float, q: float, n: float) -> np.ndarray:
    """Z of R0 + (R_ct ‖ CPE), CPE = 1/(Q (jω)^n)."""
    jw = 1j * 2 * np.pi * np.asarray(freq, dtype=float)
    return r0 + r_ct / (1.0 + r_ct * q * jw**n)


def fit_r_rc_cpe(freq: np.ndarray, zre: np.ndarray, zim: np.ndarray) -> ArcFit:
    """Fit R0 + (R_ct ‖ CPE) to the high-frequency arc, residuals weighted by |Z|."""
    f, r, i = _sorted(freq, zre, zim)
    sl = _arc_points(f, r, i)
    f, r, i = f[sl], r[sl], i[sl]
    if len(f) < 4:
        raise ValueError("too few points on the high-frequency arc to fit")
    z = r + 1j * i
    r0_guess = hf_intercept(f, r, i)
    r_ct_guess = max(float(r[-1] - r0_guess), 1e-3 * max(abs(r0_guess), 1.0))
    w_apex = 2 * np.pi * f[first_apex(i)]
    q_guess = 1.0 / (r_ct_guess * w_apex)
    x0 = np.array([r0_guess, r_ct_guess, np.log(q_guess), 0.9])
    scale = np.abs(z)

    def residuals(x: np.ndarray) -> np.ndarray:
        model = r_rc_cpe(f, x[0], x[1], float(np.exp(x[2])), x[3])
        d = (model - z) / scale
        return np.concatenate([d.real, d.imag])

    lo = [0.0, 0.0, -60.0, 0.3]
    hi = [np.inf, np.inf, 10.0, 1.0]
    x0 = np.clip(x0, np.array(lo) + 1e-12, np.array(hi) - 1e-12)
    res = least_squares(residuals, x0, bounds=(lo, hi), x_scale="jac", max_nfev=2000)
    rms = float(np.sqrt(np.mean(res.fun**2)))
    return ArcFit(float(res.x[0]), float(res.x[1]), float(np.exp(res.x[2])), float(res.x[3]),
                  rms, len(f))


def conductivity_s_m(cell_constant_m: float, r_bulk_ohm: float) -> float:
    """σ = K_cell / R_b (K_cell in 1/m, σ in S/m)."""
    if not r_bulk_ohm > 0:
        raise ValueError(f"bulk resistance must be positive, got {r_bulk_ohm}")
    return cell_constant_m / r_bulk_ohm
