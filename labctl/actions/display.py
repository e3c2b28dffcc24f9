"""How action values are shown to people (plans, SOPs, error messages): flows in mL/min,
speeds in rpm, temperatures in °C, and the litre written as chemists write it."""

from __future__ import annotations

import math
import re

from labctl.display import quantity as display_quantity
from labctl.units import fmt as _fmt

_LITRE = re.compile(r"(?<![A-Za-z])([mµunk]?)l(?![A-Za-z])")

#: prefixes for the common units, cheaper than pint's to_compact (plans have many steps)
_SCALES: dict[str, tuple[tuple[float, str], ...]] = {
    "L": ((1.0, "L"), (1e-3, "mL"), (1e-6, "µL"), (1e-9, "nL")),
    "g": ((1e3, "kg"), (1.0, "g"), (1e-3, "mg"), (1e-6, "µg")),
    "V": ((1.0, "V"), (1e-3, "mV"), (1e-6, "µV")),
    "A": ((1.0, "A"), (1e-3, "mA"), (1e-6, "µA"), (1e-9, "nA"), (1e-12, "pA")),
    "Hz": ((1e6, "MHz"), (1e3, "kHz"), (1.0, "Hz"), (1e-3, "mHz"), (1e-6, "µHz")),
}


def litres_upper(text: str) -> str:
    """'5 ml/min' -> '5 mL/min': the litre symbol the way chemists write it."""
    return _LITRE.sub(r"\1L", text)


def fmt(value: float, unit: str, digits: int = 4) -> str:
    """A value for people, in the unit recipes use for it: flows in mL/min, speeds in rpm,
    temperatures in °C, durations in s/min/h, otherwise compacted ('30 mL', '5 mg')."""
    if unit == "L/s":
        return f"{value * 6e4:.{digits}g} mL/min"
    if unit in ("1/h", "A*h"):  # '0.5 C', '1 mAh', not '500 1/kh', '1 h·mA'
        return display_quantity(value, unit, digits)
    if unit == "rpm":
        return f"{value:.{digits}g} rpm"
    if unit == "degC":
        return f"{value:.{digits}g} °C"
    if unit == "s":
        if abs(value) < 120:
            return f"{value:.{digits}g} s"
        if abs(value) < 7200:
            return f"{value / 60:.{digits}g} min"
        return f"{value / 3600:.{digits}g} h"
    scales = _SCALES.get(unit)
    if scales is not None and math.isfinite(value):
        if value == 0:
            return f"0 {next(sym for f, sym in scales if f == 1.0)}"
        for factor, symbol in scales:
            if abs(value) >= factor or factor == scales[-1][0]:
                return f"{value / factor:.{digits}g} {symbol}"
    try:
        return litres_upper(_fmt(value, unit, digits))
    except Exception:  # odd values (inf) are shown plainly
        return f"{value:.{digits}g} {unit}"
