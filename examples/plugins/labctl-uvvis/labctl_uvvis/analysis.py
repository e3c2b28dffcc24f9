"""The `absorbance_peak` analysis: where the band of a UV-Vis spectrum peaks, how high,
and (given the absorptivity) the concentration it means by Beer-Lambert, c = A / (ε·l).
Registered by this plugin's `labctl.analyses` entry point."""

from __future__ import annotations

import numpy as np

from labctl.analysis import AnalysisSpec, ArgSpec, Refusal, fig, load
from labctl.analysis.base import Files

WAVELENGTH = "Wavelength / nm"
ABSORBANCE = "Absorbance / 1"
#: below this nothing absorbs (a blank); at this the detector saturates
NOTHING = 0.01
SATURATED = 4.0


def absorbance_peak(files: Files, *, step: str | None = None,
                    absorptivity: float | None = None, path_length: float = 1.0
                    ) -> list[dict[str, object]]:
    sid, cols = load(files, step, (WAVELENGTH, ABSORBANCE))
    wl = np.asarray(cols[WAVELENGTH], float)
    absorb = np.asarray(cols[ABSORBANCE], float)
    ok = np.isfinite(wl) & np.isfinite(absorb)
    wl, absorb = wl[ok], absorb[ok]
    if wl.size < 3:
        raise Refusal(f"step {sid}: {wl.size} points are no spectrum", step=sid)
    i = int(np.argmax(absorb))
    if absorb[i] < NOTHING:
        raise Refusal(f"step {sid}: nothing absorbs (largest absorbance {absorb[i]:.3g})",
                      step=sid)
    if absorb[i] >= SATURATED:
        raise Refusal(f"step {sid}: the detector saturates at {wl[i]:g} nm: dilute the "
                      "sample", step=sid)
    peak_nm, peak_a = float(wl[i]), float(absorb[i])
    if 0 < i < wl.size - 1:  # a parabola through the top three points
        y0, y1, y2 = absorb[i - 1: i + 2]
        denom = y0 - 2 * y1 + y2
        if denom < 0:
            shift = 0.5 * (y0 - y2) / denom
            peak_nm += shift * float(wl[i + 1] - wl[i])
            peak_a = float(y1 - 0.25 * (y0 - y2) * shift)
    method = "maximum of the spectrum, refined by a parabola through the top three points"
    figures = [fig("peak_wavelength", peak_nm, "nm", method, step=sid),
               fig("peak_absorbance", peak_a, "1", method, step=sid)]
    if absorptivity is not None:
        figures.append(fig("concentration", peak_a / (absorptivity * path_length), "g/L",
                           "Beer-Lambert: c = A / (absorptivity x path length)", step=sid,
                           absorptivity_l_g_cm=absorptivity, path_length_cm=path_length))
    return figures


ABSORBANCE_PEAK = AnalysisSpec(
    "absorbance_peak",
    "Peak wavelength and absorbance of a UV-Vis spectrum; the concentration by Beer-Lambert "
    "when the absorptivity is given.",
    {"step": ArgSpec(None, None, False, "step whose spectrum to analyse"),
     "absorptivity": ArgSpec("L/(g*cm)", None, False, "mass absorptivity at the peak"),
     "path_length": ArgSpec("cm", "1 cm", False, "optical path length of the cuvette")},
    absorbance_peak, "", (WAVELENGTH, ABSORBANCE),
    (("peak_wavelength", "nm"), ("peak_absorbance", "1")),
)
